//! Raw bindings to the PHP headers (bindgen, allowlisted in build.rs) and
//! to the C shim. Nothing else lives here.
#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unreachable_pub,
    clippy::all
)]
include!(concat!(env!("OUT_DIR"), "/php_bindings.rs"));
