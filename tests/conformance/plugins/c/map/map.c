/*
 * conf-map in C: the conformance map (tests/conformance/README.md). `temp`
 * must be an integer; the output's topic is `<prefix>/<topic>`, its payload
 * {"temp_x10": temp * 10, "hot": temp >= 30}, its fields the input's plus
 * `unit = "dC"`.
 */
#include "weir.h"

#include <stdlib.h>
#include <string.h>

static const weir_config_key config_keys[] = {
    {"prefix", "Prepended to the topic, with a /."},
};

const weir_plugin_info weir_plugin = {"conf-map", "0.1.0", WEIR_KIND_MAP, config_keys, 1};

static char *prefix; /* malloc'd, from weir_init */

weir_status weir_init(const char *config_json, size_t len, weir_string *error) {
    weir_json_value root, value;
    size_t n;
    if (weir_json_parse(config_json, len, &root) != WEIR_JSON_OK)
        return weir_error(error, "invalid config: not valid JSON", NULL);
    if (weir_json_get(&root, "prefix", &value) != WEIR_JSON_OK)
        return weir_error(error, "invalid config: missing field `prefix`", NULL);
    if (weir_json_string(&value, &prefix, &n) != WEIR_JSON_OK)
        return weir_error(error, "invalid config: `prefix` is not a string", NULL);
    return WEIR_OK;
}

/* Decimal text of `v` into `buf` (at least 21 bytes); returns its length. */
static size_t format_i64(long long v, char *buf) {
    char tmp[21];
    size_t n = 0, len = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do tmp[n++] = (char)('0' + u % 10); while ((u /= 10) > 0);
    if (v < 0) buf[len++] = '-';
    while (n > 0) buf[len++] = tmp[--n];
    return len;
}

weir_status weir_transform(const weir_message *msg, weir_emitter *out, weir_string *error) {
    weir_json_value root, temp;
    double number;
    long long t;
    char payload[64], topic_buf[512], *topic;
    size_t len, prefix_len = strlen(prefix), topic_len, count = 0, cursor = 0;
    weir_field fields[33], field;

    if (weir_json_parse(msg->payload.ptr, msg->payload.len, &root) != WEIR_JSON_OK)
        return weir_error(error, "payload is not valid JSON", NULL);
    if (weir_json_get(&root, "temp", &temp) != WEIR_JSON_OK)
        return weir_error(error, "field \"temp\" is missing", NULL);
    /* An integer: a number written without fraction or exponent. */
    if (weir_json_number(&temp, &number) != WEIR_JSON_OK || memchr(temp.ptr, '.', temp.len) ||
        memchr(temp.ptr, 'e', temp.len) || memchr(temp.ptr, 'E', temp.len) ||
        number > 9.2e18 || number < -9.2e18)
        return weir_error(error, "field \"temp\" is not an integer", NULL);
    t = (long long)number;

    len = 0;
    memcpy(payload, "{\"temp_x10\":", 12);
    len = 12 + format_i64(t * 10, payload + 12);
    memcpy(payload + len, t >= 30 ? ",\"hot\":true}" : ",\"hot\":false}", t >= 30 ? 12 : 13);
    len += t >= 30 ? 12 : 13;

    topic_len = prefix_len + 1 + msg->topic.len;
    topic = topic_len <= sizeof topic_buf ? topic_buf : malloc(topic_len);
    if (!topic) abort();
    memcpy(topic, prefix, prefix_len);
    topic[prefix_len] = '/';
    memcpy(topic + prefix_len + 1, msg->topic.ptr, msg->topic.len);

    while (count < 32 && weir_message_next_field(msg, &cursor, &field)) fields[count++] = field;
    fields[count].key = weir_str("unit");
    fields[count++].value = weir_str("dC");

    weir_output o = {{topic, topic_len}, {payload, len}, true, fields, count, false, 0};
    weir_emit(out, &o);
    if (topic != topic_buf) free(topic);
    return WEIR_OK;
}
