//! What the extension captures inside a request, seen through the whole
//! real path: PDO against the local MariaDB (SQL spans with normalised
//! statements, rows and instance; fetch spans per result set; a failed
//! statement), all in one transaction.

use std::time::Duration;

use serde_json::Value;
use sonde_e2e::{now_ms, wait_for, Stack, StackOptions};

/// Waits for the one transaction whose URL starts with `url_prefix`.
fn detail_of(stack: &Stack, from: i64, endpoint: &str) -> Value {
    let mut found = None;
    let res = wait_for("the transaction", Duration::from_secs(15), || {
        let v = stack
            .api(&format!(
                "/api/v1/transactions?from={from}&to={}",
                now_ms() + 60_000
            ))
            .unwrap_or(Value::Null);
        found = v["transactions"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["endpoint"] == endpoint).cloned());
        found.is_some()
    });
    if let Err(e) = res {
        panic!("{e}\n{}", stack.logs());
    }
    let id = found.unwrap()["id"].as_str().unwrap().to_string();
    stack.api(&format!("/api/v1/transactions/{id}")).unwrap()
}

#[test]
fn pdo_mysql_statements_and_fetches_are_spans_of_one_transaction() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let tag = std::process::id();
    let r = stack
        .web("GET", &format!("/t/pdo_mysql.php?t={tag}"), &[], "")
        .unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body, stack.logs());
    assert!(r.body.contains("rows=1000 updated=10"), "{}", r.body);

    let d = detail_of(&stack, from, "/t/pdo_mysql.php");
    let t = format!("sonde_e2e_{tag}");
    let spans = d["spans"].as_array().expect("spans");
    let summary: Vec<(String, String, i64, i64)> = spans
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_string(),
                s["statement"].as_str().unwrap_or("").to_string(),
                s["rows"].as_i64().unwrap_or(-1),
                s["calls"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let sql = |stmt: &str, rows: i64| ("sql".to_string(), stmt.replace("{T}", &t), rows, 0);
    let fetch = |stmt: &str, rows: i64, calls: i64| {
        ("fetch".to_string(), stmt.replace("{T}", &t), rows, calls)
    };
    let expected = vec![
        sql("DROP TABLE IF EXISTS {T}", 0),
        sql("CREATE TABLE {T} (id INT PRIMARY KEY, name VARCHAR(?))", 0),
        sql("INSERT INTO {T} (id, name) VALUES (?, ?)", 1),
        sql("INSERT INTO {T} (id, name) VALUES (?, ?)", 1),
        sql("INSERT INTO {T} (id, name) VALUES (?, ?)", 1000),
        sql("SELECT name FROM {T} WHERE id = ?", 1),
        fetch("SELECT name FROM {T} WHERE id = ?", 1, 1),
        sql("SELECT id, name FROM {T} ORDER BY id LIMIT ?", 1000),
        fetch("SELECT id, name FROM {T} ORDER BY id LIMIT ?", 1000, 1),
        sql("SELECT name FROM {T} WHERE id IN (?)", 3),
        fetch("SELECT name FROM {T} WHERE id IN (?)", 3, 4),
        sql("UPDATE {T} SET name = ? WHERE id <= ?", 10),
        sql("SELECT * FROM no_such_table_sonde", 0),
        // The PDOException the app then catches.
        ("error".to_string(), String::new(), -1, 0),
        sql("DROP TABLE {T}", 0),
    ];
    assert_eq!(summary, expected, "{spans:#?}");

    assert_eq!(spans[13]["class"], "PDOException");
    for s in spans[..13].iter().chain(&spans[14..]) {
        assert_eq!(s["db"], "mysql://127.0.0.1:3306/test", "{s}");
        assert!(s["duration_ms"].as_f64().unwrap() >= 0.0);
    }
    let failed = &spans[12];
    let err = failed["error"].as_str().unwrap_or("");
    assert!(
        err.starts_with("PDOException: ") && err.contains("doesn't exist"),
        "{err}"
    );
    assert!(
        spans[..12].iter().all(|s| s.get("error").is_none()),
        "{spans:#?}"
    );
    // Spans are in start order, inside the transaction.
    let starts: Vec<f64> = spans
        .iter()
        .map(|s| s["start_ms"].as_f64().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    let elapsed = d["elapsed_ms"].as_f64().unwrap();
    assert!(starts.iter().all(|s| *s <= elapsed));

    // Totals: 10 statements, fetch time apart from SQL time, rows fetched.
    assert_eq!(d["sql_count"], 11);
    assert_eq!(d["fetch_count"], 1004);
    let sql_ms = d["sql_ms"].as_f64().unwrap();
    let fetch_ms = d["fetch_ms"].as_f64().unwrap();
    assert!(
        sql_ms > 0.0 && fetch_ms > 0.0 && sql_ms + fetch_ms <= elapsed,
        "{d}"
    );
    assert_eq!(
        d["error"],
        Value::Null,
        "a caught exception does not fail the request"
    );
}

/// The extension queues PDO calls and turns them into spans in batches
/// (php-ext/src/later.rs): past the queue's length, its text space, the
/// connections it remembers, and with an exception recorded at once in the
/// middle, every call is still one span, in order, each fetch attributed
/// to its own statement and connection.
#[test]
fn many_pdo_calls_keep_their_order_statements_and_connections() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let tag = std::process::id();
    let r = stack
        .web("GET", &format!("/t/pdo_many.php?t={tag}"), &[], "")
        .unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body, stack.logs());
    assert!(r.body.contains("names=301 rows=15"), "{}", r.body);

    let d = detail_of(&stack, from, "/t/pdo_many.php");
    let t = format!("sonde_many_{tag}");
    let spans = d["spans"].as_array().expect("spans");
    let summary: Vec<(String, String, i64, i64)> = spans
        .iter()
        .map(|s| {
            let statement = s["statement"].as_str().unwrap_or("");
            // The long IN lists are cut (16 KiB kept): compare their start.
            let statement = match statement.find(" IN (") {
                Some(i) => &statement[..i + 5],
                None => statement,
            };
            (
                s["kind"].as_str().unwrap().to_string(),
                statement.to_string(),
                s["rows"].as_i64().unwrap_or(-1),
                s["calls"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let sql = |stmt: &str, rows: i64| ("sql".to_string(), stmt.replace("{T}", &t), rows, 0);
    let fetch = |stmt: &str, rows: i64| ("fetch".to_string(), stmt.replace("{T}", &t), rows, 1);
    let mut expected = vec![
        sql("DROP TABLE IF EXISTS {T}", 0),
        sql("CREATE TABLE {T} (id INT PRIMARY KEY, name VARCHAR(?))", 0),
        sql("INSERT INTO {T} (id, name) VALUES (?, ?)", 3),
    ];
    for i in 0..300 {
        expected.push(sql("SELECT name FROM {T} WHERE id = ?", 1));
        expected.push(fetch("SELECT name FROM {T} WHERE id = ?", 1));
        if i == 150 {
            expected.push(sql("SELECT * FROM no_such_table_sonde", 0));
            expected.push(("error".to_string(), String::new(), -1, 0));
        }
    }
    for _ in 0..5 {
        expected.push(sql("SELECT name FROM {T} WHERE id IN (", 3));
        expected.push(fetch("SELECT name FROM {T} WHERE id IN (", 3));
    }
    expected.push(sql("DROP TABLE {T}", 0));
    assert_eq!(summary.len(), expected.len(), "{summary:#?}");
    for (i, (got, want)) in summary.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "span {i} of {}", summary.len());
    }
    for s in spans.iter().filter(|s| s["kind"] != "error") {
        assert_eq!(s["db"], "mysql://127.0.0.1:3306/test", "{s}");
    }
    let failed = spans
        .iter()
        .find(|s| s["statement"] == "SELECT * FROM no_such_table_sonde")
        .unwrap();
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("PDOException: "),
        "{failed}"
    );
    let starts: Vec<f64> = spans
        .iter()
        .map(|s| s["start_ms"].as_f64().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
}

#[test]
fn mysqli_and_pgsql_statements_and_fetches() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let r = stack.web("GET", "/t/sql_drivers.php", &[], "").unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body, stack.logs());
    assert_eq!(r.body, "b,c 3 false 25 42\n");

    let d = detail_of(&stack, from, "/t/sql_drivers.php");
    let spans = d["spans"].as_array().expect("spans");
    let summary: Vec<(String, String, i64, i64, String)> = spans
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_string(),
                s["statement"].as_str().unwrap_or("").to_string(),
                s["rows"].as_i64().unwrap_or(-1),
                s["calls"].as_i64().unwrap_or(0),
                s["db"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let my = "mysql://127.0.0.1:3306/test";
    let pg = "postgresql://127.0.0.1:5432/test";
    let sql = |stmt: &str, rows: i64, db: &str| {
        ("sql".to_string(), stmt.to_string(), rows, 0, db.to_string())
    };
    let fetch = |stmt: &str, rows: i64, calls: i64, db: &str| {
        (
            "fetch".to_string(),
            stmt.to_string(),
            rows,
            calls,
            db.to_string(),
        )
    };
    let expected = vec![
        sql(
            "CREATE TABLE IF NOT EXISTS sonde_e2e_mysqli (id INT PRIMARY KEY, v VARCHAR(?))",
            0,
            my,
        ),
        sql("DELETE FROM sonde_e2e_mysqli", 3, my),
        sql("INSERT INTO sonde_e2e_mysqli VALUES (?, ?)", 3, my),
        sql("SELECT v FROM sonde_e2e_mysqli WHERE id >= ?", 0, my),
        fetch("SELECT v FROM sonde_e2e_mysqli WHERE id >= ?", 2, 3, my),
        sql("SELECT id FROM sonde_e2e_mysqli ORDER BY id", 3, my),
        fetch("SELECT id FROM sonde_e2e_mysqli ORDER BY id", 3, 1, my),
        sql("SELECT * FROM no_such_table_sonde", 0, my),
        sql("SELECT generate_series(?, ?) AS n", 0, pg),
        fetch("SELECT generate_series(?, ?) AS n", 25, 26, pg),
        sql("SELECT ?::int + ? AS x", 0, pg),
        fetch("SELECT ?::int + ? AS x", 1, 1, pg),
    ];
    // The DELETE's row count depends on what an earlier run left: 0 or 3.
    let mut got = summary.clone();
    if got.get(1).is_some_and(|s| s.2 == 0) {
        got[1].2 = 3;
    }
    assert_eq!(got, expected, "{spans:#?}");
    assert_eq!(spans[7]["error"], "failed (returned false)");
    let libs: Vec<&str> = spans
        .iter()
        .map(|s| s["library"].as_str().unwrap_or(""))
        .collect();
    assert!(
        libs[..8].iter().all(|l| *l == "mysqli") && libs[8..].iter().all(|l| *l == "pgsql"),
        "{libs:?}"
    );
}

