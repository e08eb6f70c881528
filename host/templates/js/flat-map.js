// {{name}}: a weir flat-map. One message per element of `readings`, on
// topic <topic>/<index>, with payload {"temp": element}.
import { flatMap } from "weir-plugin";

export const transform = flatMap((msg) => {
  const readings = msg.json.readings;
  if (!Array.isArray(readings)) throw new TypeError(`"readings" is not an array`);
  return readings.map((temp, i) => ({ topic: `${msg.topic}/${i}`, json: { temp } }));
}, { name: "{{name}}", version: "0.1.0" });
