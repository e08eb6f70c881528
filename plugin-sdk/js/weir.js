// weir-plugin: write weir plugins in JavaScript.
//
// The kit implements the exports of `weir:plugin@0.1.0` (wit/plugin.wit)
// over the bindings componentize-qjs generates: it decodes the flat batch
// layout (descriptor words + one byte buffer), calls a plain function per
// message, and encodes what comes back. A plugin author never sees a word.
//
//   import { filter } from "weir-plugin";
//   export const transform = filter((msg, cfg) => msg.json.temp >= cfg.min, {
//     name: "hot", version: "0.1.0", config: { min: "Lowest temperature kept." },
//   });
//
// An exception thrown by the function fails that one message, with the
// exception's own text (`TypeError: ...`) as the reason in weir's log; the
// rest of the batch is unaffected.

import host from "weir:plugin/host";

const WORDS = 10;
const NEW_TOPIC = 1;
const NEW_PAYLOAD = 2;
const NEW_FIELDS = 4;
const NEW_TIMESTAMP = 8;

// ---------------------------------------------------------------- UTF-8 --

function utf8Encode(text) {
  if (typeof TextEncoder !== "undefined") return new TextEncoder().encode(text);
  // QuickJS has no TextEncoder. ASCII (the common case) maps byte for byte.
  let ascii = true;
  for (let i = 0; i < text.length; i++) {
    if (text.charCodeAt(i) >= 0x80) { ascii = false; break; }
  }
  if (ascii) {
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }
  const out = [];
  for (let i = 0; i < text.length; i++) {
    let c = text.codePointAt(i);
    if (c > 0xffff) i++;
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return Uint8Array.from(out);
}

const CHUNK = 4096;

function utf8Decode(bytes, start, end) {
  if (typeof TextDecoder !== "undefined") return new TextDecoder().decode(bytes.subarray(start, end));
  // QuickJS has no TextDecoder. ASCII (the common case) converts in chunks.
  let ascii = true;
  for (let i = start; i < end; i++) {
    if (bytes[i] >= 0x80) { ascii = false; break; }
  }
  if (ascii) {
    let s = "";
    for (let i = start; i < end; i += CHUNK) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, Math.min(end, i + CHUNK)));
    }
    return s;
  }
  let s = "";
  for (let i = start; i < end; ) {
    const b = bytes[i++];
    let c;
    if (b < 0x80) c = b;
    else if (b < 0xe0) c = ((b & 31) << 6) | (bytes[i++] & 63);
    else if (b < 0xf0) c = ((b & 15) << 12) | ((bytes[i++] & 63) << 6) | (bytes[i++] & 63);
    else c = ((b & 7) << 18) | ((bytes[i++] & 63) << 12) | ((bytes[i++] & 63) << 6) | (bytes[i++] & 63);
    s += String.fromCodePoint(c);
  }
  return s;
}

// ------------------------------------------------------------- messages --

function decodeFields(data, start, len) {
  const fields = {};
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let at = start;
  const end = start + len;
  while (at < end) {
    const keyLen = view.getUint32(at, true);
    const key = utf8Decode(data, at + 4, at + 4 + keyLen);
    at += 4 + keyLen;
    const valueLen = view.getUint32(at, true);
    fields[key] = utf8Decode(data, at + 4, at + 4 + valueLen);
    at += 4 + valueLen;
  }
  return fields;
}

function encodeFields(fields) {
  const parts = [];
  let total = 0;
  for (const [key, value] of Object.entries(fields)) {
    const k = utf8Encode(String(key));
    const v = utf8Encode(String(value));
    parts.push(k, v);
    total += 8 + k.length + v.length;
  }
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const part of parts) {
    view.setUint32(at, part.length, true);
    out.set(part, at + 4);
    at += 4 + part.length;
  }
  return out;
}

/** One input message. Parts are decoded on first use. */
export class Message {
  constructor(batch, index) {
    this._data = batch.data;
    this._w = batch.events;
    this._o = index * WORDS;
  }
  /** The MQTT topic. */
  get topic() {
    const w = this._w, o = this._o;
    return utf8Decode(this._data, w[o], w[o] + w[o + 1]);
  }
  /** The payload bytes (a Uint8Array). */
  get payload() {
    const w = this._w, o = this._o;
    return this._data.subarray(w[o + 2], w[o + 2] + w[o + 3]);
  }
  /** The payload as UTF-8 text. */
  get text() {
    const w = this._w, o = this._o;
    return utf8Decode(this._data, w[o + 2], w[o + 2] + w[o + 3]);
  }
  /** The payload parsed as JSON (parsed once); throws when it is not JSON. */
  get json() {
    if (!("_json" in this)) {
      try {
        this._json = JSON.parse(this.text);
      } catch (e) {
        throw new Error(`payload is not valid JSON: ${e.message}`);
      }
    }
    return this._json;
  }
  /** Named fields the host attached (topic captures), as an object. */
  get fields() {
    const w = this._w, o = this._o;
    return decodeFields(this._data, w[o + 4], w[o + 5]);
  }
  /** Milliseconds since the Unix epoch. */
  get timestampMs() {
    const w = this._w, o = this._o;
    return w[o + 7] * 0x100000000 + w[o + 6] - (w[o + 7] >= 0x80000000 ? 2 ** 64 : 0);
  }
  /** The MQTT QoS the message was delivered with. */
  get qos() {
    return this._w[this._o + 8];
  }
}

