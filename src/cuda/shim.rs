//! Loading sdgen's CUDA shim (`src/cuda/graphs.cpp`), a shared library that `build.rs` builds
//! and this binary embeds. It links libtorch's CUDA libraries, so it is written to a temporary
//! file and `dlopen`ed only when a model runs on CUDA: a CPU-only install, whose
//! `libtorch_cuda.so` cannot load, never touches it. Its symbols resolve against the
//! libtorch this process already loaded (same sonames), so tensors pass as `at::Tensor*`.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// The shim's entry points, valid for the whole process (the library is never unloaded).
pub struct Shim {
    last_error: unsafe extern "C" fn() -> *const c_char,
    pub(crate) graph_new: unsafe extern "C" fn(c_int, *mut *mut c_void) -> c_int,
    pub(crate) graph_free: unsafe extern "C" fn(*mut c_void),
    pub(crate) graph_warmup_begin: unsafe extern "C" fn(*mut c_void) -> c_int,
    pub(crate) graph_warmup_end: unsafe extern "C" fn(*mut c_void) -> c_int,
    pub(crate) graph_begin: unsafe extern "C" fn(*mut c_void) -> c_int,
    pub(crate) graph_end: unsafe extern "C" fn(*mut c_void) -> c_int,
    pub(crate) graph_abort: unsafe extern "C" fn(*mut c_void),
    pub(crate) graph_replay: unsafe extern "C" fn(*mut c_void) -> c_int,
    fp16_accumulation: unsafe extern "C" fn(*mut c_int) -> c_int,
    profile_start: unsafe extern "C" fn() -> c_int,
    profile_stop: unsafe extern "C" fn(*const c_char) -> c_int,
    set_fp16_accumulation: unsafe extern "C" fn(c_int) -> c_int,
    /// CUDA devices the shim's libtorch sees.
    pub device_count: usize,
}

impl std::fmt::Debug for Shim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shim").field("device_count", &self.device_count).finish_non_exhaustive()
    }
}

/// The shim's ABI version this binary speaks (`sdgen_cuda_shim_version`).
const VERSION: c_int = 3;

#[cfg(sdgen_cuda_shim)]
static EMBEDDED: Option<&[u8]> = Some(include_bytes!(concat!(env!("OUT_DIR"), "/libsdgen_cuda.so")));
#[cfg(not(sdgen_cuda_shim))]
static EMBEDDED: Option<&[u8]> = None;

/// Why the shim was not built, when it was not.
fn missing_reason() -> &'static str {
    option_env!("SDGEN_CUDA_SHIM_MISSING").unwrap_or("this build has no CUDA shim")
}

/// Whether this binary carries the shim (whether it can load is another matter).
pub fn built() -> bool {
    EMBEDDED.is_some()
}

impl Shim {
    /// The shim, loaded on first use; or why it cannot be used (not built, CUDA libraries
    /// missing, no device), the same text every time.
    pub fn get() -> Result<&'static Shim, String> {
        static SHIM: OnceLock<Result<Shim, String>> = OnceLock::new();
        SHIM.get_or_init(load).as_ref().map_err(Clone::clone)
    }

    /// The message of the shim's last failed call on this thread.
    pub(crate) fn error(&self) -> String {
        // SAFETY: the shim returns a NUL-terminated thread-local string that lives until its
        // next failing call on this thread; it is copied at once.
        unsafe { CStr::from_ptr((self.last_error)()).to_string_lossy().into_owned() }
    }

    /// `Ok(())` for a zero return code, else the shim's message.
    pub(crate) fn check(&self, rc: c_int, what: &str) -> Result<(), String> {
        if rc == 0 {
            Ok(())
        } else {
            Err(format!("{what}: {}", self.error()))
        }
    }

    /// Whether cuBLAS fp16 GEMMs accumulate in fp16 now.
    pub fn fp16_accumulation(&self) -> Result<bool, String> {
        let mut on = 0;
        // SAFETY: `on` is a valid out-pointer.
        self.check(unsafe { (self.fp16_accumulation)(&mut on) }, "reading cuBLAS fp16 accumulation")?;
        Ok(on != 0)
    }

    /// Runs `f` under libtorch's Kineto profiler (CPU ops and CUDA kernels) and writes the
    /// trace to `path` as Chrome trace JSON, as `torch.profiler` would.
    pub fn profile<T>(&self, path: &std::path::Path, f: impl FnOnce() -> T) -> Result<T, String> {
        let c_path = std::ffi::CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| format!("{}: a path with a NUL byte", path.display()))?;
        // SAFETY: no arguments.
        self.check(unsafe { (self.profile_start)() }, "starting the profiler")?;
        struct Stop<'a>(&'a Shim);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                // SAFETY: a null path only stops the profiler (on a panic inside `f`).
                unsafe { (self.0.profile_stop)(std::ptr::null()) };
            }
        }
        let stop = Stop(self);
        let out = f();
        std::mem::forget(stop);
        // SAFETY: a NUL-terminated path that outlives the call.
        self.check(unsafe { (self.profile_stop)(c_path.as_ptr()) }, "writing the profile")?;
        Ok(out)
    }

    pub fn set_fp16_accumulation(&self, on: bool) -> Result<(), String> {
        // SAFETY: plain value argument.
        self.check(unsafe { (self.set_fp16_accumulation)(c_int::from(on)) }, "setting cuBLAS fp16 accumulation")
    }
}

