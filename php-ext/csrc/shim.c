#include "shim.h"
#include <dlfcn.h>
#include "zend_exceptions.h"
#include "zend_extensions.h"
#include "ext/pdo/php_pdo_driver.h"
#include "ext/mysqli/php_mysqli_structs.h"
#include "ext/standard/file.h"

const char *sonde_shim_build_id(void) { return ZEND_MODULE_BUILD_ID; }

/* ---- the PHP API ---- */

/* Implemented in Rust (module.rs). Each returns 1 when a request is traced. */
extern int sonde_rs_set_name(const char *name, size_t len);
extern int sonde_rs_add_attribute(const char *key, size_t key_len, const char *value, size_t value_len);
extern int sonde_rs_record_error(zend_object *error);
extern int sonde_rs_ignore(void);

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_sonde_set_transaction_name, 0, 1, _IS_BOOL, 0)
    ZEND_ARG_TYPE_INFO(0, name, IS_STRING, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_sonde_add_attribute, 0, 2, _IS_BOOL, 0)
    ZEND_ARG_TYPE_INFO(0, key, IS_STRING, 0)
    ZEND_ARG_TYPE_MASK(0, value, MAY_BE_STRING | MAY_BE_LONG | MAY_BE_DOUBLE | MAY_BE_BOOL, NULL)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_sonde_record_error, 0, 1, _IS_BOOL, 0)
    ZEND_ARG_OBJ_INFO(0, error, Throwable, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_sonde_ignore_transaction, 0, 0, _IS_BOOL, 0)
ZEND_END_ARG_INFO()

static PHP_FUNCTION(sonde_set_transaction_name) {
    zend_string *name;
    ZEND_PARSE_PARAMETERS_START(1, 1)
        Z_PARAM_STR(name)
    ZEND_PARSE_PARAMETERS_END();
    RETURN_BOOL(sonde_rs_set_name(ZSTR_VAL(name), ZSTR_LEN(name)));
}

static PHP_FUNCTION(sonde_add_attribute) {
    zend_string *key, *value;
    zval *zv;
    int ok;
    ZEND_PARSE_PARAMETERS_START(2, 2)
        Z_PARAM_STR(key)
        Z_PARAM_ZVAL(zv)
    ZEND_PARSE_PARAMETERS_END();
    value = zval_get_string(zv);
    ok = sonde_rs_add_attribute(ZSTR_VAL(key), ZSTR_LEN(key), ZSTR_VAL(value), ZSTR_LEN(value));
    zend_string_release(value);
    RETURN_BOOL(ok);
}

static PHP_FUNCTION(sonde_record_error) {
    zval *error;
    ZEND_PARSE_PARAMETERS_START(1, 1)
        Z_PARAM_OBJECT_OF_CLASS(error, zend_ce_throwable)
    ZEND_PARSE_PARAMETERS_END();
    RETURN_BOOL(sonde_rs_record_error(Z_OBJ_P(error)));
}

static PHP_FUNCTION(sonde_ignore_transaction) {
    ZEND_PARSE_PARAMETERS_NONE();
    RETURN_BOOL(sonde_rs_ignore());
}

static const zend_function_entry sonde_functions[] = {
    PHP_FE(sonde_set_transaction_name, arginfo_sonde_set_transaction_name)
    PHP_FE(sonde_add_attribute, arginfo_sonde_add_attribute)
    PHP_FE(sonde_record_error, arginfo_sonde_record_error)
    PHP_FE(sonde_ignore_transaction, arginfo_sonde_ignore_transaction)
    PHP_FE_END
};

const zend_function_entry *sonde_shim_functions(void) { return sonde_functions; }

/* Each setting's current value, kept by its on_modify handler (called at
 * start-up, for php-fpm's per-pool values, per-directory values, ini_set and
 * their restore at request end): a request reads its settings from these
 * two small arrays instead of looking each entry up and parsing it, and
 * touches a few cache lines instead of a dozen scattered ones. The strings
 * are the entries' own values, alive until the next change. */
zend_string *sonde_setting_value[SONDE_INI_COUNT];
zend_long sonde_setting_long[SONDE_INI_COUNT];

static ZEND_INI_MH(sonde_on_modify) {
    uintptr_t i = (uintptr_t)mh_arg1;
    (void)entry, (void)mh_arg2, (void)mh_arg3, (void)stage;
    if (i < SONDE_INI_COUNT) {
        sonde_setting_value[i] = new_value;
        sonde_setting_long[i] = new_value ? ZEND_STRTOL(ZSTR_VAL(new_value), NULL, 0) : 0;
    }
    return SUCCESS;
}

#define SONDE_INI(name, def, modifiable, setting) \
    PHP_INI_ENTRY1(name, def, modifiable, sonde_on_modify, (void *)(uintptr_t)(setting))

PHP_INI_BEGIN()
SONDE_INI("sonde.enabled", "1", PHP_INI_ALL, SONDE_INI_ENABLED)
SONDE_INI("sonde.app_name", "", PHP_INI_ALL, SONDE_INI_APP_NAME)
SONDE_INI("sonde.agent_socket", "/run/sonde/agent.sock", PHP_INI_SYSTEM | PHP_INI_PERDIR, SONDE_INI_AGENT_SOCKET)
SONDE_INI("sonde.trace_cli", "0", PHP_INI_ALL, SONDE_INI_TRACE_CLI)
SONDE_INI("sonde.redact_params", "", PHP_INI_SYSTEM | PHP_INI_PERDIR, SONDE_INI_REDACT_PARAMS)
SONDE_INI("sonde.propagate", "1", PHP_INI_ALL, SONDE_INI_PROPAGATE)
SONDE_INI("sonde.slow_sql_ms", "100", PHP_INI_ALL, SONDE_INI_SLOW_SQL_MS)
SONDE_INI("sonde.max_spans", "2000", PHP_INI_SYSTEM, SONDE_INI_MAX_SPANS)
SONDE_INI("sonde.endpoint_params", "", PHP_INI_SYSTEM | PHP_INI_PERDIR, SONDE_INI_ENDPOINT_PARAMS)
SONDE_INI("sonde.scoreboard", "", PHP_INI_SYSTEM, SONDE_INI_SCOREBOARD)
SONDE_INI("sonde.client_ip_header", "", PHP_INI_SYSTEM | PHP_INI_PERDIR, SONDE_INI_CLIENT_IP_HEADER)
SONDE_INI("sonde.visitor_cookies", "PHPSESSID,laravel_session,ci_session", PHP_INI_SYSTEM | PHP_INI_PERDIR,
          SONDE_INI_VISITOR_COOKIES)
