/*
 * conf-sum in C: the conformance aggregate (tests/conformance/README.md).
 * The integer at `field` of each message is counted and summed; a window's
 * result is {"count": n, "sum": s}. Built with the C kit for world
 * `aggregator` (-DWEIR_AGGREGATOR).
 */
#include "weir.h"

#include <stdlib.h>
#include <string.h>

static const weir_config_key config_keys[] = {
    {"field", "Payload field to sum (an integer)."},
};

const weir_plugin_info weir_plugin = {"conf-sum", "0.1.0", WEIR_KIND_AGGREGATE, config_keys, 1};

typedef struct {
    long long count;
    long long sum;
} acc_t;

const size_t weir_acc_size = sizeof(acc_t);

static char *field; /* malloc'd, from weir_init */

weir_status weir_init(const char *config_json, size_t len, weir_string *error) {
    weir_json_value root, value;
    size_t n;
    if (weir_json_parse(config_json, len, &root) != WEIR_JSON_OK)
        return weir_error(error, "invalid config: not valid JSON", NULL);
    if (weir_json_get(&root, "field", &value) != WEIR_JSON_OK)
        return weir_error(error, "invalid config: missing field `field`", NULL);
    if (weir_json_string(&value, &field, &n) != WEIR_JSON_OK)
        return weir_error(error, "invalid config: `field` is not a string", NULL);
    return WEIR_OK;
}

void weir_acc_create(void *acc) {
    (void)acc; /* zeroed by the kit: count 0, sum 0 */
}

weir_status weir_acc_add(void *acc, const weir_message *msg, weir_string *error) {
    acc_t *a = acc;
    weir_json_value root, v;
    double number;
    if (weir_json_parse(msg->payload.ptr, msg->payload.len, &root) != WEIR_JSON_OK)
        return weir_error(error, "payload is not valid JSON", NULL);
    if (weir_json_get(&root, field, &v) != WEIR_JSON_OK)
        return weir_error(error, "field \"", field, "\" is missing", NULL);
    /* An integer: a number written without fraction or exponent. */
    if (weir_json_number(&v, &number) != WEIR_JSON_OK || memchr(v.ptr, '.', v.len) ||
        memchr(v.ptr, 'e', v.len) || memchr(v.ptr, 'E', v.len) || number > 9.2e18 ||
        number < -9.2e18)
        return weir_error(error, "field \"", field, "\" is not an integer", NULL);
    a->count += 1;
    a->sum += (long long)number;
    return WEIR_OK;
}

void weir_acc_merge(void *into, const void *from) {
    acc_t *a = into;
    const acc_t *b = from;
    a->count += b->count;
    a->sum += b->sum;
}

/* Decimal text of `v` at `buf`; returns its length. */
static size_t format_i64(long long v, char *buf) {
    char tmp[21];
    size_t n = 0, len = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do tmp[n++] = (char)('0' + u % 10); while ((u /= 10) > 0);
    if (v < 0) buf[len++] = '-';
    while (n > 0) buf[len++] = tmp[--n];
    return len;
}

weir_status weir_acc_finish(const void *acc, const weir_window *window, weir_string *result,
                            weir_string *error) {
    const acc_t *a = acc;
    char json[80];
    size_t len = 0;
    (void)window;
    (void)error;
    memcpy(json, "{\"count\":", 9);
    len = 9 + format_i64(a->count, json + 9);
    memcpy(json + len, ",\"sum\":", 7);
    len += 7;
    len += format_i64(a->sum, json + len);
    json[len++] = '}';
    weir_string_set(result, json, len);
    return WEIR_OK;
}
