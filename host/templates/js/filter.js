// {{name}}: a weir filter. Keeps a message when its payload's `temp` is at
// least `min`; a payload without a numeric `temp` fails that message only.
import { filter } from "weir-plugin";

export const transform = filter((msg, cfg) => {
  const temp = msg.json.temp;
  if (typeof temp !== "number") throw new TypeError(`"temp" is not a number`);
  return temp >= cfg.min;
}, {
  name: "{{name}}",
  version: "0.1.0",
  config: { min: "Lowest temperature kept." },
});
