/*
 * weir.h: write a weir filter, map or flat-map plugin in C.
 *
 * The kit implements the WIT exports of world `transformer`
 * (`weir:plugin@0.1.0`, see wit/plugin.wit) on top of the bindings that
 * `wit-bindgen c wit --world transformer` generates (`transformer.h`,
 * `transformer.c`, `transformer_component_type.o`). The plugin author writes
 * three things and never sees a batch, a span or the canonical ABI:
 *
 *     const weir_plugin_info weir_plugin = { "my-filter", "0.1.0", ... };
 *
 *     weir_status weir_init(const char *config_json, size_t len,
 *                           weir_string *error);
 *
 *     weir_status weir_filter(const weir_message *msg, bool *keep,
 *                             weir_string *error);
 *
 * `weir_filter` is called once per message of a batch. Returning WEIR_ERROR
 * (with a message, see weir_error) reports that one message as a failure;
 * the rest of the batch is unaffected. A kept message passes through
 * unchanged and costs no copy.
 *
 * A map or flat-map defines, instead of weir_filter,
 *
 *     weir_status weir_transform(const weir_message *msg, weir_emitter *out,
 *                                weir_string *error);
 *
 * and calls weir_emit(out, &output) once (map) or any number of times
 * (flat-map); parts of a weir_output left unset are the input's. On
 * WEIR_ERROR the message's outputs are discarded and it is reported as
 * failed. Aggregates (world `aggregator`) define weir_acc_* instead; see
 * below.
 *
 * Plugin state: each plugin instance has its own linear memory, so plain
 * `static` variables set by `weir_init` are per instance. `weir_init` is
 * called once, before any message.
 *
 * Memory: every pointer the kit hands to the plugin (message parts, the
 * config text, JSON values) is valid only during the call. Strings the
 * plugin hands back (`weir_string`) are heap-allocated (use weir_error or
 * weir_errorf) and the kit takes ownership of them.
 *
 * Also here: a small JSON reader (weir_json_*) that validates a whole
 * document the way a strict parser does and reads values by dotted path.
 *
 * C99; compile with clang --target=wasm32-wasi (wasi-libc).
 */
#ifndef WEIR_H
#define WEIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* What the plugin author provides                                          */
/* ------------------------------------------------------------------------ */

/* The result of a plugin callback. */
typedef enum { WEIR_OK = 0, WEIR_ERROR = 1 } weir_status;

/* What a plugin does with each message (WIT `plugin-kind`). The kit drives
 * filters; the other kinds are declared for `weir plugin inspect`. */
typedef enum {
    WEIR_KIND_FILTER = 0,
    WEIR_KIND_MAP = 1,
    WEIR_KIND_FLAT_MAP = 2,
    WEIR_KIND_AGGREGATE = 3
} weir_kind;

/* A key the plugin accepts in its configuration table. */
typedef struct {
    const char *name;
    const char *description; /* one line for `weir plugin inspect`, or "" */
} weir_config_key;

/* What the plugin says about itself (WIT `metadata`). */
typedef struct {
    const char *name;
    const char *version;
    weir_kind kind;
    const weir_config_key *config_keys;
    size_t config_key_count;
} weir_plugin_info;

/* A string the plugin hands to the kit: heap memory (malloc), which the kit
 * frees. Build one with weir_error or weir_errorf. */
typedef struct {
    char *ptr;
    size_t len;
} weir_string;

/* A read-only byte range owned by the kit (not NUL-terminated). */
typedef struct {
    const char *ptr;
    size_t len;
} weir_bytes;

/* One input message. */
typedef struct {
    weir_bytes topic;     /* UTF-8 */
    weir_bytes payload;   /* as received */
    weir_bytes fields;    /* encoded field set, read it with weir_message_field */
    int64_t timestamp_ms; /* milliseconds since the Unix epoch */
    uint8_t qos;          /* 0, 1 or 2 */
} weir_message;

/* Defined by the plugin: its name, version, kind and config keys. */
extern const weir_plugin_info weir_plugin;

/* Defined by the plugin: checks and stores the configuration table, a JSON
 * object given as `len` bytes followed by a NUL. WEIR_ERROR refuses the
 * config (set `error`); the instance is then not used. */
weir_status weir_init(const char *config_json, size_t len, weir_string *error);

/* Defined by a filter: sets `*keep` (false on entry) for one message.
 * WEIR_ERROR reports the message as failed, with `error` as the reason. */
weir_status weir_filter(const weir_message *msg, bool *keep, weir_string *error)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((weak))
#endif
    ;

/* Maps and flat-maps define weir_transform instead of weir_filter (and say
 * WEIR_KIND_MAP or WEIR_KIND_FLAT_MAP in weir_plugin). It is called once
 * per message and emits with weir_emit: a map exactly one output, a
 * flat-map zero or more. On WEIR_ERROR whatever it emitted for that message
 * is discarded and the message is reported as failed. */
typedef struct weir_emitter weir_emitter;

/* A field (key and value, UTF-8, not NUL-terminated). */
typedef struct {
    weir_bytes key;
    weir_bytes value;
} weir_field;

/* One output. A part left unset is the input's: `topic.ptr` or
 * `payload.ptr` NULL, `set_fields` or `set_timestamp` false. The kit copies
 * everything during weir_emit. */
typedef struct {
    weir_bytes topic;
    weir_bytes payload;
    bool set_fields;           /* replace the field set with `fields` */
    const weir_field *fields;
    size_t field_count;
    bool set_timestamp;
    int64_t timestamp_ms;
} weir_output;

weir_status weir_transform(const weir_message *msg, weir_emitter *out, weir_string *error)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((weak))
#endif
    ;

