//! A numpy data allocator (NEP 49) that keeps freed block-sized buffers for reuse.
//!
//! Calibration allocates the same block-sized arrays over and over (a 16384-row block of 128
//! int8 values is 2 MiB), and frees them all at its end. The C allocator then gives those
//! pages back to the system, so the next calibration in the process takes a page fault per
//! page again (about 6400 faults, 15 % of the in-memory MLP's time). While installed
//! ([`block_cache_enter`], for the current Python context only), this handler keeps every
//! freed buffer of at least [`MIN_BYTES`] up to a byte limit ([`block_cache_limit`], 128 MiB
//! by default) and hands it out again for an allocation of the same size. Everything else,
//! and the buffers themselves at first, comes from numpy's default allocator, so only the
//! reuse differs. Arrays allocated under the handler keep it when it is uninstalled (numpy
//! stores the handler in each array), so their buffers still come back to the cache;
//! [`block_cache_clear`] gives the kept buffers back to the default allocator.
//!
//! numpy (1.22 and later) reaches the handler through its C API table, which rust-numpy does
//! not expose for these three entries; they are read from the table by their documented
//! numbers.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, OnceLock};

use pyo3::prelude::*;
use pyo3::types::PyCapsule;

/// Buffers from this size up are kept.
pub const MIN_BYTES: usize = 1 << 20;
/// The default limit on the bytes kept.
pub const DEFAULT_LIMIT: usize = 128 << 20;

/// The kept buffers (address, size), the limit on their total and what the cache did.
struct Kept {
    blocks: Vec<(usize, usize)>,
    bytes: usize,
    limit: usize,
    hits: u64,
    misses: u64,
}

impl Kept {
    const fn new() -> Self {
        Kept {
            blocks: Vec::new(),
            bytes: 0,
            limit: DEFAULT_LIMIT,
            hits: 0,
            misses: 0,
        }
    }

