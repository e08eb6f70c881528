// {{name}}: a weir map. Adds `hot` (temp >= min) to each JSON payload.
import { map } from "weir-plugin";

export const transform = map((msg, cfg) => {
  const temp = msg.json.temp;
  if (typeof temp !== "number") throw new TypeError(`"temp" is not a number`);
  return { json: { ...msg.json, hot: temp >= cfg.min } };
}, {
  name: "{{name}}",
  version: "0.1.0",
  config: { min: "Temperature from which a reading is hot." },
});
