/*
 * {{name}}: a weir flat-map. One message per element of `readings`, on
 * topic <topic>/<index>, with payload {"temp": element}. The kit's API is
 * documented in weir/weir.h.
 */
#include "weir.h"

#include <stdlib.h>
#include <string.h>

const weir_plugin_info weir_plugin = {"{{name}}", "0.1.0", WEIR_KIND_FLAT_MAP, NULL, 0};

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

weir_status weir_transform(const weir_message *msg, weir_emitter *out, weir_string *error) {
    weir_json_value root, readings, item;
    size_t cursor = 0, index = 0;
    char *topic, *payload;

    if (weir_json_parse(msg->payload.ptr, msg->payload.len, &root) != WEIR_JSON_OK)
        return weir_error(error, "the payload is not valid JSON", NULL);
    if (weir_json_get(&root, "readings", &readings) != WEIR_JSON_OK)
        return weir_error(error, "\"readings\" is missing", NULL);
    if (readings.type != WEIR_JSON_ARRAY)
        return weir_error(error, "\"readings\" is not an array", NULL);

    /* "<topic>/<index>": room for a slash and 20 digits. */
    topic = malloc(msg->topic.len + 22);
    /* {"temp":<element>}: the element's JSON text as it is. */
    payload = malloc(readings.len + 10);
    if (!topic || !payload) abort();
    memcpy(topic, msg->topic.ptr, msg->topic.len);
    memcpy(payload, "{\"temp\":", 8);
    while (weir_json_next(&readings, &cursor, NULL, &item)) {
        char digits[20];
        size_t n = 0, topic_len = msg->topic.len, i = index++;
        do digits[n++] = (char)('0' + i % 10); while ((i /= 10) > 0);
        topic[topic_len++] = '/';
        while (n > 0) topic[topic_len++] = digits[--n];
        memcpy(payload + 8, item.ptr, item.len);
        payload[8 + item.len] = '}';

        /* Unset fields and timestamp are the input's. */
        weir_output output = {{topic, topic_len}, {payload, item.len + 9}, false, NULL, 0, false, 0};
        weir_emit(out, &output);
    }
    free(topic);
    free(payload);
    return WEIR_OK;
}
