"""conformance map: see tests/conformance/README.md."""
from weir_plugin import Output, map


def convert(msg, cfg):
    temp = msg.json["temp"]
    if isinstance(temp, bool) or not isinstance(temp, int):
        raise TypeError('field "temp" is not an integer')
    return Output(
        topic=f"{cfg['prefix']}/{msg.topic}",
        json={"temp_x10": temp * 10, "hot": temp >= 30},
        fields={**msg.fields, "unit": "dC"},
    )


Transform = map(convert, name="conf-map", config={"prefix": "Prepended to the topic, with a /."})