PHP_INI_END()

int sonde_shim_register_ini(int module_number) {
    int type = MODULE_PERSISTENT;
    return REGISTER_INI_ENTRIES() == SUCCESS ? 0 : -1;
}

void sonde_shim_unregister_ini(int module_number) {
    int type = MODULE_PERSISTENT;
    UNREGISTER_INI_ENTRIES();
    memset(sonde_setting_value, 0, sizeof(sonde_setting_value));
    memset(sonde_setting_long, 0, sizeof(sonde_setting_long));
}

const char *sonde_shim_sapi_name(void) { return sapi_module.name; }

const char *sonde_shim_request_method(void) { return SG(request_info).request_method; }

const char *sonde_shim_request_uri(void) { return SG(request_info).request_uri; }

const char *sonde_shim_query_string(void) { return SG(request_info).query_string; }

const char *sonde_shim_path_translated(void) { return SG(request_info).path_translated; }

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

/* ---- hooking internal functions ---- */

zend_internal_function *sonde_shim_find_internal(const char *class_lc, const char *fn_lc) {
    HashTable *table = CG(function_table);
    zend_function *fn;
    if (class_lc) {
        zend_class_entry *ce = zend_hash_str_find_ptr(CG(class_table), class_lc, strlen(class_lc));
        if (!ce || ce->type != ZEND_INTERNAL_CLASS) {
            return NULL;
        }
        table = &ce->function_table;
    }
    fn = zend_hash_str_find_ptr(table, fn_lc, strlen(fn_lc));
    if (!fn || fn->type != ZEND_INTERNAL_FUNCTION) {
        return NULL;
    }
    return &fn->internal_function;
}

int sonde_shim_resource_handle(void) { return zend_get_resource_handle("sonde"); }

static zend_result (*prev_post_startup)(void) = NULL;

void sonde_shim_set_post_startup(zend_result (*cb)(void)) {
    prev_post_startup = zend_post_startup_cb;
    zend_post_startup_cb = cb;
}

zend_result sonde_shim_call_prev_post_startup(void) {
    return prev_post_startup ? prev_post_startup() : SUCCESS;
}

const char *sonde_shim_function_name(zend_execute_data *ex, size_t *len) {
    zend_string *name = ex->func ? ex->func->common.function_name : NULL;
    if (!name) {
        *len = 0;
        return "";
    }
    *len = ZSTR_LEN(name);
    return ZSTR_VAL(name);
}

uint32_t sonde_shim_num_args(zend_execute_data *ex) { return ZEND_CALL_NUM_ARGS(ex); }

static const zval *deref(const zval *zv) {
    if (zv && Z_TYPE_P(zv) == IS_REFERENCE) {
        return Z_REFVAL_P(zv);
    }
    return zv;
}

int sonde_shim_zval_type(const zval *zv) { zv = deref(zv); return zv ? Z_TYPE_P(zv) : IS_UNDEF; }

static void copy_out(char *buf, size_t cap, const char *src, size_t len) {
    size_t n;
    if (cap == 0) {
        return;
    }
    n = len < cap - 1 ? len : cap - 1;
    memcpy(buf, src, n);
    buf[n] = '\0';
}

int sonde_shim_has_exception(void) { return EG(exception) != NULL; }

const zval *sonde_shim_zval_deref(const zval *zv) { return deref(zv); }

void **sonde_shim_exception_slot(void) { return (void **)&EG(exception); }

int sonde_shim_exception(char *class_buf, size_t class_cap, char *msg_buf, size_t msg_cap) {
    return sonde_shim_object_exception(EG(exception), class_buf, class_cap, msg_buf, msg_cap);
}

int sonde_shim_object_exception(zend_object *ex, char *class_buf, size_t class_cap, char *msg_buf,
                                size_t msg_cap) {
    zval *msg, rv;
    if (!ex) {
        return 0;
    }
    copy_out(class_buf, class_cap, ZSTR_VAL(ex->ce->name), ZSTR_LEN(ex->ce->name));
    /* The declared `message` property, read without calling user code. */
    msg = zend_read_property_ex(zend_ce_exception == ex->ce || instanceof_function(ex->ce, zend_ce_exception)
                                    ? zend_ce_exception : zend_ce_error,
                                ex, ZSTR_KNOWN(ZEND_STR_MESSAGE), /* silent */ 1, &rv);
    if (msg && Z_TYPE_P(msg) == IS_STRING) {
        copy_out(msg_buf, msg_cap, Z_STRVAL_P(msg), Z_STRLEN_P(msg));
    } else {
        copy_out(msg_buf, msg_cap, "", 0);
    }
    return 1;
}

