"""conformance filter: the Python twin of plugins/threshold (Rust) and
plugins/threshold-c (C)."""
import operator

from weir_plugin import filter

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
       "==": operator.eq, "!=": operator.ne}


def lookup(value, path):
    for segment in path.split("."):
        if isinstance(value, list) and segment.isdigit():
            index = int(segment)
            value = value[index] if index < len(value) else None
        elif isinstance(value, dict):
            value = value.get(segment)
        else:
            return None
        if value is None:
            return None
    return value


def init(cfg):
    for key in ("field", "op", "value"):
        if key not in cfg:
            raise KeyError(key)
    if cfg["op"] not in OPS:
        raise ValueError(f"unknown variant `{cfg['op']}`")
    return cfg


def keep(msg, cfg):
    v = lookup(msg.json, cfg["field"])
    if v is None:
        raise KeyError(f'field "{cfg["field"]}" is missing')
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f'field "{cfg["field"]}" is not a number')
    return OPS[cfg["op"]](v, cfg["value"])


Transform = filter(keep, name="threshold", init=init, config={
    "field": 'Dotted path to the number in the JSON payload, e.g. "sensor.temp".',
    "op": "Comparison: one of >, >=, <, <=, ==, !=.",
    "value": "The number the field is compared with.",
})
