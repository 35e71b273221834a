//! Failed requests: an uncaught exception, a framework-handled exception
//! answered with 500, and a fatal error (memory exhausted, which bails out
//! of PHP mid-request) each still produce a record carrying the error.

use std::time::Duration;

use serde_json::Value;
use sonde_e2e::{now_ms, wait_for, Stack, StackOptions};

#[test]
fn failures_are_recorded_with_class_and_message() {
    let stack = Stack::start(&StackOptions::default()).expect("start the stack");
    let from = now_ms() - 1_000;
    let cases = [
        ("uncaught", 500),
        ("caught500", 500),
        ("fatal", 500),
        ("warning", 200),
    ];
    for (case, status) in cases {
        let r = stack
            .web("GET", &format!("/t/errors.php?case={case}"), &[], "")
            .unwrap();
        assert_eq!(r.status, status, "{case}: {}", r.body);
    }
    let mut txs: Vec<Value> = Vec::new();
    let res = wait_for("4 transactions", Duration::from_secs(15), || {
        txs = stack
            .api(&format!(
                "/api/v1/transactions?from={from}&to={}",
                now_ms() + 60_000
            ))
            .map(|v| v["transactions"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
        txs.len() >= 4
    });
    if let Err(e) = res {
        panic!("{e}: {txs:#?}\n{}", stack.logs());
    }
    assert_eq!(txs.len(), 4);
    let detail = |case: &str| -> Value {
        let t = txs
            .iter()
            .find(|t| {
                let id = t["id"].as_str().unwrap();
                let d = stack.api(&format!("/api/v1/transactions/{id}")).unwrap();
                d["url"] == format!("/t/errors.php?case={case}")
            })
            .unwrap_or_else(|| panic!("no transaction for {case}: {txs:#?}"));
        assert_eq!(t["error"], case != "warning", "{case}: {t}");
        stack
            .api(&format!(
                "/api/v1/transactions/{}",
                t["id"].as_str().unwrap()
            ))
            .unwrap()
    };

    let d = detail("uncaught");
    assert_eq!(d["error"]["class"], "DemoFailure", "{d}");
    assert_eq!(d["error"]["message"], "the demo failed");
    assert!(
        d["spans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "error" && s["class"] == "DemoFailure"),
        "{d}"
    );

    let d = detail("caught500");
    assert_eq!(d["status"], 500);
    assert_eq!(d["error"]["class"], "LogicException", "{d}");
    assert_eq!(d["error"]["message"], "handled but fatal for the response");

    let d = detail("fatal");
    assert_eq!(d["error"]["class"], "E_ERROR", "{d}");
    let msg = d["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Allowed memory size of 8388608 bytes exhausted"),
        "{msg}"
    );

    let d = detail("warning");
    assert!(d["error"].is_null(), "{d}");
    assert_eq!(d["warnings"], 2, "two warnings raised: {d}");
    assert_eq!(detail("uncaught")["warnings"], 0);
}