int sonde_shim_pdo_dbh(zend_object *dbh_obj, const char **dsn, size_t *dsn_len,
                       const char **driver, size_t *driver_len) {
    pdo_dbh_t *dbh;
    if (!dbh_obj) {
        return 0;
    }
    dbh = php_pdo_dbh_fetch_inner(dbh_obj);
    if (!dbh || !dbh->driver) {
        return 0;
    }
    *dsn = dbh->data_source ? dbh->data_source : "";
    *dsn_len = dbh->data_source ? dbh->data_source_len : 0;
    *driver = dbh->driver->driver_name;
    *driver_len = dbh->driver->driver_name_len;
    return 1;
}

static void (*prev_error_cb)(int, zend_string *, const uint32_t, zend_string *) = NULL;
static void (*prev_throw_hook)(zend_object *) = NULL;
static sonde_error_fn rust_on_error = NULL;
static sonde_throw_fn rust_on_throw = NULL;

static void sonde_error_cb(int type, zend_string *file, const uint32_t line, zend_string *message) {
    rust_on_error(type, file ? ZSTR_VAL(file) : "", file ? ZSTR_LEN(file) : 0, line,
                  ZSTR_VAL(message), ZSTR_LEN(message));
    prev_error_cb(type, file, line, message);
}

static void sonde_throw_hook(zend_object *ex) {
    rust_on_throw(ex);
    if (prev_throw_hook) {
        prev_throw_hook(ex);
    }
}

void sonde_shim_install_error_hooks(sonde_error_fn on_error, sonde_throw_fn on_throw) {
    if (prev_error_cb || !zend_error_cb) {
        return;
    }
    rust_on_error = on_error;
    rust_on_throw = on_throw;
    prev_error_cb = zend_error_cb;
    zend_error_cb = sonde_error_cb;
    prev_throw_hook = zend_throw_exception_hook;
    zend_throw_exception_hook = sonde_throw_hook;
}

/* ---- mysqli (mysqlnd) ---- */

static void *mysqli_resource(zend_object *obj) {
    mysqli_object *intern;
    MYSQLI_RESOURCE *r;
    if (!obj) {
        return NULL;
    }
    intern = php_mysqli_fetch_object(obj);
    r = (MYSQLI_RESOURCE *)intern->ptr;
    if (!r || r->status < MYSQLI_STATUS_VALID) {
        return NULL;
    }
    return r->ptr;
}

static int64_t signed_rows(uint64_t n) { return n == (uint64_t)-1 ? 0 : (int64_t)n; }

static int conn_info(MYSQLND_CONN_DATA *d, const char **host, size_t *host_len, uint32_t *port,
                     const char **db, size_t *db_len) {
    if (!d) {
        return 0;
    }
    *host = d->hostname.s ? d->hostname.s : "";
    *host_len = d->hostname.s ? d->hostname.l : 0;
    *port = d->port;
    *db = d->connect_or_select_db.s ? d->connect_or_select_db.s : "";
    *db_len = d->connect_or_select_db.s ? d->connect_or_select_db.l : 0;
    return 1;
}

int sonde_shim_mysqli_link(zend_object *link, const char **host, size_t *host_len, uint32_t *port,
                           const char **db, size_t *db_len, int64_t *affected) {
    MY_MYSQL *m = (MY_MYSQL *)mysqli_resource(link);
    if (!m || !m->mysql || !m->mysql->data) {
        return 0;
    }
    *affected = signed_rows(mysqlnd_affected_rows(m->mysql));
    return conn_info(m->mysql->data, host, host_len, port, db, db_len);
}

int sonde_shim_mysqli_stmt(zend_object *stmt, const char **host, size_t *host_len, uint32_t *port,
                           const char **db, size_t *db_len, int64_t *affected) {
    MY_STMT *s = (MY_STMT *)mysqli_resource(stmt);
    if (!s || !s->stmt || !s->stmt->data) {
        return 0;
    }
    *affected = signed_rows(mysqlnd_stmt_affected_rows(s->stmt));
    return conn_info(s->stmt->data->conn, host, host_len, port, db, db_len);
}

int sonde_shim_mysqli_result_rows(zend_object *result, int64_t *rows) {
    MYSQL_RES *r = (MYSQL_RES *)mysqli_resource(result);
    if (!r) {
        return 0;
    }
    *rows = signed_rows(mysqlnd_num_rows(r));
    return 1;
}

/* ---- curl ---- */

#define SONDE_CURLOPT_HTTPHEADER 10023
#define SONDE_CURLINFO_EFFECTIVE_URL 0x100001
#define SONDE_CURLINFO_RESPONSE_CODE 0x200002
#define CURL_SLOTS 64

static struct {
    zend_object *ch;
    zval headers;
} curl_slots[CURL_SLOTS];
static int curl_next_slot = 0;
static int curl_injecting = 0;
/* Slots filled since the last forget_all: most requests remember none. */
static int curl_slots_used = 0;

#define CURL_ARENA_BYTES 32768

struct sonde_slist { /* libcurl's struct curl_slist */
    char *data;
    struct sonde_slist *next;
};

/* The lists handed to libcurl this request. libcurl reads a list only
 * while it builds a request, and keeps the pointer; curl_copy_handle
 * copies the pointer. So nothing in the arena is reused before the request
 * ends (every handle is gone by then), except the list a handle re-runs
 * with, rewritten in place when it is the newest one. Full: PHP's path. */
static union {
    struct sonde_slist align;
    char bytes[CURL_ARENA_BYTES];
} curl_arena;
static size_t curl_arena_top = 0;
static zend_object *curl_arena_last_ch = NULL;
static size_t curl_arena_last_start = 0;

/* The slot remembering handle `ch`'s headers, -1 when none (a handle has
 * one slot at most: remembering forgets first). */
static int curl_slot_of(zend_object *ch) {
    int i;
    if (!curl_slots_used || !ch) {
        return -1; /* nothing remembered in this request (the usual case) */
    }
    for (i = 0; i < CURL_SLOTS; i++) {
        if (curl_slots[i].ch == ch) {
            return i;
        }
    }
    return -1;
}

