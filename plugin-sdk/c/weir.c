/*
 * weir.c: the C kit (see weir.h). It owns two things:
 *
 * 1. The WIT exports of world `transformer` (metadata, init, process, with
 *    a filter's weir_filter or a map's weir_transform and weir_emit) over
 *    the wit-bindgen-c bindings, following their ownership rules: an
 *    export's arguments belong to the callee, which frees them; its return
 *    value is malloc'd here and freed by the generated `*_post_return`
 *    after the host has copied it out (so nothing returned may be static,
 *    and a list of length 0 must not hold an allocation, which post-return
 *    would not free).
 * 2. A JSON reader with no dependencies. It validates a whole document as
 *    strictly as serde_json does (so a C plugin and its Rust twin agree on
 *    what "not valid JSON" means), then walks the text again to find values.
 *    It never allocates except to return an unescaped string.
 *
 * Nothing here may trap on bad input: a malformed payload or a host span
 * that points outside the batch is a per-message failure. Only malloc
 * failure aborts (the host then rebuilds the instance).
 */
#include "weir.h"

/* One kit, two worlds: the bindings of `aggregator` when built with
 * -DWEIR_AGGREGATOR, else those of `transformer`. Both share the types and
 * host interfaces; only the world's prefix differs. */
#ifdef WEIR_AGGREGATOR
#include "aggregator.h"
#define WIT(name) aggregator_##name
#else
#include "transformer.h"
#define WIT(name) transformer_##name
#endif
typedef WIT(string_t) wit_string_t;

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Nesting deeper than serde_json's limit (127 levels) is refused: the
 * scanner recurses, and the two must agree on what is valid. */
#define JSON_MAX_DEPTH 127

/* ------------------------------------------------------------------------ */
/* Strings                                                                  */
/* ------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at `s` (RFC 3629: no overlongs, no
 * surrogates, at most U+10FFFF), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *s, size_t left) {
    size_t n = s[0] < 0x80 ? 1 : s[0] >= 0xC2 && s[0] <= 0xDF ? 2
             : s[0] >= 0xE0 && s[0] <= 0xEF ? 3 : s[0] >= 0xF0 && s[0] <= 0xF4 ? 4 : 0;
    if (n == 0 || n > left) return 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] > 0x9F) ||
        (s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] > 0x8F))
        return 0;
    return n;
}

/* WIT strings must be UTF-8 or the host traps lifting them: replace any
 * invalid byte of a message before handing it over. */
static void make_utf8(char *s, size_t len) {
    for (size_t i = 0; i < len;) {
        size_t n = utf8_len((unsigned char *)s + i, len - i);
        if (n == 0) s[i++] = '?';
        else i += n;
    }
}

/* Replaces `error` with `text` (malloc'd, or NULL when malloc failed). */
static weir_status set_error(weir_string *error, char *text, size_t len) {
    free(error->ptr); /* last: the arguments may have pointed into it */
    error->ptr = text;
    error->len = text ? len : 0;
    return WEIR_ERROR;
}

weir_status weir_error(weir_string *error, const char *text, ...) {
    va_list args;
    const char *part;
    size_t len = 0;
    char *out;
    va_start(args, text);
    for (part = text; part; part = va_arg(args, const char *)) len += strlen(part);
    va_end(args);
    if ((out = malloc(len + 1))) {
        len = 0;
        va_start(args, text);
        for (part = text; part; part = va_arg(args, const char *)) {
            memcpy(out + len, part, strlen(part));
            len += strlen(part);
        }
        va_end(args);
        out[len] = '\0';
    }
    return set_error(error, out, len);
}

weir_status weir_errorf(weir_string *error, const char *format, ...) {
    va_list args;
    char *out = NULL;
    int n;
    va_start(args, format);
    n = vsnprintf(NULL, 0, format, args);
    va_end(args);
    if (n >= 0 && (out = malloc((size_t)n + 1))) {
        va_start(args, format);
        vsnprintf(out, (size_t)n + 1, format, args);
        va_end(args);
    }
    return set_error(error, out, n < 0 ? 0 : (size_t)n);
}

/* Moves a plugin's error into a WIT string, with a fallback text. */
static wit_string_t take_error(weir_string *error, const char *fallback) {
    wit_string_t out;
    if (error->len == 0) {
        free(error->ptr);
        WIT(string_dup)(&out, fallback);
    } else {
        make_utf8(error->ptr, error->len);
        out.ptr = (uint8_t *)error->ptr;
        out.len = error->len;
    }
    error->ptr = NULL;
    error->len = 0;
    return out;
}