#[test]
fn curl_calls_are_external_spans_and_the_callee_joins_the_trace() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let r = stack.web("GET", "/t/caller.php", &[], "").unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body, stack.logs());
    // The app's own header still arrives, next to the trace context.
    assert!(
        r.body
            .starts_with("callee said: x-app=kept traceparent=yes\n"),
        "{}",
        r.body
    );
    assert!(r.body.ends_with("bool(false)\n"), "{}", r.body);

    let caller = detail_of(&stack, from, "/t/caller.php");
    let callee = detail_of(&stack, from, "/t/callee.php");
    let spans = caller["spans"].as_array().unwrap();
    let ext: Vec<&Value> = spans.iter().filter(|s| s["kind"] == "external").collect();
    assert_eq!(ext.len(), 2, "{spans:#?}");
    let port = stack.web_port;
    assert_eq!(
        ext[0]["url"],
        format!("http://127.0.0.1:{port}/t/callee.php"),
        "query dropped"
    );
    assert_eq!(ext[0]["status"], 200);
    assert!(ext[0].get("error").is_none(), "{:?}", ext[0]);
    assert_eq!(ext[1]["url"], "http://127.0.0.1:1/nothing-listens-here");
    assert_eq!(ext[1]["status"], 0);
    assert!(
        ext[1]["error"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("connect"),
        "{:?}",
        ext[1]
    );
    assert_eq!(caller["external_count"], 2);

    // Linked: same trace, and the callee names the caller's transaction.
    assert_eq!(callee["trace_id"], caller["trace_id"], "{callee}");
    assert_eq!(callee["parent_id"], caller["id"], "{callee}");
    // The callee's elapsed time fits inside the caller's external span.
    assert!(callee["elapsed_ms"].as_f64().unwrap() <= ext[0]["duration_ms"].as_f64().unwrap());
}

