/*
 * {{name}}: a weir aggregate. Counts each window's readings and keeps the
 * highest `temp`; weir owns the windows (see the manifest's window step)
 * and adds the window bounds and group key to each result. The kit's API is
 * documented in weir/weir.h (built with -DWEIR_AGGREGATOR, see Makefile).
 */
#include "weir.h"

#include <stdlib.h>
#include <string.h>

const weir_plugin_info weir_plugin = {"{{name}}", "0.1.0", WEIR_KIND_AGGREGATE, NULL, 0};

/* A window's state. The kit copies and snapshots it as bytes, so it holds no
 * pointers: the highest `temp` is kept as its JSON text. */
typedef struct {
    long long count;
    double max;         /* meaningful when count > 0 */
    char max_text[40];  /* `max` as written in its payload, NUL-terminated */
} acc_t;

const size_t weir_acc_size = sizeof(acc_t);

/* The config table: this plugin takes no keys. */
weir_status weir_init(const char *config_json, size_t len, weir_string *error) {
    weir_json_value root, key, value;
    size_t cursor = 0;
    if (weir_json_parse(config_json, len, &root) != WEIR_JSON_OK)
        return weir_error(error, "invalid config: not valid JSON", NULL);
    if (weir_json_next(&root, &cursor, &key, &value))
        return weir_error(error, "invalid config: this plugin takes no keys", NULL);
    return WEIR_OK;
}

void weir_acc_create(void *acc) {
    (void)acc; /* zeroed by the kit: count 0, no max */
}

weir_status weir_acc_add(void *acc, const weir_message *msg, weir_string *error) {
    acc_t *a = acc;
    weir_json_value root, value;
    double temp;
    if (weir_json_parse(msg->payload.ptr, msg->payload.len, &root) != WEIR_JSON_OK)
        return weir_error(error, "the payload is not valid JSON", NULL);
    if (weir_json_get(&root, "temp", &value) != WEIR_JSON_OK)
        return weir_error(error, "\"temp\" is missing", NULL);
    if (weir_json_number(&value, &temp) != WEIR_JSON_OK)
        return weir_error(error, "\"temp\" is not a number", NULL);
    if (value.len >= sizeof a->max_text)
        return weir_error(error, "\"temp\" is written with more than 39 characters", NULL);
    if (a->count == 0 || temp > a->max) {
        a->max = temp;
        memcpy(a->max_text, value.ptr, value.len);
        a->max_text[value.len] = '\0';
    }
    a->count += 1;
    return WEIR_OK;
}

void weir_acc_merge(void *into, const void *from) {
    acc_t *a = into;
    const acc_t *b = from;
    if (b->count == 0) return;
    if (a->count == 0 || b->max > a->max) {
        a->max = b->max;
        memcpy(a->max_text, b->max_text, sizeof a->max_text);
    }
    a->count += b->count;
}

/* Decimal text of `v` at `buf` (room for 20 bytes); returns its length. */
static size_t format_count(long long v, char *buf) {
    char digits[20];
    size_t n = 0, len = 0;
    unsigned long long u = v < 0 ? 0 : (unsigned long long)v;
    do digits[n++] = (char)('0' + u % 10); while ((u /= 10) > 0);
    while (n > 0) buf[len++] = digits[--n];
    return len;
}

/* The result: {"count": n, "max": highest temp or null}. */
weir_status weir_acc_finish(const void *acc, const weir_window *window, weir_string *result,
                            weir_string *error) {
    const acc_t *a = acc;
    const char *max = a->count > 0 ? a->max_text : "null";
    char json[96];
    size_t len;
    (void)window;
    (void)error;
    memcpy(json, "{\"count\":", 9);
    len = 9 + format_count(a->count, json + 9);
    memcpy(json + len, ",\"max\":", 7);
    len += 7;
    memcpy(json + len, max, strlen(max));
    len += strlen(max);
    json[len++] = '}';
    weir_string_set(result, json, len);
    return WEIR_OK;
}
