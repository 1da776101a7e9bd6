//! Intel MKL's fast kernels on AMD CPUs.
//!
//! libtorch's x86-64 CPU builds link Intel MKL statically and run fp32 (and some bf16) matrix
//! products through it: `bmm`, `addmm`, `linear`, the blocks of the CPU flash attention, and
//! so sdgen's Winograd convolutions. MKL chooses its kernels by CPU *vendor* first: on a CPU
//! that does not say "GenuineIntel" it takes generic AVX2 kernels even where the CPU has
//! AVX-512, which on a 2-core AMD EPYC with AVX-512 measured 2–2.7× slower than the AVX-512 kernels
//! it runs on Intel CPUs (fp32 `bmm` at the UNet's Winograd shapes, 2 threads: 136–207 vs
//! 365–494 GFLOP/s; a whole SD 1.5 UNet step at 512²: 0.153 vs 0.299 steps/s).
//!
//! MKL asks `mkl_serv_intel_cpu_true()` which kind of CPU it runs on, through the dynamic
//! symbol table, so a definition in the executable is the one it calls. sdgen defines it here
//! (`build.rs` exports it from every binary of this package) and answers "Intel" on any x86-64
//! CPU that has AVX2 and FMA: MKL then picks among its Intel kernels by the CPU's feature
//! flags, as it does on Intel CPUs, so it never runs an instruction the CPU lacks. On Intel
//! CPUs nothing changes. Results are fp32 matrix products either way; only the order of the
//! sums differs, as between any two CPUs.
//!
//! `SDGEN_MKL_INTEL_KERNELS=0` (read once, when MKL first asks) gives MKL its own vendor
//! check back. A program that links the `sdgen` library from another package gets this only
//! if it exports the symbol too (`-C link-arg=-Wl,--export-dynamic-symbol=mkl_serv_intel_cpu_true`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The environment variable that turns the override off (`0`, `false`, `off` or `no`).
pub const ENV: &str = "SDGEN_MKL_INTEL_KERNELS";

/// Whether MKL has asked.
static ASKED: AtomicBool = AtomicBool::new(false);

/// MKL's question, answered for it (see the module documentation). It reads the environment
/// once and the CPU's identification, nothing else.
#[no_mangle]
pub extern "C" fn mkl_serv_intel_cpu_true() -> std::os::raw::c_int {
    ASKED.store(true, Ordering::Relaxed);
    std::os::raw::c_int::from(intel_kernels())
}

/// Whether MKL is told to use its Intel kernels: on Intel CPUs always (as MKL itself would),
/// elsewhere when the CPU has AVX2 and FMA and [`ENV`] does not turn it off.
pub fn intel_kernels() -> bool {
    static CHOICE: OnceLock<bool> = OnceLock::new();
    *CHOICE.get_or_init(|| genuine_intel() || (setting() != Some(false) && avx2_fma()))
}

/// [`ENV`] read as a switch: `Some(false)` for 0/false/off/no, `Some(true)` for 1/true/on/yes,
/// `None` when unset, empty or anything else.
fn setting() -> Option<bool> {
    let value = std::env::var(ENV).ok()?;
    match value.trim().to_ascii_lowercase().as_str() {
        "0" | "false" | "off" | "no" => Some(false),
        "1" | "true" | "on" | "yes" => Some(true),
        _ => None,
    }
}

/// A message when [`ENV`] is set to something that is not a switch (it is then ignored:
/// the override stays on), for the program to print at start.
pub fn env_problem() -> Option<String> {
    let value = std::env::var(ENV).ok()?;
    (setting().is_none() && !value.trim().is_empty())
        .then(|| format!("{ENV}={value:?} is not understood (use 0 to turn the override off, or 1); ignored"))
}

/// Whether MKL runs its AVX-512 kernels here: its Intel kernels on a CPU with AVX-512.
pub fn avx512_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        intel_kernels() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU's vendor string is "GenuineIntel".
pub fn genuine_intel() -> bool {
    cpu_vendor().as_deref() == Some("GenuineIntel")
}

/// The CPU's vendor string from `cpuid` (x86-64 only).
pub fn cpu_vendor() -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        // Leaf 0 (the vendor) exists on every x86-64 CPU.
        let r = std::arch::x86_64::__cpuid(0);
        let bytes: Vec<u8> = [r.ebx, r.edx, r.ecx].iter().flat_map(|w| w.to_le_bytes()).collect();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the running executable's definition of `mkl_serv_intel_cpu_true` is the one the
/// dynamic linker gives out (so MKL inside libtorch calls it), rather than MKL's own.
pub fn override_active() -> bool {
    #[cfg(target_os = "linux")]
    {
        // The program's own handle looks symbols up as the dynamic linker does for libtorch:
        // the executable first, then the libraries it loaded.
        let this = libloading::os::unix::Library::this();
        // SAFETY: only the symbol's address is read; it is never called through this type.
        let found = unsafe { this.get::<extern "C" fn() -> std::os::raw::c_int>(b"mkl_serv_intel_cpu_true\0") };
        found.is_ok_and(|f| std::ptr::fn_addr_eq(*f, mkl_serv_intel_cpu_true as extern "C" fn() -> std::os::raw::c_int))
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Whether MKL has asked (it asks when it first runs a matrix product).
pub fn asked() -> bool {
    ASKED.load(Ordering::Relaxed)
}

/// One line for `sdgen info`.
pub fn describe() -> String {
    let vendor = cpu_vendor().unwrap_or_else(|| "not x86-64".into());
    if !override_active() {
        return format!("MKL's own choice ({vendor}; this binary does not export sdgen's override)");
    }
    let asked = if asked() { ", asked by MKL" } else { "" };
    if genuine_intel() {
        format!("Intel kernels ({vendor}{asked})")
    } else if intel_kernels() {
        format!("Intel kernels on {vendor} (sdgen's override{asked}; {ENV}=0 turns it off)")
    } else {
        format!("generic kernels on {vendor} (no AVX2/FMA, or {ENV}=0{asked})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_follows_the_cpu() {
        // On Intel CPUs the answer is MKL's own; elsewhere it needs AVX2 and FMA.
        let answer = mkl_serv_intel_cpu_true() == 1;
        assert_eq!(answer, intel_kernels());
        if genuine_intel() {
            assert!(answer);
        }
        if !avx2_fma() {
            assert_eq!(answer, genuine_intel());
        }
    }
}