#[test]
fn curl_handles_reused_copied_and_reset_keep_their_headers_and_one_traceparent() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let r = stack.web("GET", "/t/curl_reuse.php", &[], "").unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body, stack.logs());
    assert_eq!(
        r.body,
        "1 x-app=- traceparent=yes\n\
         2 x-app=- traceparent=yes\n\
         3 x-app=second traceparent=yes\n\
         4 x-app=second traceparent=yes\n\
         5 x-app=third traceparent=yes\n\
         6 x-app=second traceparent=yes\n\
         7 x-app=second traceparent=yes\n\
         8 x-app=- traceparent=yes\n\
         9 40\n\
         10 x-app=1 traceparent=1\n"
    );
    // Every call is an external span of the caller.
    let caller = detail_of(&stack, from, "/t/curl_reuse.php");
    assert_eq!(caller["external_count"], 49, "{caller:#}");
}

#[test]
fn redis_commands_are_cache_spans() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let r = stack.web("GET", "/t/redis.php", &[], "").unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body, stack.logs());
    assert_eq!(r.body, "v1 {\"f\":\"1\"}\n");
    let d = detail_of(&stack, from, "/t/redis.php");
    let spans = d["spans"].as_array().unwrap();
    let ops: Vec<(&str, &str, &str)> = spans
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap(),
                s["operation"].as_str().unwrap_or(""),
                s["db"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let db = "redis://127.0.0.1:6379";
    assert_eq!(
        ops,
        vec![
            ("cache", "SET", db),
            ("cache", "GET", db),
            ("cache", "HSET", db),
            ("cache", "HGETALL", db),
            ("cache", "DEL", db),
        ],
        "{spans:#?}"
    );
}

