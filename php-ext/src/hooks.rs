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

use crate::sys;

/// What a plugin asks to wrap.
#[derive(Debug, Clone, Copy)]
pub struct HookSpec {
    /// Lower-case class name, or None for a plain function.
    pub class: Option<&'static CStr>,
    /// Lower-case function or method name.
    pub function: &'static CStr,
    /// Records the call after it returned.
    pub record: Recorder,
    /// Runs before the call (e.g. to add a header to an outgoing request).
    /// It sees the arguments; its `Call` has no times (0) and no return
    /// value yet.
    pub before: Option<Recorder>,
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

/// An installed hook.
#[derive(Clone, Copy)]
struct Hook {
    original: sys::zif_handler,
    record: Recorder,
    before: Option<Recorder>,
    name: &'static CStr,
    class: Option<&'static CStr>,
}

const MAX_HOOKS: usize = 512;

struct Table {
    hooks: [Option<Hook>; MAX_HOOKS],
}

static mut TABLE: Table = Table {
    hooks: [None; MAX_HOOKS],
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
            table.hooks[n] = Some(Hook {
                original: current,
                record: spec.record,
                before: spec.before,
                name: spec.function,
                class: spec.class,
            });
            (*f).reserved[handle] = (&table.hooks[n] as *const Option<Hook>) as *mut c_void;
            (*f).handler = Some(dispatch);
            INSTALLED.store(n + 1, Ordering::Relaxed);
        }
    }
}

/// Names of the wrapped functions (`class::function` or `function`).
pub fn installed() -> Vec<String> {
    let n = INSTALLED.load(Ordering::Relaxed);
    // SAFETY: the table is only written at start-up, before this is read.
    let table = unsafe { &*std::ptr::addr_of!(TABLE) };
    table.hooks[..n]
        .iter()
        .flatten()
        .map(|h| match h.class {
            Some(c) => format!("{}::{}", c.to_string_lossy(), h.name.to_string_lossy()),
            None => h.name.to_string_lossy().into_owned(),
        })
        .collect()
}

/// The handler every wrapped function now has.
unsafe extern "C" fn dispatch(ex: *mut sys::zend_execute_data, rv: *mut sys::zval) {
    let handle = crate::HOT.handle.load(Ordering::Relaxed) as usize;
    // SAFETY: Zend calls a handler with the frame of the function it belongs
    // to; `install` stored a pointer to this function's static Hook in its
    // reserved slot before switching the handler to `dispatch`.
    let hook: Hook = unsafe {
        let func = (*ex).func;
        match *((*func).internal_function.reserved[handle] as *const Option<Hook>) {
            Some(h) => h,
            None => return,
        }
    };
    let Some(original) = hook.original else {
        return;
    };
    if !crate::HOT.recording.load(Ordering::Relaxed) {
        // SAFETY: calling the function's own handler with Zend's arguments.
        unsafe { original(ex, rv) };
        return;
    }
    if let Some(before) = hook.before {
        // No clock read: before hooks look at the arguments, not the time.
        let call = Call {
            execute_data: ex,
            return_value: rv,
            start: 0,
            end: 0,
        };
        crate::module::in_boundary(|| before(&call));
    }
    let start = crate::clock::ticks();
    // SAFETY: as above. It may longjmp out (bailout); nothing here needs
    // dropping.
    unsafe { original(ex, rv) };
    let end = crate::clock::ticks();
    let call = Call {
        execute_data: ex,
        return_value: rv,
        start,
        end,
    };
    crate::module::in_boundary(|| (hook.record)(&call));
}
