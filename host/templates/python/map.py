"""{{name}}: a weir map. Adds `hot` (temp >= min) to each JSON payload."""
from weir_plugin import Output, map


def convert(msg, cfg):
    payload = msg.json
    return Output(json={**payload, "hot": payload["temp"] >= cfg["min"]})


Transform = map(convert, name="{{name}}", config={"min": "Temperature from which a reading is hot."})
