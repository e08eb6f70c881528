// conformance aggregate: see tests/conformance/README.md.
import { aggregator } from "weir-plugin";

export const aggregate = aggregator({
  name: "conf-sum",
  config: { field: "Payload field to sum (an integer)." },
  create: () => ({ count: 0, sum: 0 }),
  add(acc, msg, cfg) {
    const v = msg.json[cfg.field];
    if (!Number.isInteger(v)) throw new TypeError(`field "${cfg.field}" is not an integer`);
    return { count: acc.count + 1, sum: acc.sum + v };
  },
  merge: (a, b) => ({ count: a.count + b.count, sum: a.sum + b.sum }),
  finish: (acc) => ({ count: acc.count, sum: acc.sum }),
});
