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

/// Every hooked function returns, throws and warns exactly as without the
/// extension (php-cli, with CLI tracing on so every hook records).
#[test]
fn hooked_functions_behave_identically() {
    let script = sonde_e2e::repo_root().join("tests/php/behaviour.php");
    // The script's memcached server and SOAP service (PHP's built-in web
    // server, without the extension), on free loopback ports.
    let dir = tempfile::tempdir().unwrap();
    let mc_port = sonde_e2e::free_port();
    let mut mc = std::process::Command::new("memcached");
    mc.args([
        "-l",
        "127.0.0.1",
        "-U",
        "0",
        "-u",
        "root",
        "-p",
        &mc_port.to_string(),
    ]);
    let _memcached = sonde_e2e::Proc::start("memcached", mc, dir.path().join("memcached.log"))
        .expect("start memcached (scripts/install-deps.sh installs it)");
    let soap_port = sonde_e2e::free_port();
    let mut soap = std::process::Command::new("php");
    soap.arg("-S")
        .arg(format!("127.0.0.1:{soap_port}"))
        .arg("-t")
        .arg(sonde_e2e::repo_root().join("tests/php"));
    let _soap = sonde_e2e::Proc::start("php -S", soap, dir.path().join("soap.log")).unwrap();
    for port in [mc_port, soap_port] {
        sonde_e2e::wait_for("a test server", std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .unwrap();
    }
    let soap_url = format!("http://127.0.0.1:{soap_port}/soap_server.php");
    let run = |with: bool| {
        let mut cmd = std::process::Command::new("php");
        cmd.env("SONDE_MEMCACHED_PORT", mc_port.to_string())
            .env("SONDE_SOAP_URL", &soap_url);
        if with {
            let so = sonde_e2e::artifact("libsonde_php.so").unwrap();
            cmd.arg("-d")
                .arg(format!("extension={}", so.display()))
                .args([
                    "-d",
                    "sonde.trace_cli=1",
                    "-d",
                    "sonde.agent_socket=/nonexistent/agent.sock",
                ]);
        }
        let out = cmd
            .args(["-d", "display_errors=stderr"])
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (out_without, err_without) = run(false);
    let (out_with, err_with) = run(true);
    assert!(out_without.ends_with("done\n"), "{out_without}");
    assert!(out_without.lines().count() > 100, "{out_without}");
    assert_eq!(out_with, out_without);
    assert_eq!(err_with, err_without);
    // The script really went through the hooks.
    let so = sonde_e2e::artifact("libsonde_php.so").unwrap();
    let ri = std::process::Command::new("php")
        .arg("-d")
        .arg(format!("extension={}", so.display()))
        .args(["--ri", "sonde"])
        .output()
        .unwrap();
    let ri = String::from_utf8_lossy(&ri.stdout);
    for f in [
        "pdo::query",
        "pdo::__construct",
        "mysqli::query",
        "mysqli::real_connect",
        "pg_query",
        "pg_close",
        "curl_exec",
        "curl_copy_handle",
        "redis::get",
        "memcached::get",
        "memcached::increment",
        "soapclient::__dorequest",
        "soapclient::__soapcall",
        "http:// and https:// stream wrapper",
    ] {
        assert!(ri.contains(f), "{f} not hooked: {ri}");
    }
}