void weir_string_set(weir_string *out, const char *text, size_t len) {
    out->ptr = malloc(len + 1);
    if (!out->ptr) abort();
    memcpy(out->ptr, text, len);
    out->ptr[len] = '\0';
    out->len = len;
}

void weir_log(weir_log_level level, const char *message) {
    wit_string_t text = {(uint8_t *)message, strlen(message)};
    WIT(list_tuple2_string_string_t) no_fields = {NULL, 0};
    weir_plugin_host_log((weir_plugin_host_level_t)level, &text, &no_fields);
}

/* Reads one `u32le len, bytes` part of a field set; false at the end or
 * when the set is truncated. */
static bool field_part(const unsigned char **p, size_t *left, weir_bytes *out) {
    size_t n;
    if (*left < 4) return false;
    n = (size_t)(*p)[0] | (size_t)(*p)[1] << 8 | (size_t)(*p)[2] << 16 | (size_t)(*p)[3] << 24;
    if (n > *left - 4) return false;
    out->ptr = (const char *)*p + 4;
    out->len = n;
    *p += 4 + n;
    *left -= 4 + n;
    return true;
}

bool weir_message_next_field(const weir_message *msg, size_t *cursor, weir_field *field) {
    const unsigned char *p;
    size_t left;
    if (*cursor > msg->fields.len) return false;
    p = (const unsigned char *)msg->fields.ptr + *cursor;
    left = msg->fields.len - *cursor;
    if (!field_part(&p, &left, &field->key) || !field_part(&p, &left, &field->value)) return false;
    *cursor = msg->fields.len - left;
    return true;
}

weir_bytes weir_str(const char *text) {
    weir_bytes out = {text, text ? strlen(text) : 0};
    return out;
}

bool weir_message_field(const weir_message *msg, const char *key, weir_bytes *value) {
    const unsigned char *p = (const unsigned char *)msg->fields.ptr;
    size_t left = msg->fields.len, key_len = strlen(key);
    weir_bytes k, v;
    while (field_part(&p, &left, &k) && field_part(&p, &left, &v)) {
        if (k.len == key_len && memcmp(k.ptr, key, key_len) == 0) {
            *value = v;
            return true;
        }
    }
    return false;
}

/* ------------------------------------------------------------------------ */
/* WIT exports                                                              */
/* ------------------------------------------------------------------------ */

static bool initialised;

/* A heap copy (post-return frees it) of a possibly NULL C string. */
static void copy_string(wit_string_t *out, const char *text) {
    WIT(string_dup)(out, text ? text : "");
}

static void fill_metadata(weir_plugin_types_metadata_t *ret) {
    size_t n = weir_plugin.config_key_count;
    copy_string(&ret->name, weir_plugin.name);
    copy_string(&ret->version, weir_plugin.version);
    ret->kind = (weir_plugin_types_plugin_kind_t)weir_plugin.kind;
    ret->config_keys.len = n;
    ret->config_keys.ptr = NULL;
    if (n == 0) return;
    ret->config_keys.ptr = malloc(n * sizeof *ret->config_keys.ptr);
    if (!ret->config_keys.ptr) abort();
    for (size_t i = 0; i < n; i++) {
        copy_string(&ret->config_keys.ptr[i].name, weir_plugin.config_keys[i].name);
        copy_string(&ret->config_keys.ptr[i].description, weir_plugin.config_keys[i].description);
    }
}

static bool run_init(wit_string_t *config, wit_string_t *err) {
    weir_string error = {NULL, 0};
    weir_status status;
    size_t len = config->len, i;
    char *text = malloc(len + 3); /* a C string, with room for "{}" */
    if (!text) abort();
    memcpy(text, config->ptr, len);
    /* A plugin without a config table may be handed "": read it as {}. */
    for (i = 0; i < len; i++)
        if (text[i] != ' ' && text[i] != '\t' && text[i] != '\n' && text[i] != '\r') break;
    if (i == len) {
        memcpy(text, "{}", 2);
        len = 2;
    }
    text[len] = '\0';
    status = weir_init(text, len, &error);
    free(text);
    initialised = status == WEIR_OK;
    if (initialised) free(error.ptr);
    else *err = take_error(&error, "init failed");
    WIT(string_free)(config);
    return initialised;
}

/* The flat batch layout (see wit/plugin.wit, records `batch` and `outcome`):
 * ten u32 words per input message in `events`, ten per output in `emitted`.
 * Input words: topic, payload, fields as (offset, length) pairs into `data`,
 * then the timestamp as (low, high), the QoS and a reserved word. Output
 * words: the input index, the flags of the new parts (none for a
 * passthrough, whose other words are then 0), then the new parts. */