#[test]
fn the_php_api_names_ignores_and_records_errors() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let r = stack.web("GET", "/t/api.php", &[], "").unwrap();
    // The logs say why, should PHP ever fail here (a CI run once saw
    // nginx's 502 for this request; not reproduced in 80 fresh stacks).
    assert_eq!(
        r.body,
        "bool(true)\nbool(true)\nbool(true)\nbool(true)\nTypeError\n",
        "{}",
        stack.logs()
    );
    let r = stack.web("GET", "/t/api.php?ignore=1", &[], "").unwrap();
    assert_eq!(r.body, "bool(true)\n", "{}", stack.logs());
    // A marker request after both, so the wait below knows both were handled.
    stack.web("GET", "/health?after-api", &[], "").unwrap();
    let d = detail_of(&stack, from, "checkout/confirm");
    assert_eq!(d["url"], "/t/api.php");
    assert_eq!(d["error"]["class"], "DomainException", "{d}");
    assert_eq!(d["error"]["message"], "coupon expired");
    let _ = detail_of(&stack, from, "/health");
    let v = stack
        .api(&format!(
            "/api/v1/transactions?from={from}&to={}",
            now_ms() + 60_000
        ))
        .unwrap();
    let urls: Vec<&str> = v["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        vec!["checkout/confirm", "/health"],
        "the ignored request is not recorded"
    );
    assert_eq!(
        d["attributes"],
        serde_json::json!({"user_tier": "gold", "cart_items": "3"}),
        "{d}"
    );
    // A handled error is shown, but does not fail the request.
    let t = &v["transactions"][0];
    assert_eq!(t["error"], false);
}

