//! What sdgen does on CUDA beyond tch's bindings: the C++ shim (`graphs.cpp`, built by
//! `build.rs`, loaded at run time by [`shim`]) and the CUDA-graph runner for the UNet step
//! ([`graphs`]). Nothing here runs, or loads a CUDA library, unless a model is on CUDA.

pub mod graphs;
pub mod shim;

pub use graphs::{GraphKey, GraphRunner, GraphStats};

/// What a pipeline may do on CUDA beyond plain eager libtorch. None of it changes an image
/// beyond float rounding, so records do not carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CudaOptions {
    /// Capture the UNet step as a CUDA graph per input shape and replay it (`--no-cuda-graphs`
    /// turns it off). Ignored on the CPU.
    pub graphs: bool,
    /// Store the UNet's (and the VAE decoder's) convolution kernels and activations
    /// channels-last (NHWC), the layout of cuDNN's fastest fp16 kernels. Not CUDA-only: on the
    /// CPU it gives the same images (float rounding), only not faster, and tests use it there.
    pub channels_last: bool,
    /// fp16 GEMMs accumulate in fp16 in cuBLAS (`torch.backends.cuda.matmul.
    /// allow_fp16_accumulation`): faster, less exact. Set only around UNet calls on CUDA.
    pub fp16_accumulation: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions { graphs: true, channels_last: false, fp16_accumulation: false }
    }
}

/// Runs `f` with cuBLAS fp16 accumulation on, putting the previous setting back after (the
/// flag is libtorch's and process-wide; the library keeps no setting of its own). On a
/// machine where the shim cannot load it says why, once per call site's caller, and runs `f`
/// as it is.
pub(crate) fn with_fp16_accumulation<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let shim = shim::Shim::get()?;
    let before = shim.fp16_accumulation()?;
    shim.set_fp16_accumulation(true)?;
    struct Restore(&'static shim::Shim, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = self.0.set_fp16_accumulation(self.1);
        }
    }
    let _restore = Restore(shim, before);
    Ok(f())
}