#define EVENT_WORDS 10
#define OUTPUT_WORDS 10
enum { W_TOPIC = 0, W_PAYLOAD = 2, W_FIELDS = 4, W_TIMESTAMP = 6, W_QOS = 8 };

/* The (offset, length) pair of words at `w` as a view of the batch's data;
 * false when it lies outside. */
static bool view(const weir_plugin_types_batch_t *batch, const uint32_t *w, weir_bytes *out) {
    uint32_t offset = w[0], len = w[1];
    if (offset > batch->data.len || len > batch->data.len - offset) return false;
    out->ptr = (const char *)batch->data.ptr + offset;
    out->len = len;
    return true;
}

/* Where a map's or flat-map's outputs go: the outcome's words, and its
 * data buffer grown as parts are copied in. */
struct weir_emitter {
    weir_plugin_types_outcome_t *ret;
    size_t word_cap;
    size_t data_cap;
    uint32_t input;
};

static void reserve_words(weir_emitter *e, size_t more) {
    size_t need = e->ret->emitted.len + more;
    if (need <= e->word_cap) return;
    e->word_cap = need > 2 * e->word_cap ? need : 2 * e->word_cap;
    void *grown = realloc(e->ret->emitted.ptr, e->word_cap * sizeof *e->ret->emitted.ptr);
    if (!grown) abort();
    e->ret->emitted.ptr = grown;
}

/* Appends bytes to the outcome's data; returns their offset. */
static uint32_t put(weir_emitter *e, const void *bytes, size_t len) {
    size_t at = e->ret->data.len;
    if (at + len > e->data_cap) {
        e->data_cap = at + len > 2 * e->data_cap ? at + len : 2 * e->data_cap;
        void *grown = realloc(e->ret->data.ptr, e->data_cap);
        if (!grown) abort();
        e->ret->data.ptr = grown;
    }
    if (len) memcpy(e->ret->data.ptr + at, bytes, len);
    e->ret->data.len += len;
    return (uint32_t)at;
}

static void put_u32(weir_emitter *e, size_t n) {
    unsigned char le[4] = {(unsigned char)n, (unsigned char)(n >> 8), (unsigned char)(n >> 16),
                           (unsigned char)(n >> 24)};
    put(e, le, 4);
}

void weir_emit(weir_emitter *e, const weir_output *o) {
    uint32_t *w;
    reserve_words(e, OUTPUT_WORDS);
    w = e->ret->emitted.ptr + e->ret->emitted.len;
    memset(w, 0, OUTPUT_WORDS * sizeof *w);
    w[0] = e->input;
    if (o->topic.ptr) {
        w[1] |= 1;
        w[2] = put(e, o->topic.ptr, o->topic.len);
        w[3] = (uint32_t)o->topic.len;
    }
    if (o->payload.ptr) {
        w[1] |= 2;
        w[4] = put(e, o->payload.ptr, o->payload.len);
        w[5] = (uint32_t)o->payload.len;
    }
    if (o->set_fields) {
        size_t start = e->ret->data.len;
        for (size_t i = 0; i < o->field_count; i++) {
            put_u32(e, o->fields[i].key.len);
            put(e, o->fields[i].key.ptr, o->fields[i].key.len);
            put_u32(e, o->fields[i].value.len);
            put(e, o->fields[i].value.ptr, o->fields[i].value.len);
        }
        w[1] |= 4;
        w[6] = (uint32_t)start;
        w[7] = (uint32_t)(e->ret->data.len - start);
    }
    if (o->set_timestamp) {
        w[1] |= 8;
        w[8] = (uint32_t)((uint64_t)o->timestamp_ms & 0xFFFFFFFFu);
        w[9] = (uint32_t)((uint64_t)o->timestamp_ms >> 32);
    }
    e->ret->emitted.len += OUTPUT_WORDS;
}

/* Message `i` of a batch, checked against the batch's bounds. */
static weir_status read_message(const weir_plugin_types_batch_t *batch, size_t i,
                                weir_message *msg, weir_string *error) {
    const uint32_t *w = batch->events.ptr + i * EVENT_WORDS;
    if (!initialised) return weir_error(error, "plugin is not initialised", NULL);
    if (!view(batch, w + W_TOPIC, &msg->topic) || !view(batch, w + W_PAYLOAD, &msg->payload) ||
        !view(batch, w + W_FIELDS, &msg->fields))
        return weir_error(error, "message spans lie outside the batch data", NULL);
    if (w[W_QOS] > 0xFF)
        return weir_error(error, "host bug: the message's QoS word is more than a byte", NULL);
    /* Two's complement, as every target of this kit has. */
    msg->timestamp_ms = (int64_t)((uint64_t)w[W_TIMESTAMP + 1] << 32 | w[W_TIMESTAMP]);
    msg->qos = (uint8_t)w[W_QOS];
    return WEIR_OK;
}

