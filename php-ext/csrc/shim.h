/* The small C side of sonde-php: what bindgen cannot bind (macros such as
 * SG(), ZEND_MODULE_BUILD_ID, PHP_INI_BEGIN, efree) behind plain functions.
 * It holds no state and no logic. */
#ifndef SONDE_SHIM_H
#define SONDE_SHIM_H

#include <stddef.h>
#include "php.h"
#include "SAPI.h"
#include "ext/standard/info.h"
#include "zend_ini.h"

/* ZEND_MODULE_BUILD_ID of the headers we were built against. */
const char *sonde_shim_build_id(void);

/* Registers the sonde.* ini entries. */
int sonde_shim_register_ini(int module_number);
void sonde_shim_unregister_ini(int module_number);

/* sapi_module.name ("fpm-fcgi", "cli", ...). */
const char *sonde_shim_sapi_name(void);

/* SG(request_info).request_method, may be NULL. */
const char *sonde_shim_request_method(void);

/* SG(request_info).request_uri, may be NULL (the script path under fpm). */
const char *sonde_shim_request_uri(void);

/* SG(request_info).query_string, may be NULL. */
const char *sonde_shim_query_string(void);

/* SG(sapi_headers).http_response_code. */
int sonde_shim_response_code(void);

/* Copies the SAPI environment variable `name` (e.g. the FastCGI param
 * REQUEST_URI) into buf (NUL-terminated, truncated to cap-1 bytes).
 * Returns the full length of the value, or -1 when it is not set. */
long sonde_shim_sapi_env(const char *name, char *buf, size_t cap);

#endif
