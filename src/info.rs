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
    pub devices: Vec<GpuInfo>,
    pub cpu_threads: i32,
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
            devices,
            cpu_threads: tch::get_num_threads(),
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "sdgen {}", self.sdgen_version);
        let _ = writeln!(s, "libtorch {}", self.libtorch_version);
        let _ = writeln!(
            s,
            "CUDA: {}{}",
            if self.cuda_available { "available" } else { "not available" },
            if self.cuda_linked { "" } else { " (this build is linked without libtorch_cuda)" }
        );
        let _ = writeln!(s, "cuDNN: {}", if self.cudnn_available { "available" } else { "not available" });
        let _ = writeln!(s, "CUDA devices: {}", self.devices.len());
        for d in &self.devices {
            let mem = d
                .total_memory_bytes
                .map(|b| format!(", {:.1} GiB", b as f64 / (1u64 << 30) as f64))
                .unwrap_or_default();
            let _ = writeln!(s, "  cuda:{}: {}{}", d.index, d.name, mem);
        }
        let _ = writeln!(s, "CPU threads: {}", self.cpu_threads);
        s
    }
}

fn gpu_info(index: usize) -> GpuInfo {
    let (name, total_memory_bytes) = match cuda_driver_props(index) {
        Some((n, m)) => (n, Some(m)),
        None => (format!("CUDA device {index}"), None),
    };
    GpuInfo { index, name, total_memory_bytes }
}

/// Name and total memory of a device, read through the CUDA driver API.
///
/// tch has no device-properties call. The driver API (`libcuda.so.1`) has a stable C ABI
/// and numbers devices as the CUDA runtime does, so it is loaded at run time here.
fn cuda_driver_props(index: usize) -> Option<(String, u64)> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type CuDeviceGetName = unsafe extern "C" fn(*mut std::ffi::c_char, i32, i32) -> i32;
    type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, i32) -> i32;
    // SAFETY: the symbols are declared with the signatures of the CUDA driver API, and the
    // buffers passed are owned and sized as each call expects.
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1").ok()?;
        let init: libloading::Symbol<CuInit> = lib.get(b"cuInit").ok()?;
        let get: libloading::Symbol<CuDeviceGet> = lib.get(b"cuDeviceGet").ok()?;
        let get_name: libloading::Symbol<CuDeviceGetName> = lib.get(b"cuDeviceGetName").ok()?;
        let total_mem: libloading::Symbol<CuDeviceTotalMem> = lib.get(b"cuDeviceTotalMem_v2").ok()?;
        if init(0) != 0 {
            return None;
        }
        let mut dev = 0i32;
        if get(&mut dev, index as i32) != 0 {
            return None;
        }
        let mut buf = [0 as std::ffi::c_char; 256];
        if get_name(buf.as_mut_ptr(), buf.len() as i32, dev) != 0 {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
        let mut bytes = 0usize;
        if total_mem(&mut bytes, dev) != 0 {
            return None;
        }
        Some((name, bytes as u64))
    }
}

/// Device memory in use on CUDA device `index` (total − free, as nvidia-smi shows it), read
/// through the CUDA driver API on the calling thread.
pub fn cuda_used_memory(index: usize) -> Option<u64> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type CuRetain = unsafe extern "C" fn(*mut *mut std::ffi::c_void, i32) -> i32;
    type CuSetCurrent = unsafe extern "C" fn(*mut std::ffi::c_void) -> i32;
    type CuMemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    // SAFETY: driver API symbols with their documented signatures; the primary context is
    // retained (never released while the process runs) so it stays valid for this thread.
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1").ok()?;
        let init: libloading::Symbol<CuInit> = lib.get(b"cuInit").ok()?;
        let get: libloading::Symbol<CuDeviceGet> = lib.get(b"cuDeviceGet").ok()?;
        let retain: libloading::Symbol<CuRetain> = lib.get(b"cuDevicePrimaryCtxRetain").ok()?;
        let set_current: libloading::Symbol<CuSetCurrent> = lib.get(b"cuCtxSetCurrent").ok()?;
        let mem_info: libloading::Symbol<CuMemGetInfo> = lib.get(b"cuMemGetInfo_v2").ok()?;
        if init(0) != 0 {
            return None;
        }
        let mut dev = 0i32;
        if get(&mut dev, index as i32) != 0 {
            return None;
        }
        let mut ctx = std::ptr::null_mut();
        if retain(&mut ctx, dev) != 0 || set_current(ctx) != 0 {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        if mem_info(&mut free, &mut total) != 0 {
            return None;
        }
        Some((total - free) as u64)
    }
}
