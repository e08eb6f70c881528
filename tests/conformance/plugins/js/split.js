// conformance flat-map: see tests/conformance/README.md.
import { flatMap } from "weir-plugin";

export const transform = flatMap((msg) => {
  const readings = msg.json.readings;
  if (!Array.isArray(readings)) throw new TypeError(`field "readings" is not an array`);
  return readings.map((r, i) => ({ topic: `${msg.topic}/${i}`, json: r }));
}, { name: "conf-split" });
