"""conformance flat-map: see tests/conformance/README.md."""
from weir_plugin import Output, flat_map


def split(msg, cfg):
    readings = msg.json["readings"]
    if not isinstance(readings, list):
        raise TypeError('field "readings" is not an array')
    return [Output(topic=f"{msg.topic}/{i}", json=r) for i, r in enumerate(readings)]


Transform = flat_map(split, name="conf-split")
