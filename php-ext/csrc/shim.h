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
#include "ext/pdo/php_pdo_driver.h"

/* Layouts the hot path reads in Rust instead of calling a function here
 * (a call into this file is one more cache line to fetch after a hooked
 * call; these are compile-time constants, bound by bindgen). */
enum sonde_layout {
    /* ZEND_CALL_FRAME_SLOT: arguments start this many zvals past the frame. */
    SONDE_CALL_FRAME_SLOT = ZEND_CALL_FRAME_SLOT,
    /* pdo_stmt_t: its zend_object, query text, row count and connection. */
    SONDE_PDO_STMT_STD = offsetof(pdo_stmt_t, std),
    SONDE_PDO_STMT_QUERY = offsetof(pdo_stmt_t, query_string),
    SONDE_PDO_STMT_ROWS = offsetof(pdo_stmt_t, row_count),
    SONDE_PDO_STMT_DBH = offsetof(pdo_stmt_t, database_object_handle),
};

/* ZEND_MODULE_BUILD_ID of the headers we were built against. */
const char *sonde_shim_build_id(void);

/* Registers the sonde.* ini entries. */
int sonde_shim_register_ini(int module_number);
void sonde_shim_unregister_ini(int module_number);

/* The extension's ini settings (Rust: zend::Setting). */
enum sonde_setting {
    SONDE_INI_ENABLED,
    SONDE_INI_APP_NAME,
    SONDE_INI_AGENT_SOCKET,
    SONDE_INI_TRACE_CLI,
    SONDE_INI_REDACT_PARAMS,
    SONDE_INI_PROPAGATE,
    SONDE_INI_SLOW_SQL_MS,
    SONDE_INI_MAX_SPANS,
    SONDE_INI_ENDPOINT_PARAMS,
    SONDE_INI_SCOREBOARD,
    SONDE_INI_CLIENT_IP_HEADER,
    SONDE_INI_VISITOR_COOKIES,
    SONDE_INI_COUNT
};

/* Each setting's current value (see sonde_on_modify in shim.c), read by
 * Rust directly: the string (NULL before start-up) and it as an integer
 * (strtol, base 0, as zend_ini_long). */
extern zend_string *sonde_setting_value[SONDE_INI_COUNT];
extern zend_long sonde_setting_long[SONDE_INI_COUNT];

/* sapi_module.name ("fpm-fcgi", "cli", ...). */
const char *sonde_shim_sapi_name(void);

/* SG(request_info).request_method, may be NULL. */
const char *sonde_shim_request_method(void);

/* SG(request_info).request_uri, may be NULL (the script path under fpm). */
const char *sonde_shim_request_uri(void);

/* SG(request_info).path_translated (the script file), may be NULL. */
const char *sonde_shim_path_translated(void);

/* SG(request_info).query_string, may be NULL. */
const char *sonde_shim_query_string(void);

/* SG(sapi_headers).http_response_code. */
int sonde_shim_response_code(void);

/* Copies the SAPI environment variable `name` (e.g. the FastCGI param
 * REQUEST_URI) into buf (NUL-terminated, truncated to cap-1 bytes).
 * Returns the full length of the value, or -1 when it is not set. */
long sonde_shim_sapi_env(const char *name, char *buf, size_t cap);

/* The PHP functions of the extension's API (sonde_set_transaction_name,
 * sonde_add_attribute, sonde_record_error, sonde_ignore_transaction); their
 * work is done by the Rust functions sonde_rs_*. */
const zend_function_entry *sonde_shim_functions(void);

/* ---- hooking internal functions ---- */

typedef void (*sonde_handler)(zend_execute_data *execute_data, zval *return_value);

/* The internal function `fn_lc` (lower case) of class `class_lc` (lower
 * case), or the plain function when class_lc is NULL; NULL when absent or
 * not internal. */
zend_internal_function *sonde_shim_find_internal(const char *class_lc, const char *fn_lc);

/* zend_get_resource_handle(): an index into zend_internal_function.reserved,
 * or -1 when none is left. */
int sonde_shim_resource_handle(void);

/* The chained post-startup callback (runs after every module's MINIT and
 * before opcache preloads and JIT-compiles scripts). */
void sonde_shim_set_post_startup(zend_result (*cb)(void));
zend_result sonde_shim_call_prev_post_startup(void);

/* The called function's name as declared (e.g. "hGetAll"), and the
 * number of arguments. (Arguments, $this, zvals and pdo_stmt_t fields are
 * read in Rust: zend.rs, with the layouts above.) */
const char *sonde_shim_function_name(zend_execute_data *ex, size_t *len);
uint32_t sonde_shim_num_args(zend_execute_data *ex);

/* The type of a zval after dereferencing a reference. */
int sonde_shim_zval_type(const zval *zv);

/* The exception thrown by the call just made, if any: its class name and
 * message copied (truncated) into the buffers; returns 0 when none. */