void sonde_shim_curl_forget(zend_object *ch) {
    int i = curl_slot_of(ch);
    if (i >= 0) {
        zval_ptr_dtor(&curl_slots[i].headers);
        ZVAL_UNDEF(&curl_slots[i].headers);
        curl_slots[i].ch = NULL;
    }
}

void sonde_shim_curl_forget_all(void) {
    int i;
    /* Every handle is gone or idle for good: the arena starts over. */
    curl_arena_top = 0;
    curl_arena_last_ch = NULL;
    curl_arena_last_start = 0;
    if (!curl_slots_used) {
        return;
    }
    curl_slots_used = 0;
    for (i = 0; i < CURL_SLOTS; i++) {
        if (curl_slots[i].ch) {
            zval_ptr_dtor(&curl_slots[i].headers);
            ZVAL_UNDEF(&curl_slots[i].headers);
            curl_slots[i].ch = NULL;
        }
    }
    curl_next_slot = 0;
}

void sonde_shim_curl_remember(zend_object *ch, zval *headers) {
    int i, slot = -1;
    if (curl_injecting || !ch || !headers) {
        return;
    }
    ZVAL_DEREF(headers);
    sonde_shim_curl_forget(ch);
    if (Z_TYPE_P(headers) != IS_ARRAY) {
        return;
    }
    for (i = 0; i < CURL_SLOTS; i++) {
        if (!curl_slots[i].ch) {
            slot = i;
            break;
        }
    }
    if (slot < 0) {
        slot = curl_next_slot;
        curl_next_slot = (curl_next_slot + 1) % CURL_SLOTS;
        zval_ptr_dtor(&curl_slots[slot].headers);
    }
    curl_slots[slot].ch = ch;
    ZVAL_COPY(&curl_slots[slot].headers, headers);
    curl_slots_used = 1;
}

void sonde_shim_curl_remember_from_array(zend_object *ch, zval *options) {
    zval *h;
    if (!options) {
        return;
    }
    ZVAL_DEREF(options);
    if (Z_TYPE_P(options) != IS_ARRAY) {
        return;
    }
    h = zend_hash_index_find(Z_ARRVAL_P(options), SONDE_CURLOPT_HTTPHEADER);
    if (h) {
        sonde_shim_curl_remember(ch, h);
    }
}

void sonde_shim_curl_copied(zend_object *from, zend_object *copy) {
    int i = curl_slot_of(from);
    if (i >= 0 && copy) {
        sonde_shim_curl_remember(copy, &curl_slots[i].headers);
    }
}

static int is_trace_header(zend_string *line) {
    return (ZSTR_LEN(line) >= 12 && strncasecmp(ZSTR_VAL(line), "traceparent:", 12) == 0) ||
           (ZSTR_LEN(line) >= 11 && strncasecmp(ZSTR_VAL(line), "tracestate:", 11) == 0);
}

/* Calls PHP's own `name` (an internal function, looked up once per
 * process: a call by name would hash the name every time). */
static int call2(const char *name, zend_function **cache, zval *a, zval *b, zval *c, uint32_t argc,
                 zval *ret) {
    zval args[3];
    ZVAL_UNDEF(ret);
    if (!*cache) {
        *cache = zend_hash_str_find_ptr(CG(function_table), name, strlen(name));
        if (!*cache) {
            return 0;
        }
    }
    ZVAL_COPY_VALUE(&args[0], a);
    if (argc > 1) ZVAL_COPY_VALUE(&args[1], b);
    if (argc > 2) ZVAL_COPY_VALUE(&args[2], c);
    zend_call_known_function(*cache, NULL, NULL, ret, argc, args, NULL);
    if (EG(exception)) {
        /* Callers check none was pending: this one is ours, not the app's. */
        zend_clear_exception();
        zval_ptr_dtor(ret);
        ZVAL_UNDEF(ret);
        return 0;
    }
    return Z_TYPE_P(ret) != IS_UNDEF;
}

static zend_function *fn_curl_setopt, *fn_curl_getinfo, *fn_curl_error;

/* `name` followed by `value`, as a new string (no printf machinery). */
static zend_string *header_line(const char *name, size_t name_len, const char *value, size_t len) {
    zend_string *s = zend_string_alloc(name_len + len, 0);
    memcpy(ZSTR_VAL(s), name, name_len);
    memcpy(ZSTR_VAL(s) + name_len, value, len);
    ZSTR_VAL(s)[name_len + len] = '\0';
    return s;
}

/* ---- curl, straight through libcurl ----
 *
 * Going through PHP's curl_setopt to add the trace header means building
 * a PHP array of the app's headers, a call frame, PHP turning the array
 * into a malloc'd curl_slist, and freeing the previous one: per call.
 * Instead the list is built in a per-process arena and handed to libcurl's
 * own curl_easy_setopt, and curl_easy_getinfo reads the URL and status
 * without PHP strings. Both are resolved from the process (PHP loads
 * curl.so, and with it libcurl, RTLD_GLOBAL); the CURL handle is the first
 * member of PHP's curl object, found through the object handlers' offset
 * (the same arithmetic PHP's own curl_from_obj does; `cp` has been the
 * first member since PHP 5). When any of that is missing, the calls go
 * through PHP's functions as before. */

#define SONDE_CURLINFO_TOTAL_TIME 0x300003

typedef int (*sonde_curl_easy_fn)(void *curl, int option, ...);
static sonde_curl_easy_fn lc_setopt, lc_getinfo;
static zend_class_entry **curl_ce_ptr;
static int curl_direct = 0; /* 0 not looked up yet, 1 usable, -1 not */