function decodeBatch(batch) {
  const events = batch.events;
  const data = batch.data instanceof Uint8Array ? batch.data : Uint8Array.from(batch.data);
  const view = { events, data };
  const messages = [];
  for (let i = 0; i < events.length / WORDS; i++) messages.push(new Message(view, i));
  return messages;
}

// -------------------------------------------------------------- outputs --

/**
 * What a map or flat-map emits: the parts to change; anything left out is
 * the input's. `{ json: {...} }` sets a JSON payload, `{ payload: "text" or
 * Uint8Array }` a raw one; `fields` replaces the field set; `timestampMs`
 * the timestamp. A plain object without these keys is taken as a JSON
 * payload.
 */
const OUTPUT_KEYS = ["topic", "payload", "json", "fields", "timestampMs"];

class OutcomeWriter {
  constructor() {
    this.emitted = [];
    this.chunks = [];
    this.size = 0;
    this.failures = [];
  }
  put(bytes) {
    const at = this.size;
    this.chunks.push(bytes);
    this.size += bytes.length;
    return at;
  }
  pass(input) {
    this.emitted.push(input, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  }
  emit(input, out) {
    if (out === null || typeof out !== "object" || Array.isArray(out)
        || !OUTPUT_KEYS.some((k) => k in out)) {
      out = { json: out };
    }
    const w = [input, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    if (out.topic !== undefined) {
      const b = utf8Encode(String(out.topic));
      w[1] |= NEW_TOPIC; w[2] = this.put(b); w[3] = b.length;
    }
    let payload = out.payload;
    if (out.json !== undefined) payload = JSON.stringify(out.json);
    if (payload !== undefined) {
      const b = typeof payload === "string" ? utf8Encode(payload) : Uint8Array.from(payload);
      w[1] |= NEW_PAYLOAD; w[4] = this.put(b); w[5] = b.length;
    }
    if (out.fields !== undefined) {
      const b = encodeFields(out.fields);
      w[1] |= NEW_FIELDS; w[6] = this.put(b); w[7] = b.length;
    }
    if (out.timestampMs !== undefined) {
      const ts = BigInt.asUintN(64, BigInt(out.timestampMs));
      w[1] |= NEW_TIMESTAMP;
      w[8] = Number(ts & 0xffffffffn);
      w[9] = Number(ts >> 32n);
    }
    this.emitted.push(...w);
  }
  fail(input, error) {
    this.failures.push({ input, message: errorText(error) });
  }
  finish() {
    const data = new Uint8Array(this.size);
    let at = 0;
    for (const c of this.chunks) { data.set(c, at); at += c.length; }
    return { emitted: this.emitted, data, failures: this.failures };
  }
}

/** The text of a thrown value, as the language prints it: `Error: boom`. */
function errorText(error) {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error);
}

// -------------------------------------------------------------- plugins --

function metadata(kind, options) {
  return {
    name: options.name,
    version: options.version ?? "0.1.0",
    kind,
    configKeys: Object.entries(options.config ?? {}).map(([name, description]) => ({
      name,
      description: String(description),
    })),
  };
}

function parseConfig(text, options) {
  const raw = JSON.parse(text);
  const known = Object.keys(options.config ?? {});
  for (const key of Object.keys(raw)) {
    if (!known.includes(key)) {
      throw `invalid config: unknown key \`${key}\`, expected one of ${known.map((k) => `\`${k}\``).join(", ") || "no keys"}`;
    }
  }
  if (!options.init) return raw;
  try {
    return options.init(raw);
  } catch (e) {
    throw `invalid config: ${errorText(e)}`;
  }
}

function transformer(kind, perMessage, options) {
  if (!options || !options.name) throw new Error("weir-plugin: options.name is required");
  let cfg = null;
  return {
    metadata: () => metadata(kind, options),
    init(text) {
      cfg = parseConfig(text, options);
    },
    process(batch) {
      const out = new OutcomeWriter();
      const messages = decodeBatch(batch);
      for (let i = 0; i < messages.length; i++) {
        try {
          perMessage(out, i, messages[i], cfg);
        } catch (e) {
          out.fail(i, e);
        }
      }
      return out.finish();
    },
  };
}

/**
 * A filter: `keep(msg, cfg)` returns true to pass the message unchanged.
 * `options`: `name`, `version`, `config` ({ key: description }), and
 * optionally `init(config)` returning what `keep` receives as `cfg`
 * (throw to refuse the config).
 */
export function filter(keep, options) {
  return transformer("filter", (out, i, msg, cfg) => {
    if (keep(msg, cfg)) out.pass(i);
  }, options);
}

/** A map: `fn(msg, cfg)` returns exactly one output (see OUTPUT_KEYS). */
export function map(fn, options) {
  return transformer("map", (out, i, msg, cfg) => out.emit(i, fn(msg, cfg)), options);
}

/**
 * A flat-map: `fn(msg, cfg)` returns an iterable of outputs (zero or more).
 * If it throws, none of the message's outputs are emitted.
 */
export function flatMap(fn, options) {
  return transformer("flat-map", (out, i, msg, cfg) => {
    const outputs = [...fn(msg, cfg)];
    for (const o of outputs) out.emit(i, o);
  }, options);
}

/**
 * An aggregate plugin (world `aggregator`): the host owns windows, the
 * plugin the arithmetic. `spec`: `name`, `version`, `config`, `init`, and
 * `create(cfg)` → a new accumulator, `add(acc, msg, cfg)` → the updated
 * accumulator (throw to refuse the message; the accumulator is left as it
 * was), `merge(into, from, cfg)` → the merged accumulator, `finish(acc,
 * window, cfg)` → a JSON object of results, or null for no output.
 * Accumulators must survive `JSON.stringify` (they are snapshotted so).
 * `window` is `{ start, end, topic, fields }`.
 */
export function aggregator(spec) {
  if (!spec || !spec.name) throw new Error("weir-plugin: spec.name is required");
  let cfg = null;
  const accs = new Map();
  const get = (id) => (accs.has(id) ? accs.get(id) : spec.create(cfg));
  const copy = (acc) => JSON.parse(JSON.stringify(acc));
  return {
    metadata: () => metadata("aggregate", spec),
    init(text) {
      cfg = parseConfig(text, spec);
    },
    accumulate(batch, targets) {
      const messages = decodeBatch(batch);
      const failures = [];
      const failed = new Set();
      for (let t = 0; t + 1 < targets.length; t += 2) {
        const index = targets[t];
        if (failed.has(index)) continue;
        const id = targets[t + 1];
        try {
          // The function may mutate: give it a copy, keep it only on success.
          accs.set(id, spec.add(copy(get(id)), messages[index], cfg));
        } catch (e) {
          failed.add(index);
          failures.push({ input: index, message: errorText(e) });
        }
      }
      return failures;
    },
    merge(target, source) {
      accs.set(target, spec.merge(copy(get(target)), copy(get(source)), cfg));
    },
    finish(ids, windows) {
      const out = new OutcomeWriter();
      const messages = decodeBatch(windows);
      for (let i = 0; i < ids.length; i++) {
        const acc = get(ids[i]);
        accs.delete(ids[i]);
        try {
          const m = messages[i];
          const bounds = m.json;
          const result = spec.finish(acc, {
            start: bounds.window_start, end: bounds.window_end, topic: m.topic, fields: m.fields,
          }, cfg);
          if (result !== null && result !== undefined) out.emit(i, { json: result });
        } catch (e) {
          out.fail(i, e);
        }
      }
      return out.finish();
    },
    discard(ids) {
      for (const id of ids) accs.delete(id);
    },
    snapshot(id) {
      return utf8Encode(JSON.stringify({ v: 1, acc: get(id) }));
    },
    restore(id, state) {
      const bytes = state instanceof Uint8Array ? state : Uint8Array.from(state);
      let parsed;
      try {
        parsed = JSON.parse(utf8Decode(bytes, 0, bytes.length));
      } catch (e) {
        throw `snapshot is not JSON: ${errorText(e)}`;
      }
      if (!parsed || parsed.v !== 1) throw "snapshot of an unknown version";
      accs.set(id, parsed.acc);
    },
  };
}

/** Logs through the host, tagged with the plugin's name. `level`: trace, debug, info, warn, error. */
export function log(level, message, fields = {}) {
  host.log(level, String(message), Object.entries(fields).map(([k, v]) => [k, String(v)]));
}

/** The host's wall-clock time, in ms since the Unix epoch. */
export function nowMs() {
  return Number(host.nowMs());
}
