//! With no agent running, the extension must not change what the app does:
//! same statuses, headers and bodies, and nothing in any log.

use sonde_e2e::{Stack, StackOptions};

const PAGES: &[(&str, &str, &str)] = &[
    ("GET", "/", ""),
    ("GET", "/api/v6/photos?lang=ko&page=1", ""),
    ("GET", "/api/v6/photos?lang=zh&page=3", ""),
    ("GET", "/api/v6/photos/0123456789abcdef0123", ""),
    ("GET", "/no/such/page", ""),
    (
        "POST",
        "/api/v6/signin",
        r#"{"user":"fan2","password":"wrong"}"#,
    ),
    ("GET", "/api/v6/slow?ms=5", ""),
];

/// Status, headers without Date, and body of one page.
type Page = (u16, Vec<(String, String)>, String);

fn capture(stack: &Stack) -> Vec<Page> {
    PAGES
        .iter()
        .map(|(m, u, b)| {
            let r = stack.web(m, u, &[], b).expect("request");
            let headers = r.headers.into_iter().filter(|(k, _)| k != "date").collect();
            (r.status, headers, r.body)
        })
        .collect()
}

#[test]
fn without_an_agent_pages_render_identically_and_nothing_is_logged() {
    let plain = Stack::start(&StackOptions {
        collector: false,
        agent: false,
        extension: false,
        ..Default::default()
    })
    .expect("start php-fpm + nginx without the extension");
    let mut plain = plain;
    let plain_pid = plain.proc("php-fpm").unwrap().pid();
    let maps = std::fs::read_to_string(format!("/proc/{plain_pid}/maps")).unwrap();
    assert!(!maps.contains("libsonde_php.so"));
    let baseline = capture(&plain);
    drop(plain);

    let with_ext = Stack::start(&StackOptions {
        collector: false,
        agent: false,
        extension: true,
        ..Default::default()
    })
    .expect("start php-fpm + nginx with the extension, no agent");
    // The extension really is loaded into php-fpm.
    let mut with_ext = with_ext;
    let fpm_pid = with_ext.proc("php-fpm").unwrap().pid();
    let maps = std::fs::read_to_string(format!("/proc/{fpm_pid}/maps")).unwrap();
    assert!(
        maps.contains("libsonde_php.so"),
        "extension not mapped in php-fpm"
    );
    let observed = capture(&with_ext);
    // Twice, so the "retry connecting later" path is taken too.
    let observed_again = capture(&with_ext);
    assert_eq!(observed, baseline);
    assert_eq!(observed_again, baseline);

    let php_errors = std::fs::read_to_string(with_ext.path("php-errors.log")).unwrap_or_default();
    assert!(php_errors.is_empty(), "PHP logged: {php_errors}");
    let fpm_log = std::fs::read_to_string(with_ext.path("php-fpm-error.log")).unwrap_or_default();
    for line in fpm_log.lines() {
        assert!(
            !line.contains("WARNING")
                && !line.contains("ERROR")
                && !line.to_lowercase().contains("sonde"),
            "php-fpm logged: {line}"
        );
    }
}