static void *curl_easy_of(zval *ch) {
    zend_object *obj;
    uint32_t offset;
    if (curl_direct == 0) {
        void *self = dlopen(NULL, RTLD_LAZY);
        curl_direct = -1;
        if (self) {
            lc_setopt = (sonde_curl_easy_fn)dlsym(self, "curl_easy_setopt");
            lc_getinfo = (sonde_curl_easy_fn)dlsym(self, "curl_easy_getinfo");
            curl_ce_ptr = (zend_class_entry **)dlsym(self, "curl_ce");
            if (lc_setopt && lc_getinfo && curl_ce_ptr) {
                curl_direct = 1;
            }
        }
    }
    if (curl_direct != 1 || !ch || Z_TYPE_P(ch) != IS_OBJECT) {
        return NULL;
    }
    obj = Z_OBJ_P(ch);
    offset = obj->handlers->offset;
    if (!*curl_ce_ptr || obj->ce != *curl_ce_ptr || offset < sizeof(void *)) {
        return NULL;
    }
    return *(void **)((char *)obj - offset);
}

static char *arena_line(size_t *top, const char *a, size_t a_len, const char *b, size_t b_len) {
    char *s = curl_arena.bytes + *top;
    memcpy(s, a, a_len);
    memcpy(s + a_len, b, b_len);
    s[a_len + b_len] = '\0';
    *top += a_len + b_len + 1;
    return s;
}

/* The app's remembered headers (minus trace headers), then ours, as a list
 * in the arena handed to libcurl. 0 when it does not fit or cannot be set. */
static int curl_inject_direct(void *cp, zend_object *obj, zval *app, const char *traceparent,
                              size_t tp_len, const char *tracestate, size_t ts_len) {
    size_t lines = 1 + (ts_len ? 1 : 0), bytes = 13 + tp_len + 1 + (ts_len ? 12 + ts_len + 1 : 0);
    size_t start, top, i = 0;
    struct sonde_slist *nodes;
    zval *line;
    if (app) {
        ZEND_HASH_FOREACH_VAL(Z_ARRVAL_P(app), line) {
            ZVAL_DEREF(line);
            if (Z_TYPE_P(line) != IS_STRING) {
                return 0; /* PHP's path converts it as PHP would */
            }
            if (!is_trace_header(Z_STR_P(line))) {
                lines++;
                bytes += Z_STRLEN_P(line) + 1;
            }
        } ZEND_HASH_FOREACH_END();
    }
    start = (curl_arena_top + sizeof(void *) - 1) & ~(sizeof(void *) - 1); /* nodes aligned */
    if (obj == curl_arena_last_ch) {
        start = curl_arena_last_start; /* its own newest list: rewrite it */
    }
    if (lines * sizeof(struct sonde_slist) + bytes > CURL_ARENA_BYTES - start) {
        return 0;
    }
    nodes = (struct sonde_slist *)(curl_arena.bytes + start);
    top = start + lines * sizeof(struct sonde_slist);
    if (app) {
        ZEND_HASH_FOREACH_VAL(Z_ARRVAL_P(app), line) {
            ZVAL_DEREF(line);
            if (!is_trace_header(Z_STR_P(line))) {
                nodes[i++].data = arena_line(&top, Z_STRVAL_P(line), Z_STRLEN_P(line), "", 0);
            }
        } ZEND_HASH_FOREACH_END();
    }
    nodes[i++].data = arena_line(&top, "traceparent: ", 13, traceparent, tp_len);
    if (ts_len) {
        nodes[i++].data = arena_line(&top, "tracestate: ", 12, tracestate, ts_len);
    }
    for (i = 0; i + 1 < lines; i++) {
        nodes[i].next = &nodes[i + 1];
    }
    nodes[lines - 1].next = NULL;
    curl_arena_top = top;
    curl_arena_last_ch = obj;
    curl_arena_last_start = start;
    return lc_setopt(cp, SONDE_CURLOPT_HTTPHEADER, (void *)nodes) == 0;
}

int sonde_shim_curl_inject(zval *ch, const char *traceparent, size_t tp_len, const char *tracestate,
                           size_t ts_len) {
    zval arr, opt, ret, *line, *app = NULL;
    void *cp;
    int slot, ok;
    if (!ch || Z_TYPE_P(ch) != IS_OBJECT || EG(exception)) {
        return 0;
    }
    slot = curl_slot_of(Z_OBJ_P(ch));
    if (slot >= 0) {
        app = &curl_slots[slot].headers;
    }
    cp = curl_easy_of(ch);
    if (cp && curl_inject_direct(cp, Z_OBJ_P(ch), app, traceparent, tp_len, tracestate, ts_len)) {
        return 1;
    }
    array_init(&arr);
    if (app) {
        ZEND_HASH_FOREACH_VAL(Z_ARRVAL_P(app), line) {
            ZVAL_DEREF(line);
            if (Z_TYPE_P(line) == IS_STRING) {
                if (!is_trace_header(Z_STR_P(line))) {
                    add_next_index_str(&arr, zend_string_copy(Z_STR_P(line)));
                }
            } else if (Z_TYPE_P(line) >= IS_NULL && Z_TYPE_P(line) <= IS_DOUBLE) { /* scalars, as PHP converts them */
                add_next_index_str(&arr, zval_get_string(line));
            }
        } ZEND_HASH_FOREACH_END();
    }
    add_next_index_str(&arr, header_line("traceparent: ", 13, traceparent, tp_len));
    if (ts_len) { /* only the caller's own members, when it sent some */
        add_next_index_str(&arr, header_line("tracestate: ", 12, tracestate, ts_len));
    }
    ZVAL_LONG(&opt, SONDE_CURLOPT_HTTPHEADER);
    curl_injecting = 1;
    ok = call2("curl_setopt", &fn_curl_setopt, ch, &opt, &arr, 3, &ret);
    curl_injecting = 0;
    zval_ptr_dtor(&ret);
    zval_ptr_dtor(&arr);
    return ok;
}

