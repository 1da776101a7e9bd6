//! Seeded Gaussian noise that matches `torch.Generator("cpu").manual_seed(seed)` + `randn`.
//!
//! tch exposes only libtorch's global CPU generator. Each [`SeededNoise`] is one logical
//! generator: it remembers the shapes it has drawn, and if another stream used the global
//! generator in between, it re-seeds and replays its earlier draws to restore its place.
//! Draws are always fp32 on the CPU, so a seed gives the same noise on every device and dtype.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// A source of standard normal noise.
pub trait NoiseSource {
    /// A `shape` tensor of N(0, 1) values, drawn on the CPU in fp32, then moved to
    /// `device` and cast to `kind`.
    fn randn(&mut self, shape: &[i64], device: Device, kind: Kind) -> Tensor;
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Which stream last drew from the global generator (0: none, or unknown).
static OWNER: Mutex<u64> = Mutex::new(0);

/// One seeded CPU generator, as `torch.Generator("cpu").manual_seed(seed)`.
#[derive(Debug)]
pub struct SeededNoise {
    id: u64,
    seed: u64,
    history: Vec<Vec<i64>>,
}

impl SeededNoise {
    pub fn new(seed: u64) -> SeededNoise {
        SeededNoise { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), seed, history: Vec::new() }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl NoiseSource for SeededNoise {
    fn randn(&mut self, shape: &[i64], device: Device, kind: Kind) -> Tensor {
        let mut owner = OWNER.lock().unwrap_or_else(|e| e.into_inner());
        if *owner != self.id {
            // torch seeds with the full 64-bit value; tch takes i64 and passes the bits through.
            tch::manual_seed(self.seed as i64);
            for earlier in &self.history {
                let _ = Tensor::randn(earlier.as_slice(), (Kind::Float, Device::Cpu));
            }
            *owner = self.id;
        }
        let t = Tensor::randn(shape, (Kind::Float, Device::Cpu));
        self.history.push(shape.to_vec());
        t.to_device(device).to_kind(kind)
    }
}

impl Drop for SeededNoise {
    fn drop(&mut self) {
        let mut owner = OWNER.lock().unwrap_or_else(|e| e.into_inner());
        if *owner == self.id {
            *owner = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_streams_match_separate_ones() {
        let shape = [1i64, 4, 8, 8];
        let mut a = SeededNoise::new(7);
        let a1 = a.randn(&shape, Device::Cpu, Kind::Float);
        let a2 = a.randn(&shape, Device::Cpu, Kind::Float);

        let mut b = SeededNoise::new(7);
        let mut c = SeededNoise::new(8);
        let b1 = b.randn(&shape, Device::Cpu, Kind::Float);
        let _c1 = c.randn(&shape, Device::Cpu, Kind::Float);
        let b2 = b.randn(&shape, Device::Cpu, Kind::Float);
        assert!(a1.equal(&b1));
        assert!(a2.equal(&b2));
        assert!(!a1.equal(&a2));
    }
}
