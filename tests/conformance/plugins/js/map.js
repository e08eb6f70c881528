// conformance map: see tests/conformance/README.md.
import { map } from "weir-plugin";

export const transform = map((msg, cfg) => {
  const temp = msg.json.temp;
  if (!Number.isInteger(temp)) throw new TypeError(`field "temp" is not an integer`);
  return {
    topic: `${cfg.prefix}/${msg.topic}`,
    json: { temp_x10: temp * 10, hot: temp >= 30 },
    fields: { ...msg.fields, unit: "dC" },
  };
}, { name: "conf-map", config: { prefix: "Prepended to the topic, with a /." } });