/* Emits one output for the current message. */
void weir_emit(weir_emitter *out, const weir_output *output);

/* ------------------------------------------------------------------------ */
/* Aggregates (world `aggregator`; compile the kit with -DWEIR_AGGREGATOR)  */
/* ------------------------------------------------------------------------ */

/* The host owns windows and time; the plugin owns the arithmetic on
 * fixed-size accumulators, which the kit allocates, copies and snapshots
 * (as their bytes, so they hold no pointers). An aggregate defines
 * weir_plugin (kind WEIR_KIND_AGGREGATE), weir_init, and: */

/* Bytes of one accumulator. */
extern const size_t weir_acc_size;

/* Sets up a new, empty accumulator (the memory is zeroed first). */
void weir_acc_create(void *acc);

/* Folds one message in. On WEIR_ERROR the message fails and the
 * accumulator is left as it was (the kit works on a copy). */
weir_status weir_acc_add(void *acc, const weir_message *msg, weir_string *error);

/* Folds `from` into `into`. */
void weir_acc_merge(void *into, const void *from);

/* The window an accumulator belongs to. */
typedef struct {
    int64_t start_ms;
    int64_t end_ms;
    weir_bytes topic;  /* of the window's first message */
    weir_bytes fields; /* the group key, read it with weir_message_field */
} weir_window;

/* The window's result: a JSON object in `*result` (set it with
 * weir_string_set), or nothing for no output. WEIR_ERROR fails that
 * window's output only. */
weir_status weir_acc_finish(const void *acc, const weir_window *window, weir_string *result,
                            weir_string *error);

/* Sets `out` to a heap copy of `len` bytes of `text`. */
void weir_string_set(weir_string *out, const char *text, size_t len);

/* A byte range from a C string (NULL stays NULL). */
weir_bytes weir_str(const char *text);

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* Sets `error` to the concatenation of its string arguments, which end with
 * NULL, and returns WEIR_ERROR, so that a callback can end with
 *     return weir_error(error, "field \"", path, "\" is missing", NULL);
 * Pure string work: it pulls no stdio into the component. */
weir_status weir_error(weir_string *error, const char *text, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((sentinel))
#endif
    ;

/* The same with a printf format. It links wasi-libc's stdio, which makes
 * the component import WASI (about 20 KB more, and the preview1 adapter). */
weir_status weir_errorf(weir_string *error, const char *format, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Looks up `key` in the message's field set (topic captures such as
 * `device`). Returns false when the field is absent. */
bool weir_message_field(const weir_message *msg, const char *key, weir_bytes *value);

/* Steps through the message's fields in order: start with `*cursor = 0`;
 * false after the last one. */
bool weir_message_next_field(const weir_message *msg, size_t *cursor, weir_field *field);

/* Logs a UTF-8 message through the host, tagged with the plugin's name. */
typedef enum {
    WEIR_LOG_TRACE = 0,
    WEIR_LOG_DEBUG = 1,
    WEIR_LOG_INFO = 2,
    WEIR_LOG_WARN = 3,
    WEIR_LOG_ERROR = 4
} weir_log_level;
void weir_log(weir_log_level level, const char *message);

/* ------------------------------------------------------------------------ */
/* JSON reader                                                              */
/* ------------------------------------------------------------------------ */

typedef enum {
    WEIR_JSON_OK = 0,
    WEIR_JSON_INVALID,    /* the document is not valid JSON */
    WEIR_JSON_MISSING,    /* no value at that path */
    WEIR_JSON_WRONG_TYPE, /* a value of another type is at that path */
    WEIR_JSON_NO_MEMORY   /* malloc failed */
} weir_json_status;

typedef enum {
    WEIR_JSON_NULL,
    WEIR_JSON_BOOL,
    WEIR_JSON_NUMBER,
    WEIR_JSON_STRING,
    WEIR_JSON_ARRAY,
    WEIR_JSON_OBJECT
} weir_json_type;

/* A value inside a validated document: its type and its exact source text
 * (a string value's text includes the quotes and escapes). */
typedef struct {
    weir_json_type type;
    const char *ptr;
    size_t len;
} weir_json_value;

/* Validates a whole document (RFC 8259, UTF-8, nesting up to 128 levels, no
 * number that overflows a double) and returns its root value. */
weir_json_status weir_json_parse(const char *json, size_t len, weir_json_value *root);

/* Finds the value at a dotted `path` below `value`: each segment is an
 * object key, or an array index when it is a decimal integer and the value
 * is an array. "" is `value` itself. With a repeated key the last one wins.
 * MISSING when a segment does not exist or crosses a scalar. */
weir_json_status weir_json_get(const weir_json_value *value, const char *path,
                               weir_json_value *out);

/* Reads a value as a double, a bool or a string (unescaped, NUL-terminated,
 * malloc'd: the caller frees `*out`). WRONG_TYPE for any other type. */
weir_json_status weir_json_number(const weir_json_value *value, double *out);
weir_json_status weir_json_bool(const weir_json_value *value, bool *out);
weir_json_status weir_json_string(const weir_json_value *value, char **out, size_t *len);

/* Steps through an object's members or an array's elements. Start with
 * `*cursor = 0`; returns false after the last one. `key` is set for
 * objects (a STRING value) and may be NULL. */
bool weir_json_next(const weir_json_value *container, size_t *cursor,
                    weir_json_value *key, weir_json_value *item);

/* One call: parse `json`, find `path`, read a number. */
weir_json_status weir_json_get_number(const char *json, size_t len, const char *path,
                                      double *out);

#ifdef __cplusplus
}
#endif

#endif /* WEIR_H */
