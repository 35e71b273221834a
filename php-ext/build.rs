//! Binds the PHP headers that `php-config` reports and compiles the C shim.
//!
//! PHP version differences become named cfgs (declared with
//! `rustc-check-cfg`) instead of version numbers scattered through the code:
//! - `php_zts`: a thread-safe (ZTS) build; the extension stays inert there
//!   for now (Debian and most distributions ship NTS).
//! - `php_observer_cheap`: PHP >= 8.4, where registering an observer no longer
//!   re-initialises every internal function's run-time cache per request.
//! - `php_has_fibers`: PHP >= 8.1.
//!
//! `PHP_CONFIG` selects another php-config (e.g. `php-config8.3`).
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn php_config(php_config: &str, arg: &str) -> String {
    let out = Command::new(php_config).arg(arg).output().unwrap_or_else(|e| {
        panic!(
            "sonde-php needs the PHP development headers: running `{php_config} {arg}` failed: {e}. \
             Install php-dev (Debian: `apt-get install php8.2-dev`) or set PHP_CONFIG."
        )
    });
    assert!(out.status.success(), "`{php_config} {arg}` failed");
    String::from_utf8(out.stdout)
        .expect("php-config output is UTF-8")
        .trim()
        .to_string()
}

fn main() {
    println!("cargo:rerun-if-env-changed=PHP_CONFIG");
    println!("cargo:rerun-if-changed=csrc/shim.c");
    println!("cargo:rerun-if-changed=csrc/shim.h");
    for cfg in ["php_zts", "php_observer_cheap", "php_has_fibers"] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }

    let php_config_bin = env::var("PHP_CONFIG").unwrap_or_else(|_| "php-config".into());
    let includes = php_config(&php_config_bin, "--includes");
    let vernum: u32 = php_config(&php_config_bin, "--vernum")
        .parse()
        .expect("php-config --vernum is a number");
    assert!(
        vernum >= 80100,
        "sonde-php supports PHP 8.1 and later; php-config reports {vernum}"
    );
    let include_dir = php_config(&php_config_bin, "--include-dir");
    let php_config_h =
        std::fs::read_to_string(format!("{include_dir}/main/php_config.h")).unwrap_or_default();
    let zts = php_config_h.lines().any(|l| l.trim() == "#define ZTS 1");

    if zts {
        println!("cargo:rustc-cfg=php_zts");
    }
    if vernum >= 80400 {
        println!("cargo:rustc-cfg=php_observer_cheap");
    }
    println!("cargo:rustc-cfg=php_has_fibers");
    println!("cargo:rustc-env=SONDE_PHP_VERNUM={vernum}");

    let include_args: Vec<String> = includes.split_whitespace().map(str::to_string).collect();

    let mut build = cc::Build::new();
    build.file("csrc/shim.c").include("csrc").warnings(true);
    for inc in &include_args {
        build.include(inc.trim_start_matches("-I"));
    }
    build.compile("sonde_shim");

    let bindings = bindgen::Builder::default()
        .header("csrc/shim.h")
        .clang_args(&include_args)
        .clang_arg("-Icsrc")
        .allowlist_type("zend_module_entry")
        .allowlist_type("zend_result")
        .allowlist_function("sonde_shim_.*")
        .allowlist_type("sonde_setting")
        .rustified_enum("sonde_setting")
        .allowlist_type("sonde_layout")
        .allowlist_var("sonde_setting_(value|long)")
        .constified_enum_module("sonde_layout")
        .allowlist_function("zend_memory_peak_usage")
        .allowlist_function("zend_get_executed_filename")
        .allowlist_function("zend_get_executed_lineno")
        .allowlist_function("php_info_print_table_start")
        .allowlist_function("php_info_print_table_end")
        .allowlist_function("php_info_print_table_row")
        .allowlist_function("zend_unregister_ini_entries_ex")
        .allowlist_var("ZEND_MODULE_API_NO")
        .allowlist_var("ZEND_DEBUG")
        .allowlist_var("USING_ZTS")
        .allowlist_var("MODULE_PERSISTENT")
        .allowlist_var("PHP_VERSION")
        .allowlist_var("IS_(UNDEF|NULL|FALSE|TRUE|LONG|DOUBLE|STRING|ARRAY|OBJECT|REFERENCE)")
        .allowlist_type("zend_internal_function")
        .allowlist_type("zend_function")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen over the PHP headers failed");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("php_bindings.rs");
    bindings.write_to_file(out).expect("write bindings");
}
