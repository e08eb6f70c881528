/*
 * {{name}}: a weir map. Adds `hot` (temp >= min) to each JSON payload; a
 * payload without a numeric `temp` fails that message only. The kit's API
 * is documented in weir/weir.h.
 */
#include "weir.h"

#include <stdlib.h>
#include <string.h>

static const weir_config_key config_keys[] = {
    {"min", "Temperature from which a reading is hot."},
};

const weir_plugin_info weir_plugin = {"{{name}}", "0.1.0", WEIR_KIND_MAP, config_keys, 1};

static double min; /* from weir_init */

/* The config table: `min`, a number, and no other key. */
weir_status weir_init(const char *config_json, size_t len, weir_string *error) {
    weir_json_value root, key, value;
    size_t cursor = 0, n;
    char *name;
    if (weir_json_parse(config_json, len, &root) != WEIR_JSON_OK)
        return weir_error(error, "invalid config: not valid JSON", NULL);
    while (weir_json_next(&root, &cursor, &key, &value)) {
        if (weir_json_string(&key, &name, &n) != WEIR_JSON_OK) abort();
        if (strcmp(name, "min") != 0) {
            weir_error(error, "invalid config: unknown key `", name, "`, expected `min`", NULL);
            free(name);
            return WEIR_ERROR;
        }
        free(name);
    }
    if (weir_json_get(&root, "min", &value) != WEIR_JSON_OK)
        return weir_error(error, "invalid config: missing key `min`", NULL);
    if (weir_json_number(&value, &min) != WEIR_JSON_OK)
        return weir_error(error, "invalid config: `min` is not a number", NULL);
    return WEIR_OK;
}

weir_status weir_transform(const weir_message *msg, weir_emitter *out, weir_string *error) {
    weir_json_value root, key, value;
    double temp;
    size_t cursor = 0, len;
    bool empty;
    const char *hot;
    char *payload;

    if (weir_json_parse(msg->payload.ptr, msg->payload.len, &root) != WEIR_JSON_OK)
        return weir_error(error, "the payload is not valid JSON", NULL);
    if (root.type != WEIR_JSON_OBJECT)
        return weir_error(error, "the payload is not a JSON object", NULL);
    if (weir_json_get(&root, "temp", &value) != WEIR_JSON_OK)
        return weir_error(error, "\"temp\" is missing", NULL);
    if (weir_json_number(&value, &temp) != WEIR_JSON_OK)
        return weir_error(error, "\"temp\" is not a number", NULL);

    /* The payload's object with `"hot":…` added last (the last of two equal
     * keys wins, so it replaces a `hot` the payload already has). */
    empty = !weir_json_next(&root, &cursor, &key, &value);
    hot = temp >= min ? "\"hot\":true}" : "\"hot\":false}";
    payload = malloc(root.len + strlen(hot) + 1);
    if (!payload) abort();
    len = root.len - 1; /* without the closing brace */
    memcpy(payload, root.ptr, len);
    if (!empty) payload[len++] = ',';
    memcpy(payload + len, hot, strlen(hot));
    len += strlen(hot);

    /* An unset topic, fields or timestamp is the input's. */
    weir_output output = {{NULL, 0}, {payload, len}, false, NULL, 0, false, 0};
    weir_emit(out, &output);
    free(payload);
    return WEIR_OK;
}