/* Appends a failure of input `i` to an outcome's or a list's failures. */
static void add_failure(weir_plugin_types_list_failure_t *failures, size_t *cap, size_t i,
                        weir_string *error) {
    if (failures->len == *cap) {
        *cap = *cap ? 2 * *cap : 8;
        void *grown = realloc(failures->ptr, *cap * sizeof *failures->ptr);
        if (!grown) abort();
        failures->ptr = grown;
    }
    failures->ptr[failures->len].input = (uint32_t)i;
    failures->ptr[failures->len++].message = take_error(error, "plugin failed on this message");
}

/* Post-return frees only non-empty lists: an empty one holds no memory. */
static void release_empty(weir_plugin_types_outcome_t *ret) {
    if (ret->emitted.len == 0) {
        free(ret->emitted.ptr);
        ret->emitted.ptr = NULL;
    }
    if (ret->data.len == 0) {
        free(ret->data.ptr);
        ret->data.ptr = NULL;
    }
}

#ifndef WEIR_AGGREGATOR

void exports_weir_plugin_transform_metadata(weir_plugin_types_metadata_t *ret) {
    fill_metadata(ret);
}

bool exports_weir_plugin_transform_init(wit_string_t *config, wit_string_t *err) {
    return run_init(config, err);
}

void exports_weir_plugin_transform_process(weir_plugin_types_batch_t *batch,
                                           weir_plugin_types_outcome_t *ret) {
    size_t words = batch->events.len, failure_cap = 0;
    /* A torn trailing descriptor means the host and the kit disagree on
     * the layout: every message fails, the torn one counted. */
    bool torn = words % EVENT_WORDS != 0;
    size_t n = words / EVENT_WORDS + torn;
    weir_emitter emitter = {ret, n * OUTPUT_WORDS, 0, 0};
    memset(ret, 0, sizeof *ret);
    if (n > 0 && !(ret->emitted.ptr = malloc(n * OUTPUT_WORDS * sizeof *ret->emitted.ptr)))
        abort();

    for (size_t i = 0; i < n; i++) {
        weir_message msg = {{NULL, 0}, {NULL, 0}, {NULL, 0}, 0, 0};
        weir_string error = {NULL, 0};
        weir_status status;
        bool keep = false;
        if (torn)
            status = weir_error(&error, "host bug: the batch's event words are not a multiple of 10",
                                NULL);
        else
            status = read_message(batch, i, &msg, &error);
        if (status == WEIR_OK) {
            if (weir_transform) {
                /* A failed message emits nothing: roll back its outputs. */
                size_t words_before = ret->emitted.len, data_before = ret->data.len;
                emitter.input = (uint32_t)i;
                status = weir_transform(&msg, &emitter, &error);
                if (status != WEIR_OK) {
                    ret->emitted.len = words_before;
                    ret->data.len = data_before;
                }
            } else if (weir_filter) {
                status = weir_filter(&msg, &keep, &error);
            } else {
                status = weir_error(&error, "the plugin defines neither weir_filter nor weir_transform",
                                    NULL);
            }
        }

        if (status == WEIR_OK) {
            free(error.ptr);
            /* Flags 0, all parts the input's: the host passes it through. */
            if (keep) {
                uint32_t *out;
                reserve_words(&emitter, OUTPUT_WORDS);
                out = ret->emitted.ptr + ret->emitted.len;
                memset(out, 0, OUTPUT_WORDS * sizeof *out);
                out[0] = (uint32_t)i;
                ret->emitted.len += OUTPUT_WORDS;
            }
            continue;
        }
        add_failure(&ret->failures, &failure_cap, i, &error);
    }
    release_empty(ret);
    weir_plugin_types_batch_free(batch);
}

#else /* WEIR_AGGREGATOR */

/* Accumulators by the host's ids: an open-addressing table of (id, state)
 * with linear probing; a state is `weir_acc_size` bytes. */
typedef struct {
    uint32_t id;
    bool used;
    void *state;
} acc_slot;

static acc_slot *slots;
static size_t slot_count, slot_cap;

static size_t slot_of(uint32_t id) {
    return (size_t)(id * 2654435761u) & (slot_cap - 1);
}

/* The slot holding `id`, or NULL. */
static acc_slot *find_acc(uint32_t id) {
    if (slot_cap == 0) return NULL;
    for (size_t i = slot_of(id);; i = (i + 1) & (slot_cap - 1)) {
        if (!slots[i].used) return NULL;
        if (slots[i].id == id) return &slots[i];
    }
}

