/*
 * threshold: keeps a message when a numeric field of its JSON payload passes
 * a comparison, and drops it otherwise. The C twin of plugins/threshold
 * (Rust): same name, config and messages.
 *
 * Config (all keys required, no others):
 *
 *     { "field": "sensors.temp", "op": ">=", "value": 30 }
 *
 * - `field`: dotted path into the payload; a segment that is a decimal
 *   integer indexes an array (`readings.0.temp`).
 * - `op`: one of >, >=, <, <=, ==, != (the field on the left).
 * - `value`: a number; the comparison is done on doubles.
 *
 * A payload that is not valid JSON, or whose field is missing or not a
 * number, is reported as a failure of that message only. Messages and
 * config errors use the Rust twin's words (`field "temp" is missing`,
 * `invalid config: unknown field `x`, expected one of ...`); only the detail
 * serde_json appends to "payload is not valid JSON" has no C equivalent.
 */
#include "weir.h"

#include <stdlib.h>
#include <string.h>

static const weir_config_key config_keys[] = {
    /* Word for word the Rust twin's, so `weir plugin inspect` shows the same. */
    {"field", "Dotted path to the number in the JSON payload, e.g. \"sensor.temp\"."},
    {"op", "Comparison: one of >, >=, <, <=, ==, !=."},
    {"value", "The number the field is compared with."},
};

const weir_plugin_info weir_plugin = {
    "threshold",
    "0.1.0",
    WEIR_KIND_FILTER,
    config_keys,
    sizeof config_keys / sizeof config_keys[0],
};

typedef enum { GT, GE, LT, LE, EQ, NE } op;

static const char *const op_names[] = {">", ">=", "<", "<=", "==", "!="};

static struct {
    char *field; /* malloc'd */
    op op;
    double value;
} config;

/* Config errors read like the Rust twin's (serde's wording). */
#define PREFIX "invalid config: "
#define KEYS "expected one of `field`, `op`, `value`"
#define OPS "expected one of `>`, `>=`, `<`, `<=`, `==`, `!=`"

static weir_status wrong_type(const weir_json_value *value, const char *expected,
                              weir_string *error) {
    static const char *const found[] = {"null", "boolean", "number", "string", "sequence", "map"};
    return weir_error(error, PREFIX "invalid type: ", found[value->type], ", expected ", expected,
                      NULL);
}

/* Reads a string value into `*out` (malloc'd). */
static weir_status read_string(const weir_json_value *value, char **out, weir_string *error) {
    size_t len;
    if (weir_json_string(value, out, &len) != WEIR_JSON_OK)
        return wrong_type(value, "a string", error);
    if (strlen(*out) != len) {
        free(*out);
        *out = NULL;
        return weir_error(error, PREFIX "a string with NUL is not supported", NULL);
    }
    return WEIR_OK;
}

static weir_status read_op(const weir_json_value *value, op *out, weir_string *error) {
    size_t i, n = sizeof op_names / sizeof op_names[0];
    char *text;
    if (read_string(value, &text, error) != WEIR_OK) return WEIR_ERROR;
    for (i = 0; i < n && strcmp(text, op_names[i]) != 0; i++) continue;
    if (i < n) *out = (op)i;
    else weir_error(error, PREFIX "unknown variant `", text, "`, " OPS, NULL);
    free(text);
    return i < n ? WEIR_OK : WEIR_ERROR;
}

static weir_status read_number(const weir_json_value *value, double *out, weir_string *error) {
    if (weir_json_number(value, out) != WEIR_JSON_OK) return wrong_type(value, "f64", error);
    return WEIR_OK;
}

weir_status weir_init(const char *config_json, size_t len, weir_string *error) {
    weir_json_value root, key, item;
    size_t cursor = 0, name_len;
    char *field = NULL, *name;
    bool have_op = false, have_value = false;
    op parsed_op = GT;
    double value = 0;
    weir_status status = WEIR_OK;

    if (weir_json_parse(config_json, len, &root) != WEIR_JSON_OK)
        return weir_error(error, PREFIX "not valid JSON", NULL);
    if (root.type != WEIR_JSON_OBJECT) return wrong_type(&root, "struct Threshold", error);

    /* Key by key, in order, so the first problem is the one reported. */
    while (status == WEIR_OK && weir_json_next(&root, &cursor, &key, &item)) {
        if (weir_json_string(&key, &name, &name_len) != WEIR_JSON_OK) abort();
        if (strcmp(name, "field") == 0 && !field) {
            status = read_string(&item, &field, error);
        } else if (strcmp(name, "op") == 0 && !have_op) {
            status = read_op(&item, &parsed_op, error);
            have_op = true;
        } else if (strcmp(name, "value") == 0 && !have_value) {
            status = read_number(&item, &value, error);
            have_value = true;
        } else if (strcmp(name, "field") == 0 || strcmp(name, "op") == 0 ||
                   strcmp(name, "value") == 0) {
            status = weir_error(error, PREFIX "duplicate field `", name, "`", NULL);
        } else {
            status = weir_error(error, PREFIX "unknown field `", name, "`, " KEYS, NULL);
        }
        free(name);
    }
    if (status == WEIR_OK && !field) status = weir_error(error, PREFIX "missing field `field`", NULL);
    if (status == WEIR_OK && !have_op) status = weir_error(error, PREFIX "missing field `op`", NULL);
    if (status == WEIR_OK && !have_value)
        status = weir_error(error, PREFIX "missing field `value`", NULL);
    if (status != WEIR_OK) {
        free(field);
        return WEIR_ERROR;
    }
    free(config.field);
    config.field = field;
    config.op = parsed_op;
    config.value = value;
    return WEIR_OK;
}

weir_status weir_filter(const weir_message *msg, bool *keep, weir_string *error) {
    double x, v = config.value;
    switch (weir_json_get_number(msg->payload.ptr, msg->payload.len, config.field, &x)) {
    case WEIR_JSON_OK: break;
    case WEIR_JSON_INVALID:
        return weir_error(error, "cannot read field \"", config.field, "\": payload is not valid JSON", NULL);
    case WEIR_JSON_MISSING: return weir_error(error, "field \"", config.field, "\" is missing", NULL);
    case WEIR_JSON_WRONG_TYPE: return weir_error(error, "field \"", config.field, "\" is not a number", NULL);
    default: return weir_error(error, "out of memory", NULL);
    }
    switch (config.op) {
    case GT: *keep = x > v; break;
    case GE: *keep = x >= v; break;
    case LT: *keep = x < v; break;
    case LE: *keep = x <= v; break;
    case EQ: *keep = x == v; break;
    case NE: *keep = x != v; break;
    }
    return WEIR_OK;
}
