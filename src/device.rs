//! Device and dtype choice: parsing `auto|cpu|cuda[:N]` and `auto|fp32|fp16|bf16`.

use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;
use tch::{Device, Kind};

/// Where the models run, as the user asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DeviceChoice {
    /// CUDA device 0 when CUDA is available, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    /// The device to run on, or an error when a GPU was asked for and none can be used.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceChoice::Auto => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                if !tch::Cuda::is_available() {
                    return Err(Error::Device(format!(
                        "cuda:{n} was asked for but CUDA is not available (no GPU, no driver, or a CPU-only libtorch); \
                         use --device cpu, or install the CUDA libtorch with `SDGEN_CUDA=1 tools/setup.sh` and rebuild"
                    )));
                }
                let count = tch::Cuda::device_count() as usize;
                if n >= count {
                    return Err(Error::Device(format!(
                        "cuda:{n} was asked for but only {count} CUDA device(s) exist (cuda:0..cuda:{})",
                        count.saturating_sub(1)
                    )));
                }
                Ok(Device::Cuda(n))
            }
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid(format!("unknown device '{s}': use auto, cpu, cuda or cuda:N"));
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceChoice::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

/// A device's name as written in records (`cpu`, `cuda:0`).
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The floating-point precision of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// fp16 on CUDA, fp32 on the CPU.
    #[default]
    Auto,
    Fp32,
    Fp16,
    Bf16,
}

impl DType {
    pub fn resolve(self, device: Device) -> Kind {
        match self {
            DType::Auto => {
                if device.is_cuda() {
                    Kind::Half
                } else {
                    Kind::Float
                }
            }
            DType::Fp32 => Kind::Float,
            DType::Fp16 => Kind::Half,
            DType::Bf16 => Kind::BFloat16,
        }
    }
}

impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DType::Auto),
            "fp32" | "float32" | "f32" => Ok(DType::Fp32),
            "fp16" | "float16" | "f16" | "half" => Ok(DType::Fp16),
            "bf16" | "bfloat16" => Ok(DType::Bf16),
            _ => Err(Error::invalid(format!("unknown dtype '{s}': use auto, fp32, fp16 or bf16"))),
        }
    }
}

/// A kind's name as written in records.
pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Float => "fp32",
        Kind::Half => "fp16",
        Kind::BFloat16 => "bf16",
        Kind::Double => "fp64",
        _ => "other",
    }
}

/// Makes glibc's `malloc` keep freed memory for reuse instead of returning every large block
/// to the kernel. libtorch allocates each activation tensor afresh; blocks over 32 MiB (most
/// of SD's activations at 512²) are otherwise separate `mmap`s, so every UNet step pays
/// page faults and kernel zeroing for all of them again, measured at 10–20% of a CPU step.
/// With this, they come from the heap, which stays at the run's peak size (the peak itself
/// does not grow). Process-wide; the `sdgen` binary calls it first thing. Does nothing
/// outside glibc Linux.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(3));
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn auto_dtype_is_fp32_on_cpu() {
        assert_eq!(DType::Auto.resolve(Device::Cpu), Kind::Float);
        assert_eq!(DType::Auto.resolve(Device::Cuda(0)), Kind::Half);
        assert_eq!("bf16".parse::<DType>().unwrap(), DType::Bf16);
    }
}