static void *new_state(void) {
    void *state = calloc(1, weir_acc_size ? weir_acc_size : 1);
    if (!state) abort();
    weir_acc_create(state);
    return state;
}

static void insert_slot(uint32_t id, void *state) {
    size_t i = slot_of(id);
    while (slots[i].used) i = (i + 1) & (slot_cap - 1);
    slots[i].id = id;
    slots[i].used = true;
    slots[i].state = state;
    slot_count++;
}

/* The state of `id`, created empty on first use. */
static void *get_acc(uint32_t id) {
    acc_slot *slot = find_acc(id);
    if (slot) return slot->state;
    if (2 * (slot_count + 1) > slot_cap) {
        acc_slot *old = slots;
        size_t old_cap = slot_cap;
        slot_cap = slot_cap ? 2 * slot_cap : 16;
        slots = calloc(slot_cap, sizeof *slots);
        if (!slots) abort();
        slot_count = 0;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].used) insert_slot(old[i].id, old[i].state);
        free(old);
    }
    void *state = new_state();
    insert_slot(id, state);
    return state;
}

/* Frees `id`'s state (backward-shift deletion keeps probe chains whole). */
static void release_acc(uint32_t id) {
    acc_slot *slot = find_acc(id);
    if (!slot) return;
    size_t i = (size_t)(slot - slots);
    free(slot->state);
    slots[i].used = false;
    slot_count--;
    for (size_t j = (i + 1) & (slot_cap - 1); slots[j].used; j = (j + 1) & (slot_cap - 1)) {
        acc_slot moved = slots[j];
        slots[j].used = false;
        slot_count--;
        insert_slot(moved.id, moved.state);
    }
}

void exports_weir_plugin_aggregate_metadata(weir_plugin_types_metadata_t *ret) {
    fill_metadata(ret);
}

bool exports_weir_plugin_aggregate_init(wit_string_t *config, wit_string_t *err) {
    return run_init(config, err);
}

void exports_weir_plugin_aggregate_accumulate(weir_plugin_types_batch_t *batch,
                                              aggregator_list_u32_t *targets,
                                              exports_weir_plugin_aggregate_list_failure_t *ret) {
    size_t n = batch->events.len / EVENT_WORDS, failure_cap = 0;
    bool *failed = calloc(n ? n : 1, sizeof *failed);
    void *scratch = malloc(weir_acc_size ? weir_acc_size : 1);
    weir_plugin_types_list_failure_t failures = {NULL, 0};
    if (!failed || !scratch) abort();
    for (size_t t = 0; t + 1 < targets->len; t += 2) {
        size_t i = targets->ptr[t];
        weir_message msg = {{NULL, 0}, {NULL, 0}, {NULL, 0}, 0, 0};
        weir_string error = {NULL, 0};
        weir_status status;
        void *state;
        if (i >= n || failed[i]) continue;
        state = get_acc(targets->ptr[t + 1]);
        status = read_message(batch, i, &msg, &error);
        if (status == WEIR_OK) {
            /* On a copy: a refused message leaves the accumulator as it was. */
            memcpy(scratch, state, weir_acc_size);
            status = weir_acc_add(scratch, &msg, &error);
            if (status == WEIR_OK) memcpy(state, scratch, weir_acc_size);
        }
        if (status == WEIR_OK) {
            free(error.ptr);
            continue;
        }
        failed[i] = true;
        add_failure(&failures, &failure_cap, i, &error);
    }
    ret->ptr = failures.ptr;
    ret->len = failures.len;
    free(scratch);
    free(failed);
    weir_plugin_types_batch_free(batch);
    aggregator_list_u32_free(targets);
}

void exports_weir_plugin_aggregate_merge(uint32_t target, uint32_t source) {
    void *from = get_acc(source);
    weir_acc_merge(get_acc(target), from);
}

