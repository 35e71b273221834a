//! Wrapping internal functions' handlers: the hot path.
//!
//! At start-up (MINIT and again after every module has started, before
//! opcache preloads or JIT-compiles anything) each function a plugin names
//! gets its `handler` replaced by `dispatch`; the original handler and the
//! plugin's recorder are kept in a static table, found again through the
//! function's `reserved[HANDLE]` slot (one load, no search). An instrumented
//! call then costs two clock reads and the recorder; a function no plugin
//! names costs nothing, and there is no per-request fixed cost (unlike the
//! observer API on PHP < 8.4).
//!
//! `dispatch` holds nothing with a destructor across the original handler,
//! which may `zend_bailout` (longjmp) past it; the recorder runs after it,
//! inside the panic boundary.

use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::later::Capture;
use crate::sys;

/// What a plugin asks to wrap.
#[derive(Debug, Clone, Copy)]
pub struct HookSpec {
    /// Lower-case class name, or None for a plain function.
    pub class: Option<&'static CStr>,
    /// Lower-case function or method name.
    pub function: &'static CStr,
    /// Records the call after it returned.
    pub after: After,
    /// Runs before the call. It sees the arguments; its `Call` has no
    /// times (0) and no return value yet.
    pub before: Before,
}

/// What runs before a call.
#[derive(Debug, Clone, Copy)]
pub enum Before {
    No,
    /// Always (e.g. adding a header to an outgoing request).
    Always(Recorder),
    /// Only while the request shows what it runs in a scoreboard slot
    /// (`HOT.board`): what the call is about to run. Without an agent no
    /// call pays for it, not even a call into the plugin.
    Shown(Recorder),
}

/// One finished call, as a recorder sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub execute_data: *mut sys::zend_execute_data,
    pub return_value: *mut sys::zval,
    /// `clock::ticks()` before and after the original handler (0 in a
    /// before hook).
    pub start: u64,
    pub end: u64,
}

pub type Recorder = fn(&Call);

/// How a call is recorded after it returned.
#[derive(Debug, Clone, Copy)]
pub enum After {
    /// At once, into the span buffer.
    Now(Recorder),
    /// As an event queued for later (`later`): for the calls a request
    /// makes many of.
    Later(Capture),
}

/// An installed hook: what a wrapped call reads, one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Hook {
    /// None: a free slot.
    original: sys::zif_handler,
    after: After,
    before: Before,
}

const MAX_HOOKS: usize = 512;

struct Table {
    hooks: [Hook; MAX_HOOKS],
    /// (class, function) of each hook, apart from what calls read.
    names: [(Option<&'static CStr>, &'static CStr); MAX_HOOKS],
}

const FREE: Hook = Hook {
    original: None,
    after: After::Now(ignore),
    before: Before::No,
};

fn ignore(_: &Call) {}

static mut TABLE: Table = Table {
    hooks: [FREE; MAX_HOOKS],
    names: [(None, c""); MAX_HOOKS],
};
static INSTALLED: AtomicUsize = AtomicUsize::new(0);

/// Switched by the module (it owns the request state).
pub fn set_recording(on: bool) {
    crate::HOT.recording.store(on, Ordering::Relaxed);
}

/// Whether a traced request runs now.
#[inline]
pub fn recording() -> bool {
    crate::HOT.recording.load(Ordering::Relaxed)
}

/// Installs every spec whose function exists now; already wrapped ones are
/// skipped, so this can run more than once. Start-up only (single thread,
/// before any request).
pub fn install(specs: &[HookSpec]) {
    if crate::HOT.handle.load(Ordering::Relaxed) < 0 {
        // SAFETY: start-up, single-threaded; reserves one `reserved` slot.
        let h = unsafe { sys::sonde_shim_resource_handle() };
        if h < 0 {
            return; // No slot left: stay uninstrumented rather than guess.
        }
        crate::HOT.handle.store(h, Ordering::Relaxed);
    }
    let handle = crate::HOT.handle.load(Ordering::Relaxed) as usize;
    let Some(handler) = dispatch_for(handle) else {
        return; // a slot no dispatcher reads: stay uninstrumented
    };
    for spec in specs {
        let class = spec.class.map_or(std::ptr::null(), CStr::as_ptr);
        // SAFETY: the names are NUL-terminated; lookups in the class and
        // function tables are valid after MINIT of the owning module.
        let f = unsafe { sys::sonde_shim_find_internal(class, spec.function.as_ptr()) };
        if f.is_null() {
            continue;
        }
        // SAFETY: `f` points to a persistent internal function that lives
        // for the whole process; start-up is single-threaded, so nobody
        // calls it while its handler changes.
        unsafe {
            let table = &mut *std::ptr::addr_of_mut!(TABLE);
            // Already wrapped: its reserved slot points into our table.
            let slot = (*f).reserved[handle] as usize;
            let first = table.hooks.as_ptr() as usize;
            let past = first + std::mem::size_of_val(&table.hooks);
            if (first..past).contains(&slot) {
                continue;
            }
            let current = (*f).handler;
            let n = INSTALLED.load(Ordering::Relaxed);
            if n >= MAX_HOOKS {
                return;
            }
            table.hooks[n] = Hook {
                original: current,
                after: spec.after,
                before: spec.before,
            };
            table.names[n] = (spec.class, spec.function);
            (*f).reserved[handle] = (&table.hooks[n] as *const Hook) as *mut c_void;
            (*f).handler = Some(handler);
            INSTALLED.store(n + 1, Ordering::Relaxed);
        }
    }
}