int sonde_shim_curl_info(zval *ch, char *url, size_t url_cap, int64_t *status, char *error,
                         size_t error_cap, int want_error) {
    zval opt, ret;
    void *cp;
    if (!ch || Z_TYPE_P(ch) != IS_OBJECT || EG(exception)) {
        return 0;
    }
    copy_out(url, url_cap, "", 0);
    copy_out(error, error_cap, "", 0);
    *status = 0;
    cp = curl_easy_of(ch);
    if (cp) {
        char *u = NULL;
        long code = 0;
        if (lc_getinfo(cp, SONDE_CURLINFO_EFFECTIVE_URL, &u) == 0 && u) {
            copy_out(url, url_cap, u, strlen(u));
        }
        if (lc_getinfo(cp, SONDE_CURLINFO_RESPONSE_CODE, &code) == 0) {
            *status = (int64_t)code;
        }
    } else {
        ZVAL_LONG(&opt, SONDE_CURLINFO_EFFECTIVE_URL);
        if (call2("curl_getinfo", &fn_curl_getinfo, ch, &opt, NULL, 2, &ret)) {
            if (Z_TYPE(ret) == IS_STRING) {
                copy_out(url, url_cap, Z_STRVAL(ret), Z_STRLEN(ret));
            }
            zval_ptr_dtor(&ret);
        }
        ZVAL_LONG(&opt, SONDE_CURLINFO_RESPONSE_CODE);
        if (call2("curl_getinfo", &fn_curl_getinfo, ch, &opt, NULL, 2, &ret)) {
            if (Z_TYPE(ret) == IS_LONG) {
                *status = (int64_t)Z_LVAL(ret);
            }
            zval_ptr_dtor(&ret);
        }
    }
    if (want_error && call2("curl_error", &fn_curl_error, ch, NULL, NULL, 1, &ret)) {
        if (Z_TYPE(ret) == IS_STRING) {
            copy_out(error, error_cap, Z_STRVAL(ret), Z_STRLEN(ret));
        }
        zval_ptr_dtor(&ret);
    }
    return 1;
}

double sonde_shim_curl_total_time(zval *ch) {
    zval opt, ret;
    double t = -1.0;
    void *cp;
    if (!ch || Z_TYPE_P(ch) != IS_OBJECT || EG(exception)) {
        return t;
    }
    cp = curl_easy_of(ch);
    if (cp) {
        return lc_getinfo(cp, SONDE_CURLINFO_TOTAL_TIME, &t) == 0 ? t : -1.0;
    }
    ZVAL_LONG(&opt, SONDE_CURLINFO_TOTAL_TIME);
    if (call2("curl_getinfo", &fn_curl_getinfo, ch, &opt, NULL, 2, &ret)) {
        if (Z_TYPE(ret) == IS_DOUBLE) {
            t = Z_DVAL(ret);
        }
        zval_ptr_dtor(&ret);
    }
    return t;
}

/* ---- PHP's http:// and https:// stream wrapper ---- */

/* Implemented in Rust (plugins/http_stream.rs). */
extern uint64_t sonde_rs_stream_open(const char *url, size_t url_len);
extern void sonde_rs_stream_opened(uint64_t start, php_stream *stream, const char *url, size_t url_len,
                                   int status, const char *error, size_t error_len);
extern void sonde_rs_stream_closed(php_stream *stream);

static const php_stream_wrapper *orig_http_wrapper = NULL;
static php_stream_wrapper_ops sonde_http_ops;
static php_stream_wrapper sonde_http_wrapper;

/* "HTTP/1.1 404 Not Found" anywhere in `s` (of `len` bytes): 404, else 0. */
static int http_status_in(const char *s, size_t len) {
    size_t i;
    for (i = 0; i + 12 <= len; i++) {
        if (memcmp(s + i, "HTTP/", 5) == 0) {
            const char *sp = memchr(s + i, ' ', len - i);
            if (sp && sp + 4 <= s + len && sp[1] >= '1' && sp[1] <= '5' && sp[2] >= '0' &&
                sp[2] <= '9' && sp[3] >= '0' && sp[3] <= '9') {
                return (sp[1] - '0') * 100 + (sp[2] - '0') * 10 + (sp[3] - '0');
            }
        }
    }
    return 0;
}

/* The last status line in the response headers the wrapper keeps (after
 * redirects, the final response's). */
static int http_status_of(php_stream *stream) {
    zval *line;
    int status = 0;
    if (Z_TYPE(stream->wrapperdata) != IS_ARRAY) {
        return 0;
    }
    ZEND_HASH_FOREACH_VAL(Z_ARRVAL(stream->wrapperdata), line) {
        if (Z_TYPE_P(line) == IS_STRING && Z_STRLEN_P(line) >= 12 &&
            strncmp(Z_STRVAL_P(line), "HTTP/", 5) == 0) {
            status = http_status_in(Z_STRVAL_P(line), Z_STRLEN_P(line));
        }
    } ZEND_HASH_FOREACH_END();
    return status;
}

/* The last error the wrapper logged for this open (shown by PHP as the
 * "Failed to open stream" warning right after we return). */
static const char *last_wrapper_error(php_stream_wrapper *wrapper) {
    zend_llist *list;
    char **msg;
    if (!FG(wrapper_errors)) {
        return NULL;
    }
    list = zend_hash_str_find_ptr(FG(wrapper_errors), (const char *)&wrapper, sizeof(wrapper));
    if (!list) {
        return NULL;
    }
    msg = (char **)zend_llist_get_last(list);
    return msg ? *msg : NULL;
}

