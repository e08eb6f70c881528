"""{{name}}: a weir flat-map. One message per element of `readings`, on
topic <topic>/<index>, with payload {"temp": element}."""
from weir_plugin import Output, flat_map


def split(msg, cfg):
    readings = msg.json["readings"]
    if not isinstance(readings, list):
        raise TypeError('"readings" is not a list')
    return [Output(topic=f"{msg.topic}/{i}", json={"temp": t}) for i, t in enumerate(readings)]


Transform = flat_map(split, name="{{name}}")
