//! sonde-php: the PHP extension (loaded as `sonde.so`).
//!
//! It owns what happens inside the PHP process: timing each request and
//! handing one record per request to the local agent. It must never crash,
//! block, print or change the behaviour of the application: every Zend
//! callback catches panics and switches the extension off for the process,
//! and a record goes into the agent's shared-memory ring (or, without one,
//! its socket) without ever waiting: dropped and counted when the agent is
//! away or full.
//!
//! Layout: `sys` (bindgen + C shim), `zend` (the only code that reads Zend
//! state), `module` (the callbacks Zend calls), `hooks` (wrapping internal
//! functions' handlers), `later` (the calls recorded in a batch),
//! `plugins/` (one file per instrumented library),
//! `spans` (the per-request span buffer) and `record` (ids, and the
//! `sonde.v1.RequestRecord` encoding used when a request is too large to
//! hand over raw) from the PHP-free `sonde-capture` crate, whose `raw`
//! frame is what a request normally becomes, `ring` and `ipc` (the two
//! transports, PHP-free), `scoreboard` (the in-flight slot), `connections` (open DB connections for it), `shm`
//! (mapping the agent's shared files), `clock` (hook timestamps).

pub mod clock;
pub mod connections;
pub mod ipc;
pub mod ring;
pub mod scoreboard;
pub mod shm;
pub use sonde_capture::{pb, raw, record, spans};

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr};

#[cfg(not(test))]
mod errors;
#[cfg(not(test))]
mod hooks;
#[cfg(not(test))]
mod later;
#[cfg(not(test))]
mod module;
#[cfg(not(test))]
mod plugins;
#[cfg(not(test))]
mod sys;
#[cfg(not(test))]
mod zend;

/// The flags every wrapped call reads, in one cache line of their own:
/// after the call's own work (often a network round trip) little of ours
/// is still cached, and each separate line read is a miss (≈ 0.1 µs on
/// this project's VMs).
#[repr(C, align(64))]
pub struct Hot {
    /// True while a traced request runs; hooks record only then.
    pub recording: AtomicBool,
    /// Whether `clock::ticks` reads the time-stamp counter.
    pub use_tsc: AtomicBool,
    /// Set when a panic was caught: the extension stays off in this process.
    pub disabled: AtomicBool,
    /// Whether this request shows what it runs in a scoreboard slot
    /// (before hooks look only then).
    pub board: AtomicBool,
    /// Our slot in each internal function's `reserved` array.
    pub handle: AtomicI32,
    /// `&EG(exception)`: where PHP keeps the pending exception (NTS: one
    /// per process, set at start-up).
    pub exception: AtomicPtr<*mut c_void>,
}

pub static HOT: Hot = Hot {
    recording: AtomicBool::new(false),
    use_tsc: AtomicBool::new(false),
    disabled: AtomicBool::new(false),
    board: AtomicBool::new(false),
    handle: AtomicI32::new(-1),
    exception: AtomicPtr::new(std::ptr::null_mut()),
};

/// This extension's version, reported to PHP and in every record.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
