//! `sdgen info`: what this build of sdgen can see of libtorch and the hardware.

use std::fmt::Write;

/// One CUDA device as libtorch sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuInfo {
    pub index: usize,
    pub name: String,
    pub total_memory_bytes: Option<u64>,
}

/// The facts `sdgen info` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    pub sdgen_version: String,
    pub libtorch_version: String,
    pub cuda_linked: bool,
    pub cuda_available: bool,
    pub cudnn_available: bool,
    /// The CUDA shim (CUDA graphs, fp16 accumulation): built, loaded, or why not.
    pub cuda_shim: String,
    pub devices: Vec<GpuInfo>,
    pub cpu_threads: i32,
    /// Which MKL kernels libtorch's CPU matrix products run (`crate::mkl`).
    pub cpu_blas: String,
    /// The folder the running libtorch was loaded from (Linux: read from `/proc/self/maps`).
    pub libtorch_path: Option<std::path::PathBuf>,
}

/// The libtorch version this binary was built against (tch pins it).
pub const LIBTORCH_VERSION: &str = "2.11.0";

impl Info {
    pub fn gather() -> Info {
        let cuda_available = tch::Cuda::is_available();
        let count = if cuda_available { tch::Cuda::device_count().max(0) as usize } else { 0 };
        let devices = (0..count).map(gpu_info).collect();
        Info {
            sdgen_version: crate::VERSION.to_string(),
            libtorch_version: LIBTORCH_VERSION.to_string(),
            cuda_linked: cfg!(sdgen_cuda_linked),
            cuda_available,
            cudnn_available: tch::Cuda::cudnn_is_available(),
            cuda_shim: if cuda_available {
                crate::cuda::shim::describe()
            } else if crate::cuda::shim::built() {
                "built, not loaded (CUDA is not available)".into()
            } else {
                crate::cuda::shim::describe()
            },
            devices,
            cpu_threads: tch::get_num_threads(),
            cpu_blas: crate::mkl::describe(),
            libtorch_path: libtorch_folder(),
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "sdgen {}", self.sdgen_version);
        let _ = writeln!(s, "libtorch {}", self.libtorch_version);
        match &self.libtorch_path {
            Some(p) => _ = writeln!(s, "libtorch found in: {}", p.display()),
            None => _ = writeln!(s, "libtorch found in: unknown"),
        }
        let _ = writeln!(
            s,
            "CUDA: {}{}",
            if self.cuda_available { "available" } else { "not available" },
            if self.cuda_linked { "" } else { " (this build is linked without libtorch_cuda)" }
        );
        let _ = writeln!(s, "cuDNN: {}", if self.cudnn_available { "available" } else { "not available" });
        let _ = writeln!(s, "CUDA graphs shim: {}", self.cuda_shim);
        let _ = writeln!(s, "CUDA devices: {}", self.devices.len());
        for d in &self.devices {
            let mem = d
                .total_memory_bytes
                .map(|b| format!(", {:.1} GiB", b as f64 / (1u64 << 30) as f64))
                .unwrap_or_default();
            let _ = writeln!(s, "  cuda:{}: {}{}", d.index, d.name, mem);
        }
        let _ = writeln!(s, "CPU threads: {}", self.cpu_threads);
        let _ = writeln!(s, "CPU matrix products (MKL): {}", self.cpu_blas);
        s
    }
}

/// The folder holding the `libtorch_cpu` the process mapped, which tells an installed binary
/// from one still using the libtorch it was built against.
fn libtorch_folder() -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        // The path is the sixth field and may itself hold spaces.
        let path = line.splitn(6, char::is_whitespace).nth(5)?.trim_start();
        let file = std::path::Path::new(path);
        let name = file.file_name()?.to_str()?;
        name.starts_with("libtorch_cpu.").then(|| file.parent().map(std::path::Path::to_path_buf)).flatten()
    })
}

fn gpu_info(index: usize) -> GpuInfo {
    let (name, total_memory_bytes) = match cuda_driver_props(index) {
        Some((n, m)) => (n, Some(m)),
        None => (format!("CUDA device {index}"), None),
    };
    GpuInfo { index, name, total_memory_bytes }
}

