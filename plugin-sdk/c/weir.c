/*
 * weir.c: the C kit (see weir.h). It owns two things:
 *
 * 1. The WIT exports of world `transformer` (metadata, init, process) over
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
#include "transformer.h"

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
static transformer_string_t take_error(weir_string *error, const char *fallback) {
    transformer_string_t out;
    if (error->len == 0) {
        free(error->ptr);
        transformer_string_dup(&out, fallback);
    } else {
        make_utf8(error->ptr, error->len);
        out.ptr = (uint8_t *)error->ptr;
        out.len = error->len;
    }
    error->ptr = NULL;
    error->len = 0;
    return out;
}

void weir_log(weir_log_level level, const char *message) {
    transformer_string_t text = {(uint8_t *)message, strlen(message)};
    transformer_list_tuple2_string_string_t no_fields = {NULL, 0};
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
static void copy_string(transformer_string_t *out, const char *text) {
    transformer_string_dup(out, text ? text : "");
}

void exports_weir_plugin_transform_metadata(weir_plugin_types_metadata_t *ret) {
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

bool exports_weir_plugin_transform_init(transformer_string_t *config, transformer_string_t *err) {
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
    transformer_string_free(config);
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

void exports_weir_plugin_transform_process(weir_plugin_types_batch_t *batch,
                                           weir_plugin_types_outcome_t *ret) {
    size_t words = batch->events.len, failure_cap = 0;
    /* A torn trailing descriptor means the host and the kit disagree on
     * the layout: every message fails, the torn one counted. */
    bool torn = words % EVENT_WORDS != 0;
    size_t n = words / EVENT_WORDS + torn;
    memset(ret, 0, sizeof *ret);
    if (n > 0 && !(ret->emitted.ptr = malloc(n * OUTPUT_WORDS * sizeof *ret->emitted.ptr)))
        abort();

    for (size_t i = 0; i < n; i++) {
        const uint32_t *w = batch->events.ptr + i * EVENT_WORDS;
        weir_message msg = {{NULL, 0}, {NULL, 0}, {NULL, 0}, 0, 0};
        weir_string error = {NULL, 0};
        weir_status status;
        bool keep = false;
        if (!initialised)
            status = weir_error(&error, "plugin is not initialised", NULL);
        else if (torn)
            status = weir_error(&error, "host bug: the batch's event words are not a multiple of 10",
                                NULL);
        else if (!view(batch, w + W_TOPIC, &msg.topic) || !view(batch, w + W_PAYLOAD, &msg.payload) ||
                 !view(batch, w + W_FIELDS, &msg.fields))
            status = weir_error(&error, "message spans lie outside the batch data", NULL);
        else if (w[W_QOS] > 0xFF)
            status = weir_error(&error, "host bug: the message's QoS word is more than a byte", NULL);
        else {
            /* Two's complement, as every target of this kit has. */
            msg.timestamp_ms = (int64_t)((uint64_t)w[W_TIMESTAMP + 1] << 32 | w[W_TIMESTAMP]);
            msg.qos = (uint8_t)w[W_QOS];
            status = weir_filter(&msg, &keep, &error);
        }

        if (status == WEIR_OK) {
            free(error.ptr);
            /* Flags 0, all parts the input's: the host passes it through. */
            if (keep) {
                uint32_t *out = ret->emitted.ptr + ret->emitted.len;
                memset(out, 0, OUTPUT_WORDS * sizeof *out);
                out[0] = (uint32_t)i;
                ret->emitted.len += OUTPUT_WORDS;
            }
            continue;
        }
        if (ret->failures.len == failure_cap) {
            failure_cap = failure_cap ? 2 * failure_cap : 8;
            void *grown = realloc(ret->failures.ptr, failure_cap * sizeof *ret->failures.ptr);
            if (!grown) abort();
            ret->failures.ptr = grown;
        }
        ret->failures.ptr[ret->failures.len].input = (uint32_t)i;
        ret->failures.ptr[ret->failures.len++].message =
            take_error(&error, "plugin failed on this message");
    }
    if (ret->emitted.len == 0) { /* post-return frees only non-empty lists */
        free(ret->emitted.ptr);
        ret->emitted.ptr = NULL;
    }
    weir_plugin_types_batch_free(batch);
}

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