int sonde_shim_exception(char *class_buf, size_t class_cap, char *msg_buf, size_t msg_cap);
/* Whether an exception is pending (cheap; no copy). */
int sonde_shim_has_exception(void);
/* The zval a reference holds (ZVAL_DEREF); other zvals as given. */
const zval *sonde_shim_zval_deref(const zval *zv);
/* &EG(exception): where the pending exception is kept (NTS: fixed). */
void **sonde_shim_exception_slot(void);

/* The same for a given exception object. */
int sonde_shim_object_exception(zend_object *ex, char *class_buf, size_t class_cap, char *msg_buf,
                                size_t msg_cap);

/* Errors and exceptions: Rust callbacks run first, then the previous
 * handlers (so a bailout after a fatal error never crosses Rust frames). */
typedef void (*sonde_error_fn)(int type, const char *file, size_t file_len, uint32_t line,
                               const char *msg, size_t msg_len);
typedef void (*sonde_throw_fn)(zend_object *ex);
void sonde_shim_install_error_hooks(sonde_error_fn on_error, sonde_throw_fn on_throw);

/* PDO: the connection's DSN and driver name; 0 when the object is not
 * (yet) usable. */
int sonde_shim_pdo_dbh(zend_object *dbh_obj, const char **dsn, size_t *dsn_len,
                       const char **driver, size_t *driver_len);

/* mysqli: the connection behind a mysqli link, statement or result
 * object (host, port, selected database) and rows: affected rows of the
 * link or statement, or the number of rows of a result. Return 0 when the
 * object is not (or no longer) valid. */
int sonde_shim_mysqli_link(zend_object *link, const char **host, size_t *host_len, uint32_t *port,
                           const char **db, size_t *db_len, int64_t *affected);
int sonde_shim_mysqli_stmt(zend_object *stmt, const char **host, size_t *host_len, uint32_t *port,
                           const char **db, size_t *db_len, int64_t *affected);
int sonde_shim_mysqli_result_rows(zend_object *result, int64_t *rows);

/* curl: the app's CURLOPT_HTTPHEADER list per handle (kept so the trace
 * headers can be added to it, never replacing it), adding `traceparent` and
 * `tracestate` before curl_exec, and reading the effective URL, HTTP status
 * and error after it. Calls PHP's own curl functions; never throws. */
void sonde_shim_curl_remember(zend_object *ch, zval *headers);
void sonde_shim_curl_remember_from_array(zend_object *ch, zval *options);
/* curl_copy_handle: the copy has the headers of the handle it copies. */
void sonde_shim_curl_copied(zend_object *from, zend_object *copy);
void sonde_shim_curl_forget(zend_object *ch);
void sonde_shim_curl_forget_all(void);
int sonde_shim_curl_inject(zval *ch, const char *traceparent, size_t tp_len, const char *tracestate,
                           size_t ts_len);
int sonde_shim_curl_info(zval *ch, char *url, size_t url_cap, int64_t *status, char *error,
                         size_t error_cap, int want_error);
/* CURLINFO_TOTAL_TIME of handle `ch` in seconds, -1 when unknown. */
double sonde_shim_curl_total_time(zval *ch);

/* Memcached: the result code of the object's last operation and its
 * message (getResultCode/getResultMessage); the first of its servers and
 * how many there are (getServerList). Called on the Memcached class's own
 * methods, never when an exception is pending; return 0 when unknown. */
int sonde_shim_memcached_result(zend_object *obj, int64_t *code, char *msg, size_t msg_cap);
int sonde_shim_memcached_server(zend_object *obj, char *host, size_t host_cap, int64_t *port,
                                uint32_t *count);

/* SoapClient: the last response's HTTP headers (kept by PHP only with the
 * client's `trace` option); the fault of its last call; a SoapFault's code
 * and message. Properties read with SoapClient/SoapFault scope, no user
 * code runs. */
int sonde_shim_soap_last_headers(zend_object *client, char *buf, size_t cap);
zend_object *sonde_shim_soap_client_fault(zend_object *client);
int sonde_shim_soap_fault(zend_object *fault, char *code, size_t code_cap, char *msg, size_t msg_cap);
/* EG(exception): the exception the call just made threw, or NULL. */
zend_object *sonde_shim_pending_exception(void);

/* Open database connections: an object's handle and whether it is still
 * the live object with that handle; whether a PDO object is a connected,
 * non-SQLite handle (and persistent); whether a mysqli link is connected;
 * the persistent connections this process holds (PDO, mysqli idle, pgsql). */
uint32_t sonde_shim_object_handle(zend_object *obj);
int sonde_shim_object_alive(zend_object *obj, uint32_t handle);
int sonde_shim_pdo_connection(zend_object *dbh_obj, int *persistent);
int sonde_shim_mysqli_connected(zend_object *link);
uint32_t sonde_shim_persistent_db_connections(void);

/* PHP's http:// and https:// stream wrapper: replaced (in the global
 * wrapper table, at start-up) by a copy whose opener and closer time remote
 * streams, so reading local files never reaches the extension. Returns the
 * number of names wrapped; unwrap restores the original. */
int sonde_shim_wrap_http_streams(void);
void sonde_shim_unwrap_http_streams(void);

#endif