/// The few CUDA driver API calls sdgen uses, loaded once from `libcuda.so.1`.
///
/// tch has no device-properties or memory-info call. The driver API has a stable C ABI and
/// numbers devices as the CUDA runtime does, so it is loaded at run time here.
struct Driver {
    device_get: unsafe extern "C" fn(*mut i32, i32) -> i32,
    device_get_name: unsafe extern "C" fn(*mut std::ffi::c_char, i32, i32) -> i32,
    device_total_mem: unsafe extern "C" fn(*mut usize, i32) -> i32,
    primary_ctx_retain: unsafe extern "C" fn(*mut *mut std::ffi::c_void, i32) -> i32,
    ctx_set_current: unsafe extern "C" fn(*mut std::ffi::c_void) -> i32,
    mem_get_info: unsafe extern "C" fn(*mut usize, *mut usize) -> i32,
}

fn driver() -> Option<&'static Driver> {
    static DRIVER: std::sync::OnceLock<Option<Driver>> = std::sync::OnceLock::new();
    DRIVER
        .get_or_init(|| {
            // SAFETY: the symbols are declared with the driver API's documented signatures.
            // The library is leaked, so the function pointers stay valid for the process.
            unsafe {
                let lib: &'static libloading::Library =
                    Box::leak(Box::new(libloading::Library::new("libcuda.so.1").ok()?));
                let init: libloading::Symbol<unsafe extern "C" fn(u32) -> i32> = lib.get(b"cuInit").ok()?;
                if init(0) != 0 {
                    return None;
                }
                Some(Driver {
                    device_get: *lib.get(b"cuDeviceGet").ok()?,
                    device_get_name: *lib.get(b"cuDeviceGetName").ok()?,
                    device_total_mem: *lib.get(b"cuDeviceTotalMem_v2").ok()?,
                    primary_ctx_retain: *lib.get(b"cuDevicePrimaryCtxRetain").ok()?,
                    ctx_set_current: *lib.get(b"cuCtxSetCurrent").ok()?,
                    mem_get_info: *lib.get(b"cuMemGetInfo_v2").ok()?,
                })
            }
        })
        .as_ref()
}

fn cuda_device(d: &Driver, index: usize) -> Option<i32> {
    let mut dev = 0i32;
    // SAFETY: `dev` is a valid out-pointer.
    (unsafe { (d.device_get)(&mut dev, index as i32) } == 0).then_some(dev)
}

/// Name and total memory of a device, read through the CUDA driver API.
fn cuda_driver_props(index: usize) -> Option<(String, u64)> {
    let d = driver()?;
    let dev = cuda_device(d, index)?;
    let mut buf = [0 as std::ffi::c_char; 256];
    let mut bytes = 0usize;
    // SAFETY: the name buffer is owned and its length passed; the driver writes a
    // NUL-terminated string into it. `bytes` is a valid out-pointer.
    unsafe {
        if (d.device_get_name)(buf.as_mut_ptr(), buf.len() as i32, dev) != 0
            || (d.device_total_mem)(&mut bytes, dev) != 0
        {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
        Some((name, bytes as u64))
    }
}

/// Makes device `index`'s primary context current on the calling thread, so that
/// [`cuda_used_memory`] can be called from it. `false` when CUDA cannot be reached.
pub fn bind_cuda_context(index: usize) -> bool {
    let Some(d) = driver() else { return false };
    let Some(dev) = cuda_device(d, index) else { return false };
    let mut ctx = std::ptr::null_mut();
    // SAFETY: `ctx` is a valid out-pointer; the retained primary context is never released
    // while the process runs, so it stays valid for this thread.
    unsafe { (d.primary_ctx_retain)(&mut ctx, dev) == 0 && (d.ctx_set_current)(ctx) == 0 }
}

/// Device memory in use (total − free, as nvidia-smi shows it) on the device whose context
/// [`bind_cuda_context`] made current on this thread.
pub fn cuda_used_memory() -> Option<u64> {
    let d = driver()?;
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: both are valid out-pointers, and the thread has a current context.
    (unsafe { (d.mem_get_info)(&mut free, &mut total) } == 0).then(|| (total - free) as u64)
}