fn load() -> Result<Shim, String> {
    let bytes = EMBEDDED.ok_or_else(|| format!("the CUDA shim was not built: {}", missing_reason()))?;
    // The file only needs to exist while it is opened: the mapping outlives its name.
    let mut file = tempfile::Builder::new()
        .prefix("sdgen-cuda-")
        .suffix(".so")
        .tempfile()
        .map_err(|e| format!("cannot write the CUDA shim to a temporary file: {e}"))?;
    std::io::Write::write_all(&mut file, bytes).map_err(|e| format!("cannot write the CUDA shim: {e}"))?;
    // SAFETY: the shim's initialisers are only C++ static initialisers of a file that defines
    // no globals with side effects; its dependencies are libtorch's, already loaded.
    let lib = unsafe { libloading::Library::new(file.path()) }
        .map_err(|e| format!("the CUDA shim cannot be loaded ({e}); CUDA libraries are missing or not usable"))?;
    drop(file);
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    // SAFETY: each symbol is declared with the signature `graphs.cpp` gives it, and the
    // version check below refuses a shim from another source revision.
    unsafe {
        let version: unsafe extern "C" fn() -> c_int = sym(lib, b"sdgen_cuda_shim_version")?;
        if version() != VERSION {
            return Err(format!("the CUDA shim speaks version {}, this binary {VERSION}", version()));
        }
        let device_count: unsafe extern "C" fn(*mut c_int) -> c_int = sym(lib, b"sdgen_cuda_device_count")?;
        let mut shim = Shim {
            last_error: sym(lib, b"sdgen_cuda_last_error")?,
            graph_new: sym(lib, b"sdgen_cuda_graph_new")?,
            graph_free: sym(lib, b"sdgen_cuda_graph_free")?,
            graph_warmup_begin: sym(lib, b"sdgen_cuda_graph_warmup_begin")?,
            graph_warmup_end: sym(lib, b"sdgen_cuda_graph_warmup_end")?,
            graph_begin: sym(lib, b"sdgen_cuda_graph_begin")?,
            graph_end: sym(lib, b"sdgen_cuda_graph_end")?,
            graph_abort: sym(lib, b"sdgen_cuda_graph_abort")?,
            graph_replay: sym(lib, b"sdgen_cuda_graph_replay")?,
            fp16_accumulation: sym(lib, b"sdgen_cuda_fp16_accumulation")?,
            profile_start: sym(lib, b"sdgen_profile_start")?,
            profile_stop: sym(lib, b"sdgen_profile_stop")?,
            set_fp16_accumulation: sym(lib, b"sdgen_cuda_set_fp16_accumulation")?,
            device_count: 0,
        };
        let mut count = 0;
        shim.check(device_count(&mut count), "counting CUDA devices")?;
        if count <= 0 {
            return Err("the CUDA shim loaded, but libtorch sees no CUDA device".into());
        }
        shim.device_count = count as usize;
        Ok(shim)
    }
}

/// A function pointer from the shim.
///
/// # Safety
/// `T` must be the symbol's true type.
unsafe fn sym<T: Copy>(lib: &'static libloading::Library, name: &[u8]) -> Result<T, String> {
    // SAFETY: the caller names the type; the library is never unloaded.
    unsafe { lib.get::<T>(name) }.map(|s| *s).map_err(|e| format!("the CUDA shim lacks a symbol: {e}"))
}

/// `sdgen info`'s line about the shim.
pub fn describe() -> String {
    if !built() {
        return format!("not built ({})", missing_reason());
    }
    match Shim::get() {
        Ok(s) => format!("loaded ({} device(s))", s.device_count),
        Err(e) => format!("built, not usable here: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without usable CUDA the loader must say why, never panic; with CUDA it
    /// loads and finds a device. The first case is the one CI sees.
    #[test]
    fn loader_reports_a_reason_or_loads() {
        match Shim::get() {
            Ok(s) => assert!(s.device_count > 0 && tch::Cuda::is_available()),
            Err(e) => {
                eprintln!("shim: {e}");
                assert!(!tch::Cuda::is_available() || !built(), "CUDA is available, yet the shim failed: {e}");
                assert!(
                    e.contains("not built") || e.contains("cannot be loaded") || e.contains("no CUDA device"),
                    "{e}"
                );
                // The same reason every time (loaded once).
                assert_eq!(Shim::get().unwrap_err(), e);
                assert!(describe().contains(&e) || describe().starts_with("not built"), "{}", describe());
            }
        }
    }

    /// The shim is built wherever the CUDA headers are (setup.sh installs them), so a
    /// missing shim on such a machine is a build regression, not a quiet fallback.
    #[test]
    fn shim_is_built_when_the_headers_are_there() {
        if let Some(reason) = option_env!("SDGEN_CUDA_SHIM_MISSING") {
            assert!(
                reason.contains("headers") || reason.contains("SDGEN_NO_CUDA_SHIM") || reason.contains("compiler"),
                "the shim failed to build for another reason: {reason}"
            );
        } else {
            assert!(built());
        }
    }
}
