// {{name}}: a weir aggregate. Counts each window's readings and keeps the
// highest `temp`; weir owns the windows (see the manifest's window step).
import { aggregator } from "weir-plugin";

export const aggregate = aggregator({
  name: "{{name}}",
  version: "0.1.0",
  config: {},
  create: () => ({ count: 0, max: null }),
  add(acc, msg) {
    const temp = msg.json.temp;
    if (typeof temp !== "number") throw new TypeError(`"temp" is not a number`);
    return { count: acc.count + 1, max: acc.max === null ? temp : Math.max(acc.max, temp) };
  },
  merge: (a, b) => ({
    count: a.count + b.count,
    max: a.max === null ? b.max : b.max === null ? a.max : Math.max(a.max, b.max),
  }),
  finish: (acc) => ({ count: acc.count, max: acc.max }),
});
