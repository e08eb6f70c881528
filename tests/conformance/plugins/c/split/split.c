/*
 * conf-split in C: the conformance flat-map (tests/conformance/README.md).
 * `readings` must be an array; each element becomes one message, its
 * payload the element, its topic `<topic>/<index>`.
 */
#include "weir.h"

#include <stdlib.h>
#include <string.h>

const weir_plugin_info weir_plugin = {"conf-split", "0.1.0", WEIR_KIND_FLAT_MAP, NULL, 0};

weir_status weir_init(const char *config_json, size_t len, weir_string *error) {
    weir_json_value root;
    size_t cursor = 0;
    weir_json_value key, item;
    if (weir_json_parse(config_json, len, &root) != WEIR_JSON_OK)
        return weir_error(error, "invalid config: not valid JSON", NULL);
    if (weir_json_next(&root, &cursor, &key, &item))
        return weir_error(error, "invalid config: this plugin takes no keys", NULL);
    return WEIR_OK;
}

weir_status weir_transform(const weir_message *msg, weir_emitter *out, weir_string *error) {
    weir_json_value root, readings, item;
    size_t cursor = 0, index = 0;
    if (weir_json_parse(msg->payload.ptr, msg->payload.len, &root) != WEIR_JSON_OK)
        return weir_error(error, "payload is not valid JSON", NULL);
    if (weir_json_get(&root, "readings", &readings) != WEIR_JSON_OK)
        return weir_error(error, "field \"readings\" is missing", NULL);
    if (readings.type != WEIR_JSON_ARRAY)
        return weir_error(error, "field \"readings\" is not an array", NULL);
    char *topic = malloc(msg->topic.len + 22);
    if (!topic) abort();
    memcpy(topic, msg->topic.ptr, msg->topic.len);
    while (weir_json_next(&readings, &cursor, NULL, &item)) {
        /* "<topic>/<index>" */
        char digits[21];
        size_t n = 0, len = msg->topic.len;
        size_t i = index++;
        do digits[n++] = (char)('0' + i % 10); while ((i /= 10) > 0);
        topic[len++] = '/';
        while (n > 0) topic[len++] = digits[--n];
        weir_output o = {{topic, len}, {item.ptr, item.len}, false, NULL, 0, false, 0};
        weir_emit(out, &o);
    }
    free(topic);
    return WEIR_OK;
}
