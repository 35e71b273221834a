//! PHP-free, tokio-free logic shared by the extension, the agent and the
//! collector: the socket frame codec, endpoint naming, URL redaction,
//! record ids and civil dates. Everything here is pure and unit-tested on
//! its own; it must never allocate on a path the extension calls per
//! instrumented call.
#![forbid(unsafe_code)]

pub mod civil;
pub mod dsn;
pub mod endpoint;
pub mod frame;
pub mod hll;
pub mod ids;
pub mod pem;
pub mod redact;
pub mod request;
pub mod ring;
pub mod scoreboard;
pub mod sketch;
pub mod sql;
pub mod trace;
