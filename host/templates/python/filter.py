"""{{name}}: a weir filter. Keeps a message when its payload's `temp` is at
least `min`; a payload without `temp` fails that message only."""
from weir_plugin import filter


def keep(msg, cfg):
    return msg.json["temp"] >= cfg["min"]


Transform = filter(keep, name="{{name}}", config={"min": "Lowest temperature kept."})