static php_stream *sonde_http_opener(php_stream_wrapper *wrapper, const char *path, const char *mode,
                                     int options, zend_string **opened_path,
                                     php_stream_context *context STREAMS_DC) {
    size_t path_len = strlen(path);
    uint64_t start = sonde_rs_stream_open(path, path_len);
    php_stream *stream = orig_http_wrapper->wops->stream_opener(wrapper, path, mode, options, opened_path,
                                                                 context STREAMS_REL_CC);
    if (start) {
        int status = 0;
        const char *err = NULL;
        size_t err_len = 0;
        if (stream) {
            status = http_status_of(stream);
        } else {
            err = last_wrapper_error(wrapper);
            if (err) {
                err_len = strlen(err);
                while (err_len > 0 && (err[err_len - 1] == '\n' || err[err_len - 1] == '\r')) {
                    err_len--;
                }
                status = http_status_in(err, err_len);
            } else {
                err = "failed to open";
                err_len = strlen(err);
            }
        }
        sonde_rs_stream_opened(start, stream, path, path_len, status, err, err_len);
    }
    return stream;
}

static int sonde_http_closer(php_stream_wrapper *wrapper, php_stream *stream) {
    sonde_rs_stream_closed(stream);
    return orig_http_wrapper->wops->stream_closer ? orig_http_wrapper->wops->stream_closer(wrapper, stream) : 0;
}

int sonde_shim_wrap_http_streams(void) {
    HashTable *wrappers = php_stream_get_url_stream_wrappers_hash_global();
    const char *names[] = {"http", "https"};
    int i, wrapped = 0;
    if (!wrappers) {
        return 0;
    }
    for (i = 0; i < 2; i++) {
        zval *zv = zend_hash_str_find(wrappers, names[i], strlen(names[i]));
        php_stream_wrapper *w = zv ? (php_stream_wrapper *)Z_PTR_P(zv) : NULL;
        if (!w || w == &sonde_http_wrapper || !w->wops || !w->wops->stream_opener) {
            wrapped += w == &sonde_http_wrapper;
            continue;
        }
        if (!orig_http_wrapper) {
            orig_http_wrapper = w;
            sonde_http_ops = *w->wops;
            sonde_http_ops.stream_opener = sonde_http_opener;
            sonde_http_ops.stream_closer = sonde_http_closer;
            sonde_http_wrapper = *w;
            sonde_http_wrapper.wops = &sonde_http_ops;
        }
        /* Only PHP's own http wrapper (https shares it); anything else
         * registered under these names is left alone. */
        if (w == orig_http_wrapper) {
            Z_PTR_P(zv) = &sonde_http_wrapper;
            wrapped++;
        }
    }
    return wrapped;
}

void sonde_shim_unwrap_http_streams(void) {
    HashTable *wrappers = php_stream_get_url_stream_wrappers_hash_global();
    const char *names[] = {"http", "https"};
    int i;
    if (!wrappers || !orig_http_wrapper) {
        return;
    }
    for (i = 0; i < 2; i++) {
        zval *zv = zend_hash_str_find(wrappers, names[i], strlen(names[i]));
        if (zv && Z_PTR_P(zv) == &sonde_http_wrapper) {
            Z_PTR_P(zv) = (void *)orig_http_wrapper;
        }
    }
}

/* ---- calling an internal class's own methods, reading its properties ---- */

/* The internal class `class_lc` (cached in *cache), NULL when not loaded. */
static zend_class_entry *internal_class(const char *class_lc, zend_class_entry **cache) {
    if (!*cache) {
        zend_class_entry *ce = zend_hash_str_find_ptr(CG(class_table), class_lc, strlen(class_lc));
        if (!ce || ce->type != ZEND_INTERNAL_CLASS) {
            return NULL;
        }
        *cache = ce;
    }
    return *cache;
}

/* Calls the internal class's own method `method_lc` (never an override in a
 * user subclass) on `obj` without arguments. Only when no exception is
 * pending; one the call raises is cleared, so the app never sees it. */
static int call_own_method(zend_object *obj, zend_class_entry *ce, const char *method_lc, zval *ret) {
    zend_function *fn;
    ZVAL_UNDEF(ret);
    if (!obj || !ce || EG(exception) || !instanceof_function(obj->ce, ce)) {
        return 0;
    }
    fn = zend_hash_str_find_ptr(&ce->function_table, method_lc, strlen(method_lc));
    if (!fn) {
        return 0;
    }
    zend_call_known_instance_method(fn, obj, ret, 0, NULL);
    if (EG(exception)) {
        zend_clear_exception();
        zval_ptr_dtor(ret);
        ZVAL_UNDEF(ret);
        return 0;
    }
    return Z_TYPE_P(ret) != IS_UNDEF;
}

/* A property of `obj` as declared by the internal class `ce` (read with
 * its scope, so private ones too; no user code runs). NULL when absent. */
static zval *own_property(zend_object *obj, zend_class_entry *ce, const char *name, zval *rv) {
    if (!obj || !ce || !instanceof_function(obj->ce, ce)) {
        return NULL;
    }
    return zend_read_property(ce, obj, name, strlen(name), /* silent */ 1, rv);
}

/* ---- Memcached ---- */

static zend_class_entry *memcached_ce;

int sonde_shim_memcached_result(zend_object *obj, int64_t *code, char *msg, size_t msg_cap) {
    zval ret;
    zend_class_entry *ce = internal_class("memcached", &memcached_ce);
    if (!call_own_method(obj, ce, "getresultcode", &ret)) {
        return 0;
    }
    *code = Z_TYPE(ret) == IS_LONG ? (int64_t)Z_LVAL(ret) : 0;
    zval_ptr_dtor(&ret);
    copy_out(msg, msg_cap, "", 0);
    if (msg_cap > 0 && call_own_method(obj, ce, "getresultmessage", &ret)) {
        if (Z_TYPE(ret) == IS_STRING) {
            copy_out(msg, msg_cap, Z_STRVAL(ret), Z_STRLEN(ret));
        }
        zval_ptr_dtor(&ret);
    }
    return 1;
}