void exports_weir_plugin_aggregate_finish(aggregator_list_u32_t *ids,
                                          weir_plugin_types_batch_t *windows,
                                          weir_plugin_types_outcome_t *ret) {
    size_t n = windows->events.len / EVENT_WORDS, failure_cap = 0;
    weir_emitter emitter = {ret, 0, 0, 0};
    memset(ret, 0, sizeof *ret);
    for (size_t i = 0; i < n && i < ids->len; i++) {
        weir_message msg = {{NULL, 0}, {NULL, 0}, {NULL, 0}, 0, 0};
        weir_string error = {NULL, 0}, result = {NULL, 0};
        weir_status status = read_message(windows, i, &msg, &error);
        void *state = get_acc(ids->ptr[i]);
        if (status == WEIR_OK) {
            weir_json_value root, value;
            weir_window window = {0, 0, msg.topic, msg.fields};
            double start = 0, end = 0;
            if (weir_json_parse(msg.payload.ptr, msg.payload.len, &root) == WEIR_JSON_OK &&
                weir_json_get(&root, "window_start", &value) == WEIR_JSON_OK &&
                weir_json_number(&value, &start) == WEIR_JSON_OK &&
                weir_json_get(&root, "window_end", &value) == WEIR_JSON_OK &&
                weir_json_number(&value, &end) == WEIR_JSON_OK) {
                window.start_ms = (int64_t)start;
                window.end_ms = (int64_t)end;
                status = weir_acc_finish(state, &window, &result, &error);
            } else {
                status = weir_error(&error, "host bug: the window message has no bounds", NULL);
            }
        }
        if (status == WEIR_OK && result.ptr) {
            weir_output o = {{NULL, 0}, {result.ptr, result.len}, false, NULL, 0, false, 0};
            emitter.input = (uint32_t)i;
            weir_emit(&emitter, &o);
        }
        free(result.ptr);
        release_acc(ids->ptr[i]);
        if (status == WEIR_OK) {
            free(error.ptr);
            continue;
        }
        add_failure(&ret->failures, &failure_cap, i, &error);
    }
    release_empty(ret);
    aggregator_list_u32_free(ids);
    weir_plugin_types_batch_free(windows);
}

void exports_weir_plugin_aggregate_discard(aggregator_list_u32_t *ids) {
    for (size_t i = 0; i < ids->len; i++) release_acc(ids->ptr[i]);
    aggregator_list_u32_free(ids);
}

/* A snapshot is "WAC1", the state's size as 4 bytes little endian, then
 * the state's bytes. */
bool exports_weir_plugin_aggregate_snapshot(uint32_t id, aggregator_list_u8_t *ret,
                                            wit_string_t *err) {
    void *state = get_acc(id);
    size_t size = weir_acc_size;
    (void)err;
    ret->len = 8 + size;
    ret->ptr = malloc(ret->len);
    if (!ret->ptr) abort();
    memcpy(ret->ptr, "WAC1", 4);
    for (int b = 0; b < 4; b++) ret->ptr[4 + b] = (uint8_t)(size >> (8 * b));
    memcpy(ret->ptr + 8, state, size);
    return true;
}

bool exports_weir_plugin_aggregate_restore(uint32_t id, aggregator_list_u8_t *state,
                                           wit_string_t *err) {
    size_t size = 0;
    bool ok = state->len >= 8 && memcmp(state->ptr, "WAC1", 4) == 0;
    for (int b = 0; ok && b < 4; b++) size |= (size_t)state->ptr[4 + b] << (8 * b);
    ok = ok && size == weir_acc_size && state->len == 8 + size;
    if (ok) memcpy(get_acc(id), state->ptr + 8, size);
    else WIT(string_dup)(err, "snapshot of another format or accumulator size");
    aggregator_list_u8_free(state);
    return ok;
}

#endif

/* ------------------------------------------------------------------------ */
/* JSON reader                                                              */
/* ------------------------------------------------------------------------ */

typedef struct {
    const char *p, *end;
} scanner;

static bool is_digit(const scanner *s) { return s->p < s->end && *s->p >= '0' && *s->p <= '9'; }

static bool at(const scanner *s, char c) { return s->p < s->end && *s->p == c; }