    /// A kept buffer of exactly `size` bytes, if any (the most recently kept one).
    fn take(&mut self, size: usize) -> Option<usize> {
        let at = self.blocks.iter().rposition(|&(_, s)| s == size);
        match at {
            Some(i) => {
                self.hits += 1;
                self.bytes -= size;
                Some(self.blocks.swap_remove(i).0)
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Keep the buffer at `addr` if it is big enough and fits the limit; false when the
    /// caller must free it.
    fn put(&mut self, addr: usize, size: usize) -> bool {
        if size < MIN_BYTES || self.bytes + size > self.limit {
            return false;
        }
        if self.blocks.try_reserve(1).is_err() {
            return false;
        }
        self.blocks.push((addr, size));
        self.bytes += size;
        true
    }

    /// Remove the kept buffers until their total is at most `limit`; returns those removed.
    fn shrink_to(&mut self, limit: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        while self.bytes > limit {
            let Some((addr, size)) = self.blocks.pop() else {
                break;
            };
            self.bytes -= size;
            out.push((addr, size));
        }
        out
    }
}

static KEPT: Mutex<Kept> = Mutex::new(Kept::new());

fn kept() -> MutexGuard<'static, Kept> {
    // a panic while the lock was held cannot leave `Kept` inconsistent (no code in it panics)
    KEPT.lock().unwrap_or_else(|e| e.into_inner())
}

/// numpy's `PyDataMemAllocator` (version 1).
#[repr(C)]
#[derive(Clone, Copy)]
struct Allocator {
    ctx: *mut c_void,
    malloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
    calloc: unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void,
    realloc: unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void,
    free: unsafe extern "C" fn(*mut c_void, *mut c_void, usize),
}

/// numpy's `PyDataMem_Handler`.
#[repr(C)]
struct Handler {
    name: [u8; 127],
    version: u8,
    allocator: Allocator,
}

/// numpy's default allocator, copied from its handler when this one is first installed.
struct Default(Allocator);
// SAFETY: numpy's default allocator functions are thread-safe and its context is null.
unsafe impl Send for Default {}
// SAFETY: as above.
unsafe impl Sync for Default {}

static DEFAULT: OnceLock<Default> = OnceLock::new();

unsafe extern "C" fn cached_malloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    if size >= MIN_BYTES {
        if let Some(addr) = kept().take(size) {
            return addr as *mut c_void;
        }
    }
    match DEFAULT.get() {
        // SAFETY: numpy's own allocator with its own context.
        Some(d) => unsafe { (d.0.malloc)(d.0.ctx, size) },
        // unreachable: the handler is installed only after DEFAULT is set
        None => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn cached_calloc(_ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    match DEFAULT.get() {
        // SAFETY: as above (zeroed memory comes fresh from the default allocator).
        Some(d) => unsafe { (d.0.calloc)(d.0.ctx, nelem, elsize) },
        None => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn cached_realloc(
    _ctx: *mut c_void,
    ptr: *mut c_void,
    size: usize,
) -> *mut c_void {
    match DEFAULT.get() {
        // SAFETY: every buffer this handler hands out came from the default allocator.
        Some(d) => unsafe { (d.0.realloc)(d.0.ctx, ptr, size) },
        None => std::ptr::null_mut(),
    }
}

/// Whether the C allocator's block at `ptr` holds at least `size` bytes: numpy passes the
/// array's byte size to `free`, which is the size it allocated; this makes sure of it before
/// the buffer is handed out again for that size (where it cannot be checked, nothing is kept).
fn holds(ptr: *mut c_void, size: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_usable_size(ptr: *mut c_void) -> usize;
        }
        // SAFETY: `ptr` is a live block of glibc's malloc (numpy's default allocator).
        unsafe { malloc_usable_size(ptr) >= size }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (ptr, size);
        false
    }
}

unsafe extern "C" fn cached_free(_ctx: *mut c_void, ptr: *mut c_void, size: usize) {
    if ptr.is_null() {
        return;
    }
    if size >= MIN_BYTES && holds(ptr, size) && kept().put(ptr as usize, size) {
        return;
    }
    if let Some(d) = DEFAULT.get() {
        // SAFETY: as above.
        unsafe { (d.0.free)(d.0.ctx, ptr, size) }
    }
}

const fn handler_name() -> [u8; 127] {
    let text = b"fhequant_block_cache";
    let mut name = [0u8; 127];
    let mut i = 0;
    while i < text.len() {
        name[i] = text[i];
        i += 1;
    }
    name
}

/// The handler numpy calls; read only.
struct Shared(Handler);
// SAFETY: never written after initialisation; its context pointer is null.
unsafe impl Sync for Shared {}

static HANDLER: Shared = Shared(Handler {
    name: handler_name(),
    version: 1,
    allocator: Allocator {
        ctx: std::ptr::null_mut(),
        malloc: cached_malloc,
        calloc: cached_calloc,
        realloc: cached_realloc,
        free: cached_free,
    },
});

/// The capsule name numpy requires of a handler.
const CAPSULE_NAME: &std::ffi::CStr = c"mem_handler";

/// The entries of numpy's C API table that handle data allocators.
const SET_HANDLER: usize = 304;
const DEFAULT_HANDLER: usize = 306;

/// numpy's C API table.
fn api_table(py: Python<'_>) -> PyResult<*const *const c_void> {
    let capsule = py
        .import("numpy.core.multiarray")?
        .getattr("_ARRAY_API")?
        .cast_into::<PyCapsule>()?;
    // SAFETY: numpy 1.x names this capsule NULL, so pointer(None) is its table.
    let table = capsule.pointer_checked(None)?;
    Ok(table.as_ptr() as *const *const c_void)
}

/// `PyDataMem_SetHandler(handler)`: the previous handler of the current context (a new
/// reference).
fn set_handler<'py>(py: Python<'py>, handler: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let table = api_table(py)?;
    // SAFETY: entry 304 of numpy's table (numpy >= 1.22, which fhequant requires) is
    // `PyObject *PyDataMem_SetHandler(PyObject *)`.
    let set: unsafe extern "C" fn(*mut pyo3::ffi::PyObject) -> *mut pyo3::ffi::PyObject =
        unsafe { std::mem::transmute(*table.add(SET_HANDLER)) };
    // SAFETY: `handler` is a live "mem_handler" capsule; the result is a new reference or
    // NULL with an exception set.
    unsafe {
        let previous = set(handler.as_ptr());
        Bound::from_owned_ptr_or_err(py, previous)
    }
}

/// Copy numpy's default allocator into `DEFAULT` (once).
fn load_default(py: Python<'_>) -> PyResult<()> {
    if DEFAULT.get().is_some() {
        return Ok(());
    }
    let table = api_table(py)?;
    // SAFETY: entry 306 is the address of `PyObject *PyDataMem_DefaultHandler`, a capsule
    // named "mem_handler" holding a `PyDataMem_Handler` that lives as long as numpy.
    let default = unsafe {
        let object = *(*table.add(DEFAULT_HANDLER) as *const *mut pyo3::ffi::PyObject);
        Bound::from_borrowed_ptr(py, object).cast_into::<PyCapsule>()?
    };
    let handler = default.pointer_checked(Some(CAPSULE_NAME))?;
    // SAFETY: the capsule holds a `PyDataMem_Handler`.
    let allocator = unsafe { (*(handler.as_ptr() as *const Handler)).allocator };
    let _ = DEFAULT.set(Default(allocator));
    Ok(())
}

/// The capsule of this handler (one, kept for the process).
fn handler_capsule(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static CAPSULE: pyo3::sync::PyOnceLock<Py<PyCapsule>> = pyo3::sync::PyOnceLock::new();
    let capsule = CAPSULE.get_or_try_init(py, || {
        let pointer = NonNull::from(&HANDLER.0).cast::<c_void>();
        // SAFETY: HANDLER is a static `PyDataMem_Handler`, valid for the process.
        let capsule = unsafe { PyCapsule::new_with_pointer(py, pointer, CAPSULE_NAME)? };
        Ok::<_, PyErr>(capsule.unbind())
    })?;
    Ok(capsule.bind(py).clone().into_any())
}

/// Install the block cache as numpy's data allocator in the current Python context; returns
/// the handler it replaces, for `block_cache_exit`.
#[pyfunction]
fn block_cache_enter(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    load_default(py)?;
    let handler = handler_capsule(py)?;
    set_handler(py, &handler)
}

/// Put back the handler `block_cache_enter` returned.
#[pyfunction]
fn block_cache_exit(py: Python<'_>, previous: &Bound<'_, PyAny>) -> PyResult<()> {
    let ok = previous
        .cast::<PyCapsule>()
        .is_ok_and(|c| c.pointer_checked(Some(CAPSULE_NAME)).is_ok());
    if !ok {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "block_cache_exit: expected the handler block_cache_enter returned",
        ));
    }
    set_handler(py, previous).map(drop)
}