int sonde_shim_memcached_server(zend_object *obj, char *host, size_t host_cap, int64_t *port, uint32_t *count) {
    zval ret, *first, *h, *p;
    int ok = 0;
    if (!call_own_method(obj, internal_class("memcached", &memcached_ce), "getserverlist", &ret)) {
        return 0;
    }
    if (Z_TYPE(ret) == IS_ARRAY && (first = zend_hash_index_find(Z_ARRVAL(ret), 0)) != NULL &&
        Z_TYPE_P(first) == IS_ARRAY) {
        *count = zend_hash_num_elements(Z_ARRVAL(ret));
        h = zend_hash_str_find(Z_ARRVAL_P(first), "host", 4);
        p = zend_hash_str_find(Z_ARRVAL_P(first), "port", 4);
        if (h && Z_TYPE_P(h) == IS_STRING) {
            copy_out(host, host_cap, Z_STRVAL_P(h), Z_STRLEN_P(h));
            *port = (p && Z_TYPE_P(p) == IS_LONG) ? (int64_t)Z_LVAL_P(p) : 0;
            ok = 1;
        }
    }
    zval_ptr_dtor(&ret);
    return ok;
}

/* ---- SoapClient ---- */

static zend_class_entry *soapclient_ce, *soapfault_ce;

int sonde_shim_soap_last_headers(zend_object *client, char *buf, size_t cap) {
    zval rv, *v = own_property(client, internal_class("soapclient", &soapclient_ce),
                               "__last_response_headers", &rv);
    if (!v || Z_TYPE_P(v) != IS_STRING) {
        return 0;
    }
    copy_out(buf, cap, Z_STRVAL_P(v), Z_STRLEN_P(v));
    return 1;
}

int sonde_shim_soap_fault(zend_object *fault, char *code, size_t code_cap, char *msg, size_t msg_cap) {
    zval rv1, rv2, *c, *m;
    zend_class_entry *ce = internal_class("soapfault", &soapfault_ce);
    c = own_property(fault, ce, "faultcode", &rv1);
    m = own_property(fault, ce, "faultstring", &rv2);
    if (!c && !m) {
        return 0;
    }
    copy_out(code, code_cap, "", 0);
    copy_out(msg, msg_cap, "", 0);
    if (c && Z_TYPE_P(c) == IS_STRING) {
        copy_out(code, code_cap, Z_STRVAL_P(c), Z_STRLEN_P(c));
    }
    if (m && Z_TYPE_P(m) == IS_STRING) {
        copy_out(msg, msg_cap, Z_STRVAL_P(m), Z_STRLEN_P(m));
    }
    return 1;
}

zend_object *sonde_shim_soap_client_fault(zend_object *client) {
    zval rv, *v = own_property(client, internal_class("soapclient", &soapclient_ce), "__soap_fault", &rv);
    return (v && Z_TYPE_P(v) == IS_OBJECT) ? Z_OBJ_P(v) : NULL;
}

zend_object *sonde_shim_pending_exception(void) { return EG(exception); }

/* ---- open database connections ---- */

uint32_t sonde_shim_object_handle(zend_object *obj) { return obj ? obj->handle : 0; }

int sonde_shim_object_alive(zend_object *obj, uint32_t handle) {
    zend_object *bucket;
    if (!obj || handle >= EG(objects_store).top) {
        return 0;
    }
    bucket = EG(objects_store).object_buckets[handle];
    return IS_OBJ_VALID(bucket) && bucket == obj && !(OBJ_FLAGS(obj) & IS_OBJ_FREE_CALLED);
}

int sonde_shim_pdo_connection(zend_object *dbh_obj, int *persistent) {
    pdo_dbh_t *dbh;
    if (!dbh_obj) {
        return 0;
    }
    dbh = php_pdo_dbh_fetch_inner(dbh_obj);
    if (!dbh || !dbh->driver || dbh->is_closed) {
        return 0;
    }
    *persistent = dbh->is_persistent;
    /* SQLite is a file, not a connection to a server. */
    return strcmp(dbh->driver->driver_name, "sqlite") != 0;
}

int sonde_shim_mysqli_connected(zend_object *link) {
    MY_MYSQL *m = (MY_MYSQL *)mysqli_resource(link);
    return m && m->mysql ? 1 : 0;
}

static int le_ppdo = -1, le_pmysqli = -1, le_ppgsql = -1;

uint32_t sonde_shim_persistent_db_connections(void) {
    zend_resource *le;
    uint32_t n = 0;
    if (le_ppdo < 0) {
        le_ppdo = zend_fetch_list_dtor_id("PDO persistent database");
        le_pmysqli = zend_fetch_list_dtor_id("MySqli persistent connection");
        le_ppgsql = zend_fetch_list_dtor_id("pgsql link persistent");
    }
    ZEND_HASH_FOREACH_PTR(&EG(persistent_list), le) {
        if (!le || !le->ptr) {
            continue;
        }
        if (le_ppdo > 0 && le->type == le_ppdo) {
            pdo_dbh_t *dbh = le->ptr;
            n += dbh->driver && strcmp(dbh->driver->driver_name, "sqlite") != 0;
        } else if (le_pmysqli > 0 && le->type == le_pmysqli) {
            /* Idle persistent links; those in use belong to live objects. */
            n += (uint32_t)((mysqli_plist_entry *)le->ptr)->free_links.top;
        } else if (le_ppgsql > 0 && le->type == le_ppgsql) {
            n++;
        }
    } ZEND_HASH_FOREACH_END();
    return n;
}
