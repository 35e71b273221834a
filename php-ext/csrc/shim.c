#include "shim.h"

const char *sonde_shim_build_id(void) { return ZEND_MODULE_BUILD_ID; }

/* No on_modify handlers: values are read by name at request start, which is
 * when php-fpm's per-pool values are visible. */
PHP_INI_BEGIN()
PHP_INI_ENTRY("sonde.enabled", "1", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sonde.app_name", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sonde.agent_socket", "/run/sonde/agent.sock", PHP_INI_SYSTEM | PHP_INI_PERDIR, NULL)
PHP_INI_ENTRY("sonde.trace_cli", "0", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sonde.redact_params", "", PHP_INI_SYSTEM | PHP_INI_PERDIR, NULL)
PHP_INI_END()

int sonde_shim_register_ini(int module_number) {
    int type = MODULE_PERSISTENT;
    return REGISTER_INI_ENTRIES() == SUCCESS ? 0 : -1;
}

void sonde_shim_unregister_ini(int module_number) {
    int type = MODULE_PERSISTENT;
    UNREGISTER_INI_ENTRIES();
}

const char *sonde_shim_sapi_name(void) { return sapi_module.name; }

const char *sonde_shim_request_method(void) { return SG(request_info).request_method; }

const char *sonde_shim_request_uri(void) { return SG(request_info).request_uri; }

const char *sonde_shim_query_string(void) { return SG(request_info).query_string; }

int sonde_shim_response_code(void) { return SG(sapi_headers).http_response_code; }

long sonde_shim_sapi_env(const char *name, char *buf, size_t cap) {
    char *value;
    size_t len;
    if (!sapi_module.getenv) {
        return -1;
    }
    /* sapi_module.getenv returns the SAPI's own storage (not a copy) and does
     * not run input filters, unlike sapi_getenv(). */
    value = sapi_module.getenv(name, strlen(name));
    if (value == NULL) {
        return -1;
    }
    len = strlen(value);
    if (cap > 0) {
        size_t n = len < cap - 1 ? len : cap - 1;
        memcpy(buf, value, n);
        buf[n] = '\0';
    }
    return (long)len;
}
