// conformance filter: the JavaScript twin of plugins/threshold (Rust) and
// plugins/threshold-c (C): keeps a message when the number at a dotted
// `field` of its payload passes `op value`.
import { filter } from "weir-plugin";

const OPS = {
  ">": (a, b) => a > b, ">=": (a, b) => a >= b, "<": (a, b) => a < b,
  "<=": (a, b) => a <= b, "==": (a, b) => a === b, "!=": (a, b) => a !== b,
};

function lookup(value, path) {
  for (const segment of path.split(".")) {
    if (Array.isArray(value) && /^\d+$/.test(segment)) value = value[Number(segment)];
    else if (value !== null && typeof value === "object" && !Array.isArray(value)) value = value[segment];
    else return undefined;
  }
  return value;
}

export const transform = filter((msg, cfg) => {
  const v = lookup(msg.json, cfg.field);
  if (v === undefined) throw new Error(`field "${cfg.field}" is missing`);
  if (typeof v !== "number") throw new TypeError(`field "${cfg.field}" is not a number`);
  return OPS[cfg.op](v, cfg.value);
}, {
  name: "threshold",
  version: "0.1.0",
  config: {
    field: "Dotted path to the number in the JSON payload, e.g. \"sensor.temp\".",
    op: "Comparison: one of >, >=, <, <=, ==, !=.",
    value: "The number the field is compared with.",
  },
  init(cfg) {
    for (const key of ["field", "op", "value"]) if (!(key in cfg)) throw new Error(`missing field \`${key}\``);
    if (!(cfg.op in OPS)) throw new Error(`unknown variant \`${cfg.op}\``);
    if (typeof cfg.value !== "number") throw new TypeError("`value` is not a number");
    return cfg;
  },
});
