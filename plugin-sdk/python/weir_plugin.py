"""weir_plugin: write weir plugins in Python.

The kit implements the exports of ``weir:plugin@0.1.0`` (``wit/plugin.wit``)
over the bindings componentize-py generates: it decodes the flat batch
layout (descriptor words and one byte buffer), calls a plain function per
message, and encodes what comes back. A filter is a function::

    from weir_plugin import filter

    def hot(msg, cfg):
        return msg.json["temp"] >= cfg["min"]

    Transform = filter(hot, name="hot", config={"min": "Lowest temperature kept."})

Build with ``componentize-py -d wit -w transformer componentize app -o
plugin.wasm`` (``-w aggregator`` and ``Aggregate = aggregator(...)`` for an
aggregate). componentize-py instantiates the class named after the exported
interface (``Transform`` or ``Aggregate``) from the app module.

An exception raised by the function fails that one message, with Python's
own text (``KeyError: 'temp'``) as the reason in weir's log; the rest of the
batch is unaffected.
"""

import json as _json
import struct as _struct

from componentize_py_types import Err
from wit_world.imports import host as _host
from wit_world.imports import types as _types

__all__ = ["Message", "Output", "filter", "map", "flat_map", "aggregator", "log", "now_ms"]

_WORDS = 10
_NEW_TOPIC, _NEW_PAYLOAD, _NEW_FIELDS, _NEW_TIMESTAMP = 1, 2, 4, 8
_U32 = _struct.Struct("<I")
_UNSET = object()


def _decode_fields(data, start, length):
    fields = {}
    at, end = start, start + length
    while at < end:
        (klen,) = _U32.unpack_from(data, at)
        key = data[at + 4 : at + 4 + klen].decode()
        at += 4 + klen
        (vlen,) = _U32.unpack_from(data, at)
        fields[key] = data[at + 4 : at + 4 + vlen].decode()
        at += 4 + vlen
    return fields


def _encode_fields(fields):
    out = bytearray()
    for key, value in fields.items():
        k, v = str(key).encode(), str(value).encode()
        out += _U32.pack(len(k)) + k + _U32.pack(len(v)) + v
    return bytes(out)


class Message:
    """One input message; parts are decoded on first use."""

    __slots__ = ("_data", "_w", "_o", "_json")

    def __init__(self, data, words, index):
        self._data = data
        self._w = words
        self._o = index * _WORDS

    @property
    def topic(self):
        """The MQTT topic (str)."""
        w, o = self._w, self._o
        return self._data[w[o] : w[o] + w[o + 1]].decode()

    @property
    def payload(self):
        """The payload bytes."""
        w, o = self._w, self._o
        return self._data[w[o + 2] : w[o + 2] + w[o + 3]]

    @property
    def text(self):
        """The payload as UTF-8 text."""
        return self.payload.decode()

    @property
    def json(self):
        """The payload parsed as JSON (once); raises ValueError when it is not JSON."""
        try:
            return self._json
        except AttributeError:
            pass
        try:
            self._json = _json.loads(self.payload)
        except ValueError as e:
            raise ValueError(f"payload is not valid JSON: {e}") from None
        return self._json

    @property
    def fields(self):
        """Named fields the host attached (topic captures), as a dict."""
        w, o = self._w, self._o
        return _decode_fields(self._data, w[o + 4], w[o + 5])

    @property
    def timestamp_ms(self):
        """Milliseconds since the Unix epoch."""
        w, o = self._w, self._o
        ts = w[o + 6] | (w[o + 7] << 32)
        return ts - (1 << 64) if ts >= 1 << 63 else ts

    @property
    def qos(self):
        """The MQTT QoS the message was delivered with."""
        return self._w[self._o + 8]


