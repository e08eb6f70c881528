/*
 * {{name}}: a weir filter. Keeps a message when its payload's `temp` is at
 * least `min`; a payload without a numeric `temp` fails that message only.
 * The kit's API is documented in weir/weir.h.
 */
#include "weir.h"

#include <stdlib.h>
#include <string.h>

static const weir_config_key config_keys[] = {
    {"min", "Lowest temperature kept."},
};

const weir_plugin_info weir_plugin = {"{{name}}", "0.1.0", WEIR_KIND_FILTER, config_keys, 1};

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

weir_status weir_filter(const weir_message *msg, bool *keep, weir_string *error) {
    double temp;
    switch (weir_json_get_number(msg->payload.ptr, msg->payload.len, "temp", &temp)) {
    case WEIR_JSON_OK:
        *keep = temp >= min;
        return WEIR_OK;
    case WEIR_JSON_MISSING:
        return weir_error(error, "\"temp\" is missing", NULL);
    case WEIR_JSON_WRONG_TYPE:
        return weir_error(error, "\"temp\" is not a number", NULL);
    default:
        return weir_error(error, "the payload is not valid JSON", NULL);
    }
}
