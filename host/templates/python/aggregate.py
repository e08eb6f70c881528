"""{{name}}: a weir aggregate. Counts each window's readings and keeps the
highest `temp`; weir owns the windows (see the manifest's window step)."""
from weir_plugin import aggregator


def add(acc, msg, cfg):
    temp = msg.json["temp"]
    return {"count": acc["count"] + 1, "max": temp if acc["max"] is None else max(acc["max"], temp)}


def merge(a, b, cfg):
    highest = [m for m in (a["max"], b["max"]) if m is not None]
    return {"count": a["count"] + b["count"], "max": max(highest) if highest else None}


Aggregate = aggregator(
    name="{{name}}",
    create=lambda cfg: {"count": 0, "max": None},
    add=add,
    merge=merge,
    finish=lambda acc, window, cfg: {"count": acc["count"], "max": acc["max"]},
)
