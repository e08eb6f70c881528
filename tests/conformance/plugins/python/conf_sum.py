"""conformance aggregate: see tests/conformance/README.md."""
from weir_plugin import aggregator


def add(acc, msg, cfg):
    v = msg.json[cfg["field"]]
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f'field "{cfg["field"]}" is not an integer')
    return {"count": acc["count"] + 1, "sum": acc["sum"] + v}


Aggregate = aggregator(
    name="conf-sum",
    config={"field": "Payload field to sum (an integer)."},
    create=lambda cfg: {"count": 0, "sum": 0},
    add=add,
    merge=lambda a, b, cfg: {"count": a["count"] + b["count"], "sum": a["sum"] + b["sum"]},
    finish=lambda acc, window, cfg: {"count": acc["count"], "sum": acc["sum"]},
)