/// Give every kept buffer back to numpy's default allocator; returns the bytes released.
#[pyfunction]
fn block_cache_clear() -> usize {
    release(kept().shrink_to(0))
}

/// Set the limit on the bytes kept when `limit` is given (releasing what is over it);
/// returns the limit.
#[pyfunction]
#[pyo3(signature = (limit=None))]
fn block_cache_limit(limit: Option<usize>) -> usize {
    let mut k = kept();
    if let Some(limit) = limit {
        k.limit = limit;
        let over = k.shrink_to(limit);
        drop(k);
        release(over);
        return limit;
    }
    k.limit
}

/// `(bytes kept, buffers kept, hits, misses)` of the cache (hits and misses count the
/// allocations of at least `MIN_BYTES` since the process started).
#[pyfunction]
fn block_cache_stats() -> (usize, usize, u64, u64) {
    let k = kept();
    (k.bytes, k.blocks.len(), k.hits, k.misses)
}

/// Free buffers taken out of the cache with the default allocator.
fn release(blocks: Vec<(usize, usize)>) -> usize {
    let mut bytes = 0;
    if let Some(d) = DEFAULT.get() {
        for (addr, size) in blocks {
            // SAFETY: a buffer of the default allocator that nothing else holds.
            unsafe { (d.0.free)(d.0.ctx, addr as *mut c_void, size) };
            bytes += size;
        }
    }
    bytes
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(block_cache_enter, m)?)?;
    m.add_function(wrap_pyfunction!(block_cache_exit, m)?)?;
    m.add_function(wrap_pyfunction!(block_cache_clear, m)?)?;
    m.add_function(wrap_pyfunction!(block_cache_limit, m)?)?;
    m.add_function(wrap_pyfunction!(block_cache_stats, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_big_buffers_within_the_limit_and_gives_them_back_by_size() {
        let mut k = Kept::new();
        k.limit = 5 * MIN_BYTES;
        assert!(!k.put(0x1000, MIN_BYTES - 1), "small buffers are not kept");
        assert!(k.put(0x2000, 2 * MIN_BYTES));
        assert!(k.put(0x3000, 2 * MIN_BYTES));
        assert!(!k.put(0x4000, 2 * MIN_BYTES), "over the limit");
        assert_eq!(k.bytes, 4 * MIN_BYTES);
        assert_eq!(k.take(3 * MIN_BYTES), None, "only the same size is reused");
        assert_eq!(k.take(2 * MIN_BYTES), Some(0x3000), "the last kept first");
        assert_eq!((k.hits, k.misses, k.bytes), (1, 1, 2 * MIN_BYTES));
        assert!(k.put(0x5000, MIN_BYTES));
        let out = k.shrink_to(MIN_BYTES);
        assert_eq!(out, vec![(0x5000, MIN_BYTES), (0x2000, 2 * MIN_BYTES)]);
        assert_eq!((k.bytes, k.blocks.len()), (0, 0));
    }
}