def _messages(batch):
    data, words = batch.data, batch.events
    return [Message(data, words, i) for i in range(len(words) // _WORDS)]


class Output:
    """What a map or flat-map emits: the parts to change; the rest is the
    input's. ``json`` sets a JSON payload, ``payload`` (str or bytes) a raw
    one (``json=None`` is the JSON ``null``), ``fields`` replaces the field
    set. A plain dict or list returned
    instead of an Output is taken as a JSON payload."""

    __slots__ = ("topic", "payload", "json", "fields", "timestamp_ms")

    def __init__(self, topic=None, payload=None, json=_UNSET, fields=None, timestamp_ms=None):
        self.topic = topic
        self.payload = payload
        self.json = json
        self.fields = fields
        self.timestamp_ms = timestamp_ms


class _Writer:
    def __init__(self):
        self.emitted = []
        self.data = bytearray()
        self.failures = []

    def _put(self, b):
        at = len(self.data)
        self.data += b
        return at, len(b)

    def pass_(self, index):
        self.emitted += (index, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    def emit(self, index, out):
        if not isinstance(out, Output):
            out = Output(json=out)
        w = [index, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        if out.topic is not None:
            w[1] |= _NEW_TOPIC
            w[2], w[3] = self._put(str(out.topic).encode())
        payload = out.payload
        if out.json is not _UNSET:
            payload = _json.dumps(out.json, separators=(",", ":"), ensure_ascii=False)
        if payload is not None:
            w[1] |= _NEW_PAYLOAD
            w[4], w[5] = self._put(payload.encode() if isinstance(payload, str) else bytes(payload))
        if out.fields is not None:
            w[1] |= _NEW_FIELDS
            w[6], w[7] = self._put(_encode_fields(out.fields))
        if out.timestamp_ms is not None:
            ts = int(out.timestamp_ms) & 0xFFFFFFFFFFFFFFFF
            w[1] |= _NEW_TIMESTAMP
            w[8], w[9] = ts & 0xFFFFFFFF, ts >> 32
        self.emitted += w

    def fail(self, index, error):
        self.failures.append(_types.Failure(index, _error_text(error)))

    def outcome(self):
        return _types.Outcome(self.emitted, bytes(self.data), self.failures)


def _error_text(error):
    """Python's own rendering of an exception: ``KeyError: 'temp'``."""
    return f"{type(error).__name__}: {error}"


_KINDS = {
    "filter": _types.PluginKind.FILTER,
    "map": _types.PluginKind.MAP,
    "flat-map": _types.PluginKind.FLAT_MAP,
    "aggregate": _types.PluginKind.AGGREGATE,
}


def _metadata(kind, name, version, config):
    keys = [_types.ConfigKey(k, str(v)) for k, v in (config or {}).items()]
    return _types.Metadata(name, version, _KINDS[kind], keys)


def _parse_config(text, config, init):
    raw = _json.loads(text)
    known = list(config or {})
    for key in raw:
        if key not in known:
            expected = ", ".join(f"`{k}`" for k in known) or "no keys"
            raise Err(f"invalid config: unknown key `{key}`, expected one of {expected}")
    if init is None:
        return raw
    try:
        return init(raw)
    except Exception as e:  # noqa: BLE001 - any refusal is the plugin's message
        raise Err(f"invalid config: {_error_text(e)}") from None


def _transformer(kind, per_message, name, version, config, init):
    meta = _metadata(kind, name, version, config)

    class Transform:
        cfg = None

        def metadata(self):
            return meta

        def init(self, text):
            Transform.cfg = _parse_config(text, config, init)

        def process(self, batch):
            out = _Writer()
            cfg = Transform.cfg
            for i, msg in enumerate(_messages(batch)):
                try:
                    per_message(out, i, msg, cfg)
                except Exception as e:  # noqa: BLE001 - fails this message only
                    out.fail(i, e)
            return out.outcome()

    return Transform


def filter(keep, *, name, version="0.1.0", config=None, init=None):  # noqa: A001
    """A filter: ``keep(msg, cfg)`` returns True to pass the message unchanged.

    ``config`` maps each accepted key to a one-line description; ``init(cfg)``
    may check the config table and return what ``keep`` receives (raise to
    refuse it)."""

    def step(out, i, msg, cfg):
        if keep(msg, cfg):
            out.pass_(i)

    return _transformer("filter", step, name, version, config, init)


def map(fn, *, name, version="0.1.0", config=None, init=None):  # noqa: A001
    """A map: ``fn(msg, cfg)`` returns exactly one Output (or a JSON value)."""
    return _transformer("map", lambda out, i, msg, cfg: out.emit(i, fn(msg, cfg)), name, version, config, init)


def flat_map(fn, *, name, version="0.1.0", config=None, init=None):
    """A flat-map: ``fn(msg, cfg)`` returns an iterable of Outputs (zero or
    more). If it raises, none of the message's outputs are emitted."""

    def step(out, i, msg, cfg):
        for o in list(fn(msg, cfg)):
            out.emit(i, o)

    return _transformer("flat-map", step, name, version, config, init)


def aggregator(*, name, create, add, merge, finish, version="0.1.0", config=None, init=None):
    """An aggregate plugin (world ``aggregator``): the host owns windows, the
    plugin the arithmetic.

    ``create(cfg)`` returns a new accumulator; ``add(acc, msg, cfg)`` returns
    the updated one (raise to refuse the message: the accumulator stays as it
    was); ``merge(into, src, cfg)`` returns the merged one; ``finish(acc,
    window, cfg)`` returns a dict of results or None for no output, where
    ``window`` is a dict with ``start``, ``end``, ``topic`` and ``fields``.
    Accumulators must survive ``json.dumps`` (snapshots use it)."""
    meta = _metadata("aggregate", name, version, config)
    accs = {}
    state = {"cfg": None}

    def copy(acc):
        return _json.loads(_json.dumps(acc))

    def get(i):
        return accs[i] if i in accs else create(state["cfg"])

    class Aggregate:
        def metadata(self):
            return meta

        def init(self, text):
            state["cfg"] = _parse_config(text, config, init)

        def accumulate(self, batch, targets):
            messages = _messages(batch)
            failures, failed = [], set()
            cfg = state["cfg"]
            for t in range(0, len(targets) - 1, 2):
                index, acc_id = targets[t], targets[t + 1]
                if index in failed:
                    continue
                try:
                    accs[acc_id] = add(copy(get(acc_id)), messages[index], cfg)
                except Exception as e:  # noqa: BLE001 - fails this message only
                    failed.add(index)
                    failures.append(_types.Failure(index, _error_text(e)))
            return failures

        def merge(self, target, source):
            accs[target] = merge(copy(get(target)), copy(get(source)), state["cfg"])

        def finish(self, ids, windows):
            out = _Writer()
            for i, msg in enumerate(_messages(windows)):
                acc = get(ids[i])
                accs.pop(ids[i], None)
                try:
                    bounds = msg.json
                    window = {
                        "start": bounds["window_start"],
                        "end": bounds["window_end"],
                        "topic": msg.topic,
                        "fields": msg.fields,
                    }
                    result = finish(acc, window, state["cfg"])
                    if result is not None:
                        out.emit(i, Output(json=result))
                except Exception as e:  # noqa: BLE001 - fails this window only
                    out.fail(i, e)
            return out.outcome()

        def discard(self, ids):
            for i in ids:
                accs.pop(i, None)

        def snapshot(self, acc_id):
            return _json.dumps({"v": 1, "acc": get(acc_id)}).encode()

        def restore(self, acc_id, state_bytes):
            try:
                parsed = _json.loads(state_bytes)
            except ValueError as e:
                raise Err(f"snapshot is not JSON: {e}") from None
            if not isinstance(parsed, dict) or parsed.get("v") != 1:
                raise Err("snapshot of an unknown version")
            accs[acc_id] = parsed["acc"]

    return Aggregate


_LEVELS = {
    "trace": _host.Level.TRACE,
    "debug": _host.Level.DEBUG,
    "info": _host.Level.INFO,
    "warn": _host.Level.WARN,
    "error": _host.Level.ERROR,
}


def log(level, message, **fields):
    """Logs through the host, tagged with the plugin's name."""
    _host.log(_LEVELS[level], str(message), [(k, str(v)) for k, v in fields.items()])


def now_ms():
    """The host's wall-clock time, in ms since the Unix epoch."""
    return _host.now_ms()