/// Names of the wrapped functions (`class::function` or `function`).
pub fn installed() -> Vec<String> {
    let n = INSTALLED.load(Ordering::Relaxed);
    // SAFETY: the table is only written at start-up, before this is read.
    let table = unsafe { &*std::ptr::addr_of!(TABLE) };
    table.names[..n]
        .iter()
        .map(|(class, name)| match class {
            Some(c) => format!("{}::{}", c.to_string_lossy(), name.to_string_lossy()),
            None => name.to_string_lossy().into_owned(),
        })
        .collect()
}

/// The handler every wrapped function now has, one per `reserved` slot
/// (the slot is a constant in each: no load of it before the hook's).
/// None for a slot past the six PHP 8.x has (`ZEND_MAX_RESERVED_RESOURCES`):
/// then nothing is wrapped.
fn dispatch_for(handle: usize) -> sys::zif_handler {
    match handle {
        0 => Some(dispatch::<0>),
        1 => Some(dispatch::<1>),
        2 => Some(dispatch::<2>),
        3 => Some(dispatch::<3>),
        4 => Some(dispatch::<4>),
        5 => Some(dispatch::<5>),
        _ => None,
    }
}

/// What it reads after the original handler returns is kept in registers
/// or on the stack from before the call (the clock choice, the hook, where
/// PHP keeps the pending exception): after a call that waited on the
/// network a load from our own data is a cache miss.
unsafe extern "C" fn dispatch<const HANDLE: usize>(
    ex: *mut sys::zend_execute_data,
    rv: *mut sys::zval,
) {
    // SAFETY: Zend calls a handler with the frame of the function it belongs
    // to; `install` stored a pointer to this function's static Hook in its
    // reserved slot HANDLE before switching the handler to `dispatch`.
    let hook: Hook = unsafe {
        let func = (*ex).func;
        *((*func).internal_function.reserved[HANDLE] as *const Hook)
    };
    let Some(original) = hook.original else {
        return;
    };
    let hot = &crate::HOT;
    // `recording` is off once `disabled` is set (`module::boundary`).
    if !hot.recording.load(Ordering::Relaxed) {
        // SAFETY: calling the function's own handler with Zend's arguments.
        unsafe { original(ex, rv) };
        return;
    }
    let tsc = hot.use_tsc.load(Ordering::Relaxed);
    let exception = hot.exception.load(Ordering::Relaxed);
    let mut fine = true;
    let before = match hook.before {
        Before::Always(f) => Some(f),
        Before::Shown(f) if hot.board.load(Ordering::Relaxed) => Some(f),
        _ => None,
    };
    if let Some(before) = before {
        // No clock read: before hooks look at the arguments, not the time.
        let call = Call {
            execute_data: ex,
            return_value: rv,
            start: 0,
            end: 0,
        };
        fine = crate::module::in_boundary(|| before(&call));
    }
    let start = crate::clock::ticks_with(tsc);
    // SAFETY: as above. It may longjmp out (bailout); nothing here needs
    // dropping.
    unsafe { original(ex, rv) };
    let end = crate::clock::ticks_with(tsc);
    let call = Call {
        execute_data: ex,
        return_value: rv,
        start,
        end,
    };
    if !fine {
        return; // the before hook failed: the extension is off now
    }
    // The flag is not read again here (a miss after the call): the
    // extension was on before it, and a fault in a hook nested inside the
    // original (PHP code the call ran) switched it off for every later call
    // but lets this one recorder run, inside its own boundary.
    match hook.after {
        After::Now(record) => crate::module::in_boundary_enabled(|| record(&call)),
        After::Later(capture) => crate::module::in_boundary_enabled(|| {
            // SAFETY: `exception` is &EG(exception) (set at start-up, NTS:
            // one per process), valid while PHP runs.
            let threw = !exception.is_null() && unsafe { !(*exception).is_null() };
            crate::later::after(capture, &call, threw)
        }),
    };
}
