//! Mapping the agent's shared files (record ring, scoreboard) into a PHP
//! worker: the one place that opens, checks and maps them. PHP-free.

use std::ffi::CStr;

/// A shared, writable mapping of a whole file prefix.
#[derive(Debug)]
pub struct Mapping {
    pub base: *mut u8,
    pub len: usize,
}

/// Opens `path` read-write and maps the first `len_of(header)` bytes shared,
/// when its first `header_len` bytes form a header `len_of` accepts and the
/// file is at least that long. Never follows a symlink.
pub fn map_file(
    path: &CStr,
    header_len: usize,
    len_of: impl FnOnce(&[u8]) -> Option<usize>,
) -> Option<Mapping> {
    // SAFETY: open(2) of a NUL-terminated path; the fd is closed below and
    // the mapping keeps the file.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return None;
    }
    let mapping = map_fd(fd, header_len, len_of);
    // SAFETY: our own fd, closed once.
    unsafe { libc::close(fd) };
    mapping
}

fn map_fd(
    fd: libc::c_int,
    header_len: usize,
    len_of: impl FnOnce(&[u8]) -> Option<usize>,
) -> Option<Mapping> {
    let mut header = vec![0u8; header_len];
    // SAFETY: reads at most `header_len` bytes into a buffer of that size.
    let n = unsafe { libc::pread(fd, header.as_mut_ptr().cast(), header.len(), 0) };
    if n != header_len as isize {
        return None;
    }
    let len = len_of(&header)?;
    // SAFETY: a zeroed `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` valid for writing.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || (st.st_size as u64) < len as u64 {
        return None;
    }
    // SAFETY: maps `len` bytes of a regular file at least that long, shared
    // and writable; the mapping stays valid after the fd is closed.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    (p != libc::MAP_FAILED).then(|| Mapping {
        base: p.cast(),
        len,
    })
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map_fd`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