#[test]
fn curl_multi_transfers_are_external_spans_linked_to_their_callees() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let r = stack.web("GET", "/t/multi.php", &[], "").unwrap();
    assert_eq!(
        r.body,
        "a: x-app=- traceparent=yes\nb: x-app=- traceparent=yes\n",
        "{}",
        stack.logs()
    );
    let caller = detail_of(&stack, from, "/t/multi.php");
    let ext: Vec<&Value> = caller["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "external")
        .collect();
    assert_eq!(ext.len(), 2, "{caller:#}");
    for e in &ext {
        assert_eq!(
            e["url"],
            format!("http://127.0.0.1:{}/t/callee.php", stack.web_port)
        );
        assert_eq!(e["status"], 200);
        assert!(e["duration_ms"].as_f64().unwrap() > 0.0);
    }
    // Both callees continue the caller's trace and name it as their parent.
    let callees: Vec<Value> = {
        let mut v = Vec::new();
        wait_for("two callee transactions", Duration::from_secs(10), || {
            v = stack
                .api(&format!(
                    "/api/v1/transactions?from={from}&to={}",
                    now_ms() + 60_000
                ))
                .map(|x| {
                    x["transactions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|t| t["endpoint"] == "/t/callee.php")
                        .collect()
                })
                .unwrap_or_default();
            v.len() == 2
        })
        .unwrap();
        v
    };
    for t in callees {
        assert_eq!(t["trace_id"], caller["trace_id"]);
        let d = stack
            .api(&format!(
                "/api/v1/transactions/{}",
                t["id"].as_str().unwrap()
            ))
            .unwrap();
        assert_eq!(d["parent_id"], caller["id"]);
    }
}

#[test]
fn php_http_streams_are_external_spans() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let r = stack.web("GET", "/t/stream.php", &[], "").unwrap();
    assert_eq!(
        r.body,
        "callee said: x-app=- traceparent=no\nlocal ok\nbool(false)\nbool(false)\nfopen ok\n",
        "{}",
        stack.logs()
    );
    let d = detail_of(&stack, from, "/t/stream.php");
    let ext: Vec<(&str, i64, &str, &str)> = d["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "external")
        .map(|s| {
            (
                s["url"].as_str().unwrap(),
                s["status"].as_i64().unwrap_or(-1),
                s["error"].as_str().unwrap_or(""),
                s["library"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let base = format!("http://127.0.0.1:{}/t", stack.web_port);
    let (callee, missing) = (
        format!("{base}/callee.php"),
        format!("{base}/no_such_page.php"),
    );
    let lib = "http-stream";
    assert_eq!(
        ext,
        vec![
            (callee.as_str(), 200, "", lib),
            ("http://127.0.0.1:1/closed", 0, "Connection refused", lib),
            (
                missing.as_str(),
                404,
                "HTTP request failed! HTTP/1.1 404 Not Found",
                lib
            ),
            (callee.as_str(), 200, "", lib),
        ],
        "local files are not external calls: {d:#}"
    );
}

/// A memcached server on a free loopback port for one test (stopped when
/// dropped).
fn start_memcached(stack: &Stack) -> (sonde_e2e::Proc, u16) {
    let port = sonde_e2e::free_port();
    let mut cmd = std::process::Command::new("memcached");
    cmd.args([
        "-l",
        "127.0.0.1",
        "-U",
        "0",
        "-u",
        "root",
        "-p",
        &port.to_string(),
    ]);
    let p = sonde_e2e::Proc::start("memcached", cmd, stack.path("memcached.log"))
        .expect("start memcached (scripts/install-deps.sh installs it)");
    wait_for("memcached", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .unwrap();
    (p, port)
}

#[test]
fn memcached_commands_are_cache_spans() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let (_memcached, port) = start_memcached(&stack);
    let from = now_ms() - 1_000;
    let r = stack
        .web("GET", &format!("/t/memcached.php?port={port}"), &[], "")
        .unwrap();
    assert_eq!(
        r.body,
        "v1 bool(false)\nbool(false)\nbool(false)\nbool(true)\nbool(false)\n",
        "{}",
        stack.logs()
    );
    let d = detail_of(&stack, from, "/t/memcached.php");
    let ops: Vec<(&str, &str, &str, bool, &str)> = d["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap(),
                s["operation"].as_str().unwrap_or(""),
                s["db"].as_str().unwrap_or(""),
                s.get("error").is_some(),
                s["library"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let db = format!("memcached://127.0.0.1:{port}");
    let dead = "memcached://127.0.0.1:1";
    let c = |op, db, err| ("cache", op, db, err, "memcached");
    assert_eq!(
        ops,
        vec![
            c("SET", db.as_str(), false),
            c("GET", db.as_str(), false),
            // A miss and an add of an existing key answer; they do not fail.
            c("GET", db.as_str(), false),
            c("ADD", db.as_str(), false),
            c("INCREMENT", db.as_str(), true),
            c("DELETE", db.as_str(), false),
            c("GET", dead, true),
        ],
        "{d:#}"
    );
    let spans = d["spans"].as_array().unwrap();
    assert!(
        spans[6]["error"]
            .as_str()
            .unwrap_or("")
            .to_uppercase()
            .contains("CONNECT"),
        "{:#}",
        spans[6]
    );
}

#[test]
fn soap_calls_are_external_spans() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let r = stack.web("GET", "/t/soap.php", &[], "").unwrap();
    assert_eq!(
        r.body,
        "5\nfault: the service failed\nreturned SoapFault: Not Found\nfault: HTTP\n",
        "{}",
        stack.logs()
    );
    let d = detail_of(&stack, from, "/t/soap.php");
    let ext: Vec<(&str, &str, i64, &str, &str)> = d["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "external")
        .map(|s| {
            (
                s["url"].as_str().unwrap(),
                s["operation"].as_str().unwrap_or(""),
                s["status"].as_i64().unwrap_or(-1),
                s["error"].as_str().unwrap_or(""),
                s["library"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let base = format!("http://127.0.0.1:{}/t", stack.web_port);
    let (service, missing) = (
        format!("{base}/soap_server.php"),
        format!("{base}/no_such_soap.php"),
    );
    assert_eq!(
        ext,
        vec![
            (service.as_str(), "urn:sonde#add", 200, "", "soap"),
            (
                service.as_str(),
                "urn:sonde#fail",
                500,
                "SOAP-ENV:Server: the service failed",
                "soap"
            ),
            // Traced client: the status read from the response headers.
            (
                missing.as_str(),
                "urn:sonde#add",
                404,
                "HTTP: Not Found",
                "soap"
            ),
            (
                "http://127.0.0.1:1/soap",
                "urn:sonde#add",
                0,
                "HTTP: Could not connect to host",
                "soap"
            ),
        ],
        "{d:#}"
    );
    assert_eq!(d["external_count"], 4);
}

/// The extension issue's acceptance page, every library at once: one
/// transaction whose spans match exactly.
#[test]
fn one_page_using_every_library_is_one_exact_transaction() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let tag = std::process::id();
    let r = stack
        .web("GET", &format!("/t/acceptance.php?t={tag}"), &[], "")
        .unwrap();
    assert_eq!(
        r.body,
        "1000 1000 n5 15 v x-app=- traceparent=yes\n",
        "{}",
        stack.logs()
    );
    let d = detail_of(&stack, from, "/t/acceptance.php");
    let t = format!("sonde_acc_{tag}");
    let got: Vec<(String, String, i64, i64, String)> = d["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_string(),
                s["statement"]
                    .as_str()
                    .or(s["operation"].as_str())
                    .or(s["url"].as_str())
                    .unwrap_or("")
                    .to_string(),
                s["rows"].as_i64().or(s["status"].as_i64()).unwrap_or(-1),
                s["calls"].as_i64().unwrap_or(0),
                s["db"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let my = "mysql://127.0.0.1:3306/test";
    let pg = "postgresql://127.0.0.1:5432/test";
    let rd = "redis://127.0.0.1:6379";
    let e = |kind: &str, what: &str, n: i64, calls: i64, db: &str| {
        (
            kind.to_string(),
            what.replace("{T}", &t),
            n,
            calls,
            db.to_string(),
        )
    };
    let callee = format!("http://127.0.0.1:{}/t/callee.php", stack.web_port);
    let mut expected = vec![
        e("sql", "DROP TABLE IF EXISTS {T}", 0, 1, my),
        e(
            "sql",
            "CREATE TABLE {T} (id INT PRIMARY KEY, name VARCHAR(?))",
            0,
            1,
            my,
        ),
        e(
            "sql",
            "INSERT INTO {T} (id, name) VALUES (?, ?)",
            1000,
            1,
            my,
        ),
        e("sql", "SELECT id, name FROM {T} ORDER BY id", 1000, 1, my),
        e("fetch", "SELECT id, name FROM {T} ORDER BY id", 1000, 1, my),
    ];
    for _ in 0..4 {
        expected.push(e("sql", "UPDATE {T} SET name = ? WHERE id = ?", 1, 1, my));
    }
    expected.extend([
        e("sql", "SELECT COUNT(*) FROM {T}", 1, 1, my),
        e("fetch", "SELECT COUNT(*) FROM {T}", 1, 1, my),
        e("sql", "DELETE FROM {T} WHERE id > ?", 10, 1, my),
        e("sql", "SELECT name FROM {T} WHERE id = ?", 0, 1, my),
        e("fetch", "SELECT name FROM {T} WHERE id = ?", 1, 2, my),
        e("sql", "SELECT generate_series(?, ?) AS n", 0, 1, pg),
        e("fetch", "SELECT generate_series(?, ?) AS n", 5, 6, pg),
        e("cache", "SET", -1, 1, rd),
        e("cache", "GET", -1, 1, rd),
        e("external", &callee, 200, 1, ""),
        e("sql", "DROP TABLE {T}", 0, 1, my),
    ]);
    // Calls are only shown on fetch spans; elsewhere compare without them.
    let norm =
        |v: Vec<(String, String, i64, i64, String)>| -> Vec<(String, String, i64, i64, String)> {
            v.into_iter()
                .map(|(k, w, n, c, db)| {
                    let c = if k == "fetch" { c } else { 0 };
                    (k, w, n, c, db)
                })
                .collect()
        };
    assert_eq!(norm(got), norm(expected), "{d:#}");
    assert_eq!(d["sql_count"], 13);
    assert_eq!(d["fetch_count"], 1007);
    assert!(d["fetch_ms"].as_f64().unwrap() > 0.0 && d["sql_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(d["external_count"], 1);
    // The callee carries the caller's trace.
    let callee_tx = detail_of(&stack, from, "/t/callee.php");
    assert_eq!(callee_tx["trace_id"], d["trace_id"]);
    assert_eq!(callee_tx["parent_id"], d["id"]);
}

/// A statement slower than `sonde.slow_sql_ms` (100 ms) carries the PHP
/// file and line that issued it; a fast one does not.
#[test]
fn slow_sql_names_its_php_file_and_line() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let r = stack.web("GET", "/t/sleep_sql.php?s=1", &[], "").unwrap();
    assert_eq!(r.body, "slept 1\n");
    let d = detail_of(&stack, from, "/t/sleep_sql.php");
    let sql = &d["spans"][0];
    assert_eq!(sql["statement"], "SELECT SLEEP(?)", "{d:#}");
    assert!(
        sql["file"]
            .as_str()
            .unwrap_or("")
            .ends_with("tests/php/sleep_sql.php"),
        "{sql}"
    );
    assert_eq!(sql["line"], 7, "{sql}");
}

/// `sonde.endpoint_params` keeps a routing query parameter in the endpoint
/// name (CONTRACT: `index.php?r=site/login`); other parameters are dropped.
#[test]
fn a_routing_query_parameter_names_the_endpoint() {
    let stack = Stack::start(&StackOptions {
        fpm_pool: vec!["php_admin_value[sonde.endpoint_params] = r".into()],
        ..Default::default()
    })
    .expect("start the stack");
    let from = now_ms() - 1_000;
    let r = stack
        .web("GET", "/t/callee.php?id=42&r=site/login", &[], "")
        .unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body, stack.logs());
    let d = detail_of(&stack, from, "/t/callee.php?r=site/login");
    assert_eq!(d["url"], "/t/callee.php?id=42&r=site/login");
}