static void skip_ws(scanner *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int hex4(const char *p) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Reads `uXXXX` (or a surrogate pair `uD8xx\uDCxx`) at s->p, just after a
 * backslash, into a code point. Lone surrogates are invalid. */
static bool u_escape(scanner *s, unsigned long *cp) {
    int hi = s->end - s->p >= 5 ? hex4(s->p + 1) : -1, lo;
    if (hi < 0 || (hi >= 0xDC00 && hi <= 0xDFFF)) return false;
    s->p += 5;
    if (hi < 0xD800 || hi > 0xDBFF) {
        *cp = (unsigned long)hi;
        return true;
    }
    if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u') return false;
    lo = hex4(s->p + 2);
    if (lo < 0xDC00 || lo > 0xDFFF) return false;
    s->p += 6;
    *cp = 0x10000 + (((unsigned long)hi - 0xD800) << 10) + ((unsigned long)lo - 0xDC00);
    return true;
}

/* Decodes one character of a validated string body into `out` as UTF-8 and
 * returns its length. */
static size_t next_char(scanner *s, char out[4]) {
    static const char plain[] = "\"\\/bfnrt", decoded[] = "\"\\/\b\f\n\r\t";
    unsigned long cp;
    if (*s->p != '\\') {
        out[0] = *s->p++;
        return 1;
    }
    s->p++;
    if (*s->p != 'u') {
        out[0] = decoded[strchr(plain, *s->p++) - plain];
        return 1;
    }
    u_escape(s, &cp);
    if (cp < 0x80) return out[0] = (char)cp, 1;
    if (cp < 0x800) return out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Validates a string from its opening quote to past its closing quote. */
static bool scan_string(scanner *s) {
    unsigned long cp;
    for (s->p++; s->p < s->end;) {
        unsigned char c = (unsigned char)*s->p;
        size_t n;
        if (c == '"') return s->p++, true;
        if (c < 0x20) return false;
        if (c == '\\') {
            if (++s->p == s->end) return false;
            if (*s->p == 'u') {
                if (!u_escape(s, &cp)) return false;
            } else if (*s->p && strchr("\"\\/bfnrt", *s->p)) {
                s->p++;
            } else {
                return false;
            }
        } else if ((n = utf8_len((const unsigned char *)s->p, (size_t)(s->end - s->p))) > 0) {
            s->p += n;
        } else {
            return false;
        }
    }
    return false;
}

/* strtod over a number's text, which is not NUL-terminated in the input. */
static bool to_double(const char *text, size_t len, double *out) {
    char local[64], *buf = len < sizeof local ? local : malloc(len + 1);
    if (!buf) return false;
    memcpy(buf, text, len);
    buf[len] = '\0';
    *out = strtod(buf, NULL);
    if (buf != local) free(buf);
    return true;
}

/* Validates a number (RFC 8259 grammar). A number that overflows a double
 * is refused, as serde_json does; only an exponent or a long integer part
 * can overflow, so only those pay for strtod. */
static bool scan_number(scanner *s) {
    const char *start = s->p;
    bool big = false;
    double d;
    if (at(s, '-')) s->p++;
    if (at(s, '0')) s->p++;
    else if (!is_digit(s)) return false;
    else while (is_digit(s)) s->p++;
    big = s->p - start > 300;
    if (at(s, '.')) {
        s->p++;
        if (!is_digit(s)) return false;
        while (is_digit(s)) s->p++;
    }
    if (at(s, 'e') || at(s, 'E')) {
        s->p++;
        if (at(s, '+') || at(s, '-')) s->p++;
        if (!is_digit(s)) return false;
        while (is_digit(s)) s->p++;
        big = true;
    }
    return !big || (to_double(start, (size_t)(s->p - start), &d) && !isinf(d));
}

static bool scan_literal(scanner *s, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0) return false;
    s->p += n;
    return true;
}

static bool scan_value(scanner *s, int depth, weir_json_type *type);

/* Validates an object or array from its opening bracket. */
static bool scan_container(scanner *s, int depth, bool object) {
    weir_json_type type;
    if (depth >= JSON_MAX_DEPTH) return false;
    s->p++;
    skip_ws(s);
    if (at(s, object ? '}' : ']')) return s->p++, true;
    for (;;) {
        if (object) {
            skip_ws(s);
            if (!at(s, '"') || !scan_string(s)) return false;
            skip_ws(s);
            if (!at(s, ':')) return false;
            s->p++;
        }
        if (!scan_value(s, depth + 1, &type)) return false;
        skip_ws(s);
        if (at(s, ',')) s->p++;
        else if (at(s, object ? '}' : ']')) return s->p++, true;
        else return false;
    }
}

/* Validates one value (leading whitespace allowed) and tells its type. */
static bool scan_value(scanner *s, int depth, weir_json_type *type) {
    skip_ws(s);
    if (s->p == s->end) return false;
    switch (*s->p) {
    case '{': *type = WEIR_JSON_OBJECT; return scan_container(s, depth, true);
    case '[': *type = WEIR_JSON_ARRAY; return scan_container(s, depth, false);
    case '"': *type = WEIR_JSON_STRING; return scan_string(s);
    case 't': *type = WEIR_JSON_BOOL; return scan_literal(s, "true");
    case 'f': *type = WEIR_JSON_BOOL; return scan_literal(s, "false");
    case 'n': *type = WEIR_JSON_NULL; return scan_literal(s, "null");
    default: *type = WEIR_JSON_NUMBER; return scan_number(s);
    }
}

weir_json_status weir_json_parse(const char *json, size_t len, weir_json_value *root) {
    scanner s = {json, json + len};
    skip_ws(&s);
    root->ptr = s.p;
    if (!scan_value(&s, 0, &root->type)) return WEIR_JSON_INVALID;
    root->len = (size_t)(s.p - root->ptr);
    skip_ws(&s);
    return s.p == s.end ? WEIR_JSON_OK : WEIR_JSON_INVALID;
}

bool weir_json_next(const weir_json_value *container, size_t *cursor, weir_json_value *key,
                    weir_json_value *item) {
    bool object = container->type == WEIR_JSON_OBJECT;
    scanner s = {container->ptr + *cursor, container->ptr + container->len};
    if (!object && container->type != WEIR_JSON_ARRAY) return false;
    if (*cursor == 0) s.p++; /* the opening bracket */
    skip_ws(&s);
    if (at(&s, ',')) s.p++;
    skip_ws(&s);
    if (s.p == s.end || at(&s, '}') || at(&s, ']')) return false;
    if (object) {
        weir_json_value k = {WEIR_JSON_STRING, s.p, 0};
        scan_string(&s);
        k.len = (size_t)(s.p - k.ptr);
        if (key) *key = k;
        skip_ws(&s);
        s.p++; /* the colon */
        skip_ws(&s);
    }
    item->ptr = s.p;
    scan_value(&s, 0, &item->type); /* validated already: this only skips */
    item->len = (size_t)(s.p - item->ptr);
    *cursor = (size_t)(s.p - container->ptr);
    return true;
}

/* Whether a string value, unescaped, equals `seg[0..len)`. */
static bool key_equals(const weir_json_value *key, const char *seg, size_t len) {
    scanner s = {key->ptr + 1, key->ptr + key->len - 1};
    char c[4];
    while (s.p < s.end) {
        size_t n = next_char(&s, c);
        if (n > len || memcmp(c, seg, n) != 0) return false;
        seg += n;
        len -= n;
    }
    return len == 0;
}

weir_json_status weir_json_get(const weir_json_value *value, const char *path,
                               weir_json_value *out) {
    weir_json_value cur = *value, key, item;
    const char *seg = path;
    while (*path) {
        const char *dot = strchr(seg, '.');
        size_t len = dot ? (size_t)(dot - seg) : strlen(seg), cursor = 0, index = 0, i;
        bool found = false, numeric = len > 0;
        for (i = 0; i < len; i++) { /* saturates: no array is that long */
            numeric = numeric && seg[i] >= '0' && seg[i] <= '9';
            index = index > (SIZE_MAX - 9) / 10 ? SIZE_MAX : index * 10 + (size_t)(seg[i] - '0');
        }
        if (cur.type == WEIR_JSON_OBJECT) {
            while (weir_json_next(&cur, &cursor, &key, &item))
                if (key_equals(&key, seg, len)) found = true, *out = item; /* last wins */
        } else if (cur.type == WEIR_JSON_ARRAY && numeric) {
            for (i = 0; !found && weir_json_next(&cur, &cursor, NULL, &item); i++)
                if (i == index) found = true, *out = item;
        }
        if (!found) return WEIR_JSON_MISSING;
        cur = *out;
        if (!dot) break;
        seg = dot + 1;
    }
    *out = cur;
    return WEIR_JSON_OK;
}

weir_json_status weir_json_number(const weir_json_value *value, double *out) {
    if (value->type != WEIR_JSON_NUMBER) return WEIR_JSON_WRONG_TYPE;
    return to_double(value->ptr, value->len, out) ? WEIR_JSON_OK : WEIR_JSON_NO_MEMORY;
}

weir_json_status weir_json_bool(const weir_json_value *value, bool *out) {
    if (value->type != WEIR_JSON_BOOL) return WEIR_JSON_WRONG_TYPE;
    *out = value->ptr[0] == 't';
    return WEIR_JSON_OK;
}

weir_json_status weir_json_string(const weir_json_value *value, char **out, size_t *len) {
    scanner s = {value->ptr + 1, value->ptr + value->len - 1};
    char *text;
    if (value->type != WEIR_JSON_STRING) return WEIR_JSON_WRONG_TYPE;
    /* Unescaping never lengthens: `\uXXXX` is 6 bytes for at most 3. */
    if (!(text = malloc(value->len))) return WEIR_JSON_NO_MEMORY;
    *len = 0;
    while (s.p < s.end) *len += next_char(&s, text + *len);
    text[*len] = '\0';
    *out = text;
    return WEIR_JSON_OK;
}

weir_json_status weir_json_get_number(const char *json, size_t len, const char *path,
                                      double *out) {
    weir_json_value root, value;
    weir_json_status status = weir_json_parse(json, len, &root);
    if (status == WEIR_JSON_OK) status = weir_json_get(&root, path, &value);
    if (status == WEIR_JSON_OK) status = weir_json_number(&value, out);
    return status;
}
