//! `nn.Conv2d`, with faster CPU algorithms for the shapes where libtorch's own convolution
//! is slow in fp32.
//!
//! libtorch runs every CPU convolution through oneDNN's direct algorithm. It reaches the
//! GEMM speed of the machine on large feature maps with few channels (the UNet's 64×64×320
//! level), but on small maps with many channels (the 16×16×1280 and 8×8×1280 levels) it
//! runs at a third to a half of that. Measured on a 2-core Xeon (Sapphire Rapids) with
//! `examples/conv_speed.rs`; the figures are in the notes of the change that added this file.
//! On the CPU in fp32, sdgen therefore picks per layer:
//!
//! - 1×1 convolutions: one batched GEMM (`baddbmm`) on the `[channels, h·w]` view, with no
//!   layout copies.
//! - 3×3, stride 1, at least [`Thresholds::min_channels`] channels on one side and half that
//!   on the other (320 where MKL runs its AVX-512 kernels, 640 elsewhere): Winograd's
//!   F(2×2, 3×3) algorithm. Its 16 batched GEMMs do 4/9 of the multiplications of the
//!   direct algorithm; the input and output transforms are additions only. The transformed
//!   weights (`[16, out, in]`, 16/9 the size of the kernel) are computed in f64 and rounded
//!   to f32 when the layer first runs (so loading only maps the file), and replace the kernel,
//!   whose mapped pages are then dropped.
//! - In models whose layers run on [`FeatureMaps::Large`] maps (the VAE: up to the image's
//!   size at 128–512 channels), where oneDNN is near the GEMM speed and only fewer
//!   multiplications help: 3×3, stride 1 layers with at least
//!   [`Thresholds::large_maps_min_channels`] channels on both sides (128 where MKL runs its
//!   AVX-512 kernels, 512 elsewhere) run as Winograd F(4×4, 3×3) (`winograd.rs`: 36 products per 16
//!   outputs, a quarter of direct's; weights 4× the kernel's size, made on first use as
//!   above: about 0.6 GB more for SD's VAE decoder).
//! - Any other convolution whose output is at most [`IM2COL_MAX_POSITIONS`] positions:
//!   im2col and one GEMM.
//! - Everything else, and every convolution on a GPU or in fp16: libtorch's `conv2d`.
//!
//! In bf16 on the CPU, 1×1 convolutions and the same Winograd layers run with bf16 GEMMs
//! (oneDNN's, which use AVX512-BF16 dot products or AMX tiles where the CPU has them,
//! accumulating in f32); Winograd's transforms read and write bf16 but compute in f32, and
//! only F(2×2) is used. im2col is not: oneDNN's bf16 convolution beats it on the small
//! stride-2 layers. Measured with `examples/bf16_speed.rs` on an AMD EPYC with
//! AVX512-BF16, one thread, SD 1.5 at 256²: Winograd 1.3–2.5× oneDNN's bf16 convolution
//! on every 3×3 layer it takes (0.9× on the 320→320 ones it leaves), GEMM 1.0–5.9×.
//!
//! All of these compute the same sums as the direct convolution, in a different order, so
//! results agree with it to float rounding (the tests bound the difference); the choice is
//! fixed per layer and input size, so a run repeats bit for bit.

use crate::loading::{MappedPages, Weights};
use crate::models::winograd::{self, Tile};
use crate::Result;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// Which layers [`ConvAlgo::Auto`] runs as Winograd on the CPU: 3×3, stride 1 layers with
/// at least `min_channels` input or output channels and half as many on the other side (on
/// [`FeatureMaps::Small`] maps, F(2×2)), and those with at least `large_maps_min_channels` on
/// both sides (on [`FeatureMaps::Large`] maps, [`LARGE_MAPS_TILE`]).
///
/// Winograd trades multiplications for MKL GEMMs (its batched products run on MKL) against
/// oneDNN's direct convolution, so the break-even depends on MKL's kernels:
/// [`Thresholds::AVX512`] where MKL runs its AVX-512 kernels (Intel CPUs, and AMD CPUs with
/// AVX-512 through `crate::mkl`), [`Thresholds::GENERIC`] elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub min_channels: i64,
    pub large_maps_min_channels: i64,
}

impl Thresholds {
    /// Measured with `examples/conv_speed.rs` on a 2-core AMD EPYC with AVX-512 and MKL's
    /// AVX-512 kernels: F(2×2) is 1.5–1.7× direct on SD 1.5's 320→320 layers (and 1.6–2.6× on
    /// the wider ones), F(4×4) 1.4–2.3× direct on every VAE decoder layer from 128 channels up
    /// (512² decode shapes).
    pub const AVX512: Thresholds = Thresholds { min_channels: 320, large_maps_min_channels: 128 };
    /// With MKL's generic AVX2 kernels (measured on the same AMD EPYC before sdgen chose MKL's
    /// kernels, and on a Sapphire Rapids Xeon when the transforms ran on threads of their
    /// own): narrower layers lose, the transforms costing more than the GEMMs save; on the
    /// VAE, F(4×4) was 1.1–1.4× direct at 512 channels and no faster at 256 or 128.
    pub const GENERIC: Thresholds = Thresholds { min_channels: 640, large_maps_min_channels: 512 };

    /// bf16 GEMMs run on oneDNN, not MKL, so bf16 keeps the rule measured for it with
    /// `examples/bf16_speed.rs` (AMD EPYC, AVX512-BF16): Winograd from 640 channels; on the
    /// 320→320 layers it measured 0.9–1.17× oneDNN's bf16 convolution, within noise of a whole
    /// step, for more rounding. (bf16 never takes the large tiles.)
    pub const BF16: Thresholds = Thresholds { min_channels: 640, large_maps_min_channels: i64::MAX };

    /// The thresholds for convolutions in `kind` with this process's MKL kernels.
    pub fn for_this_cpu(kind: Kind) -> Thresholds {
        if kind == Kind::BFloat16 {
            Thresholds::BF16
        } else if crate::mkl::avx512_kernels() {
            Thresholds::AVX512
        } else {
            Thresholds::GENERIC
        }
    }
}

/// Convolutions (that are not Winograd's) with at most this many output positions per
/// image run as im2col + GEMM on the CPU in fp32.
pub const IM2COL_MAX_POSITIONS: i64 = 64;

/// The Winograd tile of the layers of [`FeatureMaps::Large`] models that take Winograd.
pub const LARGE_MAPS_TILE: Tile = Tile::F4;

/// The feature maps a model's convolutions mostly run on, which decide
/// [`ConvAlgo::Auto`]'s choice ([`Weights::set_feature_maps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeatureMaps {
    /// The UNet's: the latent's size and smaller, with the most channels on the smallest.
    #[default]
    Small,
    /// The VAE's: up to the image's size, with 128–512 channels.
    Large,
}

/// Which algorithm CPU fp32 and bf16 convolutions use. GPU and fp16 runs always use
/// libtorch's convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvAlgo {
    /// Winograd for wide 3×3 layers, GEMM for 1×1 and small maps, libtorch otherwise.
    /// The Winograd weights take 16/9 the memory of the kernels they replace.
    #[default]
    Auto,
    /// libtorch's convolution everywhere: the least memory.
    Direct,
    /// Winograd for every 3×3 stride-1 convolution however narrow, with the tile `Auto`
    /// would use for the model's feature maps (for tests and measurements), GEMM for 1×1.
    Winograd,
}

impl ConvAlgo {
    pub const ALL: [ConvAlgo; 3] = [ConvAlgo::Auto, ConvAlgo::Direct, ConvAlgo::Winograd];

    pub fn parse(s: &str) -> Result<ConvAlgo> {
        ConvAlgo::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = ConvAlgo::ALL.iter().map(|a| a.name()).collect();
            crate::Error::invalid(format!("unknown convolution algorithm '{s}'; use one of: {}", names.join(", ")))
        })
    }

    pub fn is_auto(&self) -> bool {
        *self == ConvAlgo::Auto
    }

    pub fn name(self) -> &'static str {
        match self {
            ConvAlgo::Auto => "auto",
            ConvAlgo::Direct => "direct",
            ConvAlgo::Winograd => "winograd",
        }
    }
}

/// The kernel in the form its algorithm wants.
#[derive(Debug)]
enum Kernel {
    /// `[out, in, k, k]` for libtorch's convolution (and im2col on small maps).
    Direct { weight: Tensor, gemm_small: bool },
    /// A 1×1 kernel as an `[out, in]` matrix.
    Pointwise(Tensor),
    /// Winograd weights `[t², out, in]` (t = 4 for F(2×2, 3×3)), index `t·a + b` for
    /// `G·w·Gᵀ[a, b]`, computed from the kernel when the layer first runs.
    Winograd(Deferred),
}

/// Winograd weights made on first use, so that loading a model only maps its files.
#[derive(Debug)]
struct Deferred {
    tile: Tile,
    state: Mutex<Prepared>,
}

#[derive(Debug)]
enum Prepared {
    /// The `[out, in, 3, 3]` kernel; `pages`, where it is a mapped weight, are its bytes,
    /// dropped from memory once the transformed weights are made.
    Kernel {
        weight: Tensor,
        pages: Option<MappedPages>,
    },
    Transformed(Tensor),
}

impl Deferred {
    fn new(tile: Tile, weight: Tensor, pages: Option<MappedPages>) -> Deferred {
        Deferred { tile, state: Mutex::new(Prepared::Kernel { weight, pages }) }
    }

    fn ready(tile: Tile, u: Tensor) -> Deferred {
        Deferred { tile, state: Mutex::new(Prepared::Transformed(u)) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Prepared> {
        // A panic while transforming leaves the kernel in place: the state stays valid.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The transformed weights, made now if this is the first use.
    fn weights(&self) -> Tensor {
        let mut state = self.state();
        if let Prepared::Kernel { weight, pages } = &*state {
            // In the layer's dtype: bf16 weights give bf16 GEMMs.
            let u = winograd::weights(weight, self.tile).to_kind(weight.kind());
            if let Some(pages) = pages {
                pages.release();
            }
            *state = Prepared::Transformed(u);
        }
        match &*state {
            Prepared::Transformed(u) => u.shallow_clone(),
            Prepared::Kernel { .. } => unreachable!("transformed above"),
        }
    }

    /// The same weights, tensors shared.
    fn share(&self) -> Deferred {
        let state = match &*self.state() {
            Prepared::Kernel { weight, pages } => {
                Prepared::Kernel { weight: weight.shallow_clone(), pages: pages.clone() }
            }
            Prepared::Transformed(u) => Prepared::Transformed(u.shallow_clone()),
        };
        Deferred { tile: self.tile, state: Mutex::new(state) }
    }
}

/// A convolution's kernel saved before an adapter patched it.
#[derive(Debug)]
pub(crate) struct KernelSnapshot(Kernel);

/// `nn.Conv2d` with square kernels, equal stride and padding on both axes.
#[derive(Debug)]
pub struct Conv2d {
    kernel: Kernel,
    bias: Option<Tensor>,
    in_channels: i64,
    out_channels: i64,
    size: i64,
    stride: i64,
    padding: i64,
    /// The kernel is stored channels-last ([`Conv2d::make_channels_last`]).
    nhwc: bool,
}

impl Conv2d {
    pub fn load(w: &Weights, in_ch: i64, out_ch: i64, kernel_size: i64, stride: i64, padding: i64) -> Result<Conv2d> {
        let shape = [out_ch, in_ch, kernel_size, kernel_size];
        let bias = Some(w.get("bias", &[out_ch])?);
        let algo = w.conv_algo();
        let tile = winograd_tile(algo, w.feature_maps(), &shape, stride, padding, w.kind());
        if let (Some(tile), Device::Cpu) = (tile, w.device()) {
            // The kernel is only read to make the transformed weights, which replace it.
            let (weight, pages) = w.get_with_pages("weight", &shape)?;
            let kernel = Kernel::Winograd(Deferred::new(tile, weight, pages));
            return Ok(Conv2d {
                kernel,
                bias,
                in_channels: in_ch,
                out_channels: out_ch,
                size: kernel_size,
                stride,
                padding,
                nhwc: false,
            });
        }
        Ok(Conv2d::new(w.get("weight", &shape)?, bias, stride, padding, algo))
    }

    /// A 3×3, stride 1, padding 1 convolution that runs as Winograd with `tile` on the CPU in
    /// fp32 (for tests and measurements), its weights transformed now.
    pub fn with_winograd(weight: Tensor, bias: Option<Tensor>, tile: Tile) -> Conv2d {
        let s = weight.size();
        assert!(s.len() == 4 && s[2] == 3 && s[3] == 3, "Winograd needs a 3x3 kernel, got {s:?}");
        let u = winograd::weights(&weight, tile).to_kind(weight.kind());
        let kernel = Kernel::Winograd(Deferred::ready(tile, u));
        Conv2d { kernel, bias, in_channels: s[1], out_channels: s[0], size: 3, stride: 1, padding: 1, nhwc: false }
    }

    /// A convolution from a `[out, in, k, k]` kernel, with its algorithm chosen by `algo`,
    /// the kernel's device and dtype, and its shape.
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: i64, padding: i64, algo: ConvAlgo) -> Conv2d {
        let s = weight.size();
        let (out_channels, in_channels, size) = (s[0], s[1], s[2]);
        let cpu = weight.device() == Device::Cpu;
        let fast = cpu && fast_kind(weight.kind()) && algo != ConvAlgo::Direct;
        let kernel = if cpu && winograd_tile(algo, FeatureMaps::Small, &s, stride, padding, weight.kind()).is_some() {
            let u = winograd_weights(&weight).to_kind(weight.kind());
            Kernel::Winograd(Deferred::ready(Tile::F2, u))
        } else if fast && size == 1 && s[3] == 1 && padding == 0 {
            Kernel::Pointwise(weight.reshape([out_channels, in_channels]))
        } else {
            // im2col in fp32 only: in bf16 oneDNN's convolution is faster on small maps.
            let gemm_small = fast && weight.kind() == Kind::Float;
            Kernel::Direct { weight, gemm_small }
        };
        Conv2d { kernel, bias, in_channels, out_channels, size, stride, padding, nhwc: false }
    }

    /// Stores a kernel that libtorch's convolution runs (not the CPU's own Winograd or GEMM
    /// forms) channels-last, so that cuDNN runs NHWC kernels on NHWC activations without
    /// transposing; the values do not change.
    pub(crate) fn make_channels_last(&mut self) {
        // `gemm_small` kernels are the CPU's im2col GEMMs, which read the kernel as a matrix.
        if let Kernel::Direct { weight, gemm_small: false } = &mut self.kernel {
            *weight = crate::models::nn::channels_last(weight);
            self.nhwc = true;
        }
    }

    /// `[out, in, k, k]`.
    pub fn kernel_shape(&self) -> [i64; 4] {
        [self.out_channels, self.in_channels, self.size, self.size]
    }

    /// The kernel as it is now (tensors shared, not copied), to put back with [`Conv2d::restore`].
    pub(crate) fn snapshot(&self) -> KernelSnapshot {
        KernelSnapshot(match &self.kernel {
            Kernel::Direct { weight, gemm_small } => {
                Kernel::Direct { weight: weight.shallow_clone(), gemm_small: *gemm_small }
            }
            Kernel::Pointwise(m) => Kernel::Pointwise(m.shallow_clone()),
            Kernel::Winograd(d) => Kernel::Winograd(d.share()),
        })
    }

    pub(crate) fn restore(&mut self, snapshot: KernelSnapshot) {
        self.kernel = snapshot.0;
    }

    /// Adds `delta` (`[out, in, k, k]`, any dtype and device) to the kernel, into a new
    /// tensor: the current one may be a read-only mapped weight. The kernel stays in the form
    /// its algorithm wants; Winograd's transform is linear, so the transformed delta is added
    /// to the transformed weights.
    pub(crate) fn add_delta(&mut self, delta: &Tensor) {
        let plus = |w: &Tensor, d: &Tensor| {
            (w.to_kind(Kind::Float) + d.to_device(w.device()).to_kind(Kind::Float)).to_kind(w.kind())
        };
        self.kernel = match &self.kernel {
            Kernel::Direct { weight, gemm_small } => {
                Kernel::Direct { weight: plus(weight, &delta.reshape(weight.size())), gemm_small: *gemm_small }
            }
            Kernel::Pointwise(m) => Kernel::Pointwise(plus(m, &delta.reshape(m.size()))),
            Kernel::Winograd(d) => {
                let state = match &*d.state() {
                    Prepared::Kernel { weight, .. } => {
                        Prepared::Kernel { weight: plus(weight, &delta.reshape(weight.size())), pages: None }
                    }
                    Prepared::Transformed(u) => Prepared::Transformed(plus(u, &winograd::weights(delta, d.tile))),
                };
                Kernel::Winograd(Deferred { tile: d.tile, state: Mutex::new(state) })
            }
        };
    }

    /// Which algorithm this layer runs on an input of `height × width` (for tests and the
    /// speed example).
    pub fn algorithm(&self, height: i64, width: i64) -> &'static str {
        match &self.kernel {
            Kernel::Winograd(d) => d.tile.name(),
            Kernel::Pointwise(_) => "gemm",
            Kernel::Direct { gemm_small: true, .. } if self.small(height, width) => "im2col",
            Kernel::Direct { .. } => "direct",
        }
    }

    fn out_size(&self, n: i64) -> i64 {
        (n + 2 * self.padding - self.size) / self.stride + 1
    }

    fn small(&self, height: i64, width: i64) -> bool {
        self.out_size(height) * self.out_size(width) <= IM2COL_MAX_POSITIONS
    }

    /// `[n, in, h, w]` → `[n, out, h', w']`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (n, _, h, w) = x.size4().expect("conv2d expects [batch, channels, height, width]");
        match &self.kernel {
            Kernel::Winograd(d) => winograd::conv(x, &d.weights(), self.bias.as_ref(), d.tile),
            Kernel::Pointwise(m) => {
                let y = self.pointwise(m, &x.reshape([n, self.in_channels, h * w]), false);
                y.view([n, self.out_channels, h, w])
            }
            Kernel::Direct { weight, gemm_small } if *gemm_small && self.small(h, w) => {
                let (oh, ow) = (self.out_size(h), self.out_size(w));
                let k = [self.size, self.size];
                let cols = x.im2col(k, [1, 1], [self.padding, self.padding], [self.stride, self.stride]);
                let m = weight.view([self.out_channels, -1]);
                self.pointwise(&m, &cols, false).view([n, self.out_channels, oh, ow])
            }
            Kernel::Direct { weight, .. } => {
                x.conv2d(weight, self.bias.as_ref(), [self.stride], [self.padding], [1], 1)
            }
        }
    }

    /// `m · x[i] + bias` for each image: `x` is `[n, k, positions]` (or, with `tokens`,
    /// `[n, positions, k]`, giving `[n, positions, out]`).
    fn pointwise(&self, m: &Tensor, x: &Tensor, tokens: bool) -> Tensor {
        let n = x.size()[0];
        let out = self.out_channels;
        if tokens {
            let mt = m.tr().expand([n, -1, out], false);
            match &self.bias {
                Some(b) => b.view([1, 1, out]).baddbmm(x, &mt, 1, 1),
                None => x.bmm(&mt),
            }
        } else {
            let me = m.expand([n, out, -1], false);
            match &self.bias {
                Some(b) => b.view([1, out, 1]).baddbmm(&me, x, 1, 1),
                None => me.bmm(x),
            }
        }
    }

    /// The 1×1 matrix, when this layer runs as a GEMM on the CPU.
    fn matrix(&self) -> Option<&Tensor> {
        match &self.kernel {
            Kernel::Pointwise(m) => Some(m),
            _ => None,
        }
    }

    /// A 1×1 convolution straight into token layout: `[n, in, h, w]` → `[n, h·w, out]`,
    /// without the permute-and-copy that `forward` followed by a reshape would need.
    pub fn forward_to_tokens(&self, x: &Tensor) -> Tensor {
        let (n, c, h, w) = x.size4().expect("conv2d expects [batch, channels, height, width]");
        match self.matrix() {
            // A view of NCHW input; channels-last input is copied (the CPU's GEMM wants NCHW).
            Some(m) => self.pointwise(m, &x.reshape([n, c, h * w]).transpose(1, 2), true),
            None => self.forward(x).permute([0, 2, 3, 1]).reshape([n, h * w, self.out_channels]),
        }
    }

    /// A 1×1 convolution from token layout: `[n, h·w, in]` → `[n, out, h, w]`.
    pub fn forward_from_tokens(&self, t: &Tensor, h: i64, w: i64) -> Tensor {
        let (n, _, c) = t.size3().expect("tokens are [batch, positions, channels]");
        match self.matrix() {
            Some(m) => self.pointwise(m, &t.transpose(1, 2), false).view([n, self.out_channels, h, w]),
            // Tokens `[n, h·w, c]` are already NHWC memory: a channels-last kernel takes the view.
            None if self.nhwc => self.forward(&t.reshape([n, h, w, c]).permute([0, 3, 1, 2])),
            None => self.forward(&t.reshape([n, h, w, c]).permute([0, 3, 1, 2]).contiguous()),
        }
    }
}

/// `G · v` for F(2×2, 3×3)'s kernel transform `G` = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]].
fn g_times(v: [f64; 3]) -> [f64; 4] {
    let even = v[0] + v[2];
    [v[0], 0.5 * (even + v[1]), 0.5 * (even - v[1]), v[2]]
}

/// Whether the fast CPU algorithms (Winograd, GEMM, im2col) run in this dtype: fp32, and
/// bf16, whose GEMMs oneDNN runs with the CPU's bf16 dot products (AVX512-BF16, AMX).
fn fast_kind(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::BFloat16)
}

/// Whether a CPU convolution with this `[out, in, k, k]` kernel in `kind` runs as Winograd,
/// and with which tile.
///
/// bf16 takes F(2×2) only, on the same layers as fp32: the large tiles' transforms amplify
/// rounding, which bf16's 8 bits cannot afford, so on the VAE's large maps `Auto` leaves
/// bf16 to oneDNN.
fn winograd_tile(
    algo: ConvAlgo,
    maps: FeatureMaps,
    shape: &[i64],
    stride: i64,
    padding: i64,
    kind: Kind,
) -> Option<Tile> {
    winograd_tile_with(Thresholds::for_this_cpu(kind), algo, maps, shape, stride, padding, kind)
}

fn winograd_tile_with(
    limits: Thresholds,
    algo: ConvAlgo,
    maps: FeatureMaps,
    shape: &[i64],
    stride: i64,
    padding: i64,
    kind: Kind,
) -> Option<Tile> {
    let (fewer, more) = (shape[0].min(shape[1]), shape[0].max(shape[1]));
    if !(fast_kind(kind) && shape[2] == 3 && shape[3] == 3 && stride == 1 && padding == 1) {
        return None;
    }
    let bf16 = kind == Kind::BFloat16;
    match (algo, maps) {
        (ConvAlgo::Direct, _) => None,
        (ConvAlgo::Winograd, FeatureMaps::Small) => Some(Tile::F2),
        (ConvAlgo::Winograd, FeatureMaps::Large) => Some(if bf16 { Tile::F2 } else { LARGE_MAPS_TILE }),
        (ConvAlgo::Auto, FeatureMaps::Small) => {
            (fewer >= limits.min_channels / 2 && more >= limits.min_channels).then_some(Tile::F2)
        }
        (ConvAlgo::Auto, FeatureMaps::Large) => {
            (!bf16 && fewer >= limits.large_maps_min_channels).then_some(LARGE_MAPS_TILE)
        }
    }
}

/// `U[4a + b] = (G · w · Gᵀ)[a, b]` for every (out, in) pair: `[out, in, 3, 3]` → `[16, out, in]`
/// in fp32 on the CPU, computed in f64 and rounded once.
pub(crate) fn winograd_weights(weight: &Tensor) -> Tensor {
    let s = weight.size();
    assert!(s.len() == 4 && s[2] == 3 && s[3] == 3, "Winograd F(2x2, 3x3) needs a 3x3 kernel, got {s:?}");
    let w = weight.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let pairs = (s[0] * s[1]) as usize;
    let u = Tensor::empty([16, s[0], s[1]], (Kind::Float, Device::Cpu));
    // SAFETY: `w` is a contiguous fp32 CPU tensor of pairs·9 elements that outlives `src`.
    let src = unsafe { std::slice::from_raw_parts(w.data_ptr() as *const f32, pairs * 9) };
    // Each pair writes one element in each of the 16 planes of the fresh `u`, so threads
    // share it by pointer and each writes only its own pairs.
    let planes = SharedMut(u.data_ptr() as *mut f32);
    const BLOCK: usize = 512;
    parallel(pairs, |range| {
        // A block of pairs at a time into a local buffer, then one contiguous run per plane.
        let mut buf = vec![[0f32; BLOCK]; 16];
        let mut start = range.start;
        while start < range.end {
            let len = BLOCK.min(range.end - start);
            for q in 0..len {
                let k = &src[9 * (start + q)..9 * (start + q) + 9];
                let k = |i: usize, j: usize| f64::from(k[3 * i + j]);
                // Columns of G·k (4×3), then each of its rows times Gᵀ.
                let cols = [0, 1, 2].map(|j| g_times([k(0, j), k(1, j), k(2, j)]));
                for a in 0..4 {
                    let row = g_times([cols[0][a], cols[1][a], cols[2][a]]);
                    for (b, v) in row.iter().enumerate() {
                        buf[4 * a + b][q] = *v as f32;
                    }
                }
            }
            for (plane, values) in buf.iter().enumerate() {
                // SAFETY: start + len <= pairs and plane < 16, so inside `u`; the pairs
                // start..start+len are this thread's.
                unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), planes.ptr().add(plane * pairs + start), len) };
            }
            start += len;
        }
    });
    u.to_device(weight.device())
}

/// Winograd F(2×2, 3×3) convolution, padding 1, stride 1: `x` `[n, c, h, w]` (fp32, CPU),
/// `u` from [`winograd_weights`], any `h` and `w` (odd sizes get one extra tile row or column).
///
/// The input transform writes each 4×4 tile's `Bᵀ·d·B` into 16 planes `[16, c, tiles]`, one
/// batched GEMM with `u` gives `[16, out, tiles]`, and the output transform turns each tile's
/// 16 values into its 2×2 outputs (`Aᵀ·m·A`, plus the bias) straight into the image. The two
/// transforms are plain loops over the tensors' memory, one pass each, split over libtorch's
/// intra-op threads.
///
/// In bf16 (`x` and `u` both bf16) the transforms read and write bf16 and compute in f32,
/// and the GEMMs are bf16 GEMMs with f32 accumulation (oneDNN's), so the result is the
/// direct convolution's to bf16 rounding of the transformed values.
pub(crate) fn winograd_conv(x: &Tensor, u: &Tensor, bias: Option<&Tensor>) -> Tensor {
    match x.kind() {
        Kind::BFloat16 => winograd_conv_in::<half::bf16>(x, u, bias),
        _ => winograd_conv_in::<f32>(x, u, bias),
    }
}

fn winograd_conv_in<T: Element>(x: &Tensor, u: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let (n, c, h, w) = x.size4().expect("conv2d expects [batch, channels, height, width]");
    assert!(x.kind() == T::KIND && x.device() == Device::Cpu, "Winograd in {:?} got a {:?} tensor", T::KIND, x.kind());
    assert!(u.kind() == T::KIND, "Winograd weights in {:?} for a {:?} input", u.kind(), T::KIND);
    // The transforms below read raw memory: these checks keep every read inside its tensor.
    let us = u.size();
    assert!(us.len() == 3 && us[0] == 16 && us[2] == c, "Winograd weights {us:?} do not fit {c} input channels");
    let o = us[1];
    if let Some(b) = bias {
        assert!(b.numel() == o as usize, "bias of {} values for {o} output channels", b.numel());
    }
    let (th, tw) = ((h + 1) / 2, (w + 1) / 2);
    let tiles = n * th * tw;
    let x = x.contiguous();
    let v = Tensor::empty([16, c, tiles], (T::KIND, Device::Cpu));
    let geometry = Geometry { n: n as usize, h: h as usize, w: w as usize, th: th as usize, tw: tw as usize };
    // SAFETY: `x` is a contiguous CPU tensor of T with n·c·h·w elements and `v` a fresh one
    // of 16·c·tiles; each thread writes only its own channels' elements of `v`.
    unsafe { geometry.input_transform(x.data_ptr() as *const T, c as usize, SharedMut(v.data_ptr() as *mut T)) };
    let m = u.bmm(&v);
    drop(v);
    let bias = bias.map(|b| b.to_kind(Kind::Float).contiguous());
    let out = Tensor::empty([n, o, h, w], (T::KIND, Device::Cpu));
    let bias_values = bias.as_ref().map(|b| b.data_ptr() as *const f32);
    // SAFETY: `m` is a contiguous CPU tensor of T with 16·o·tiles elements (fresh from bmm),
    // `bias` has o f32 elements, `out` is fresh with n·o·h·w; threads write disjoint channels.
    unsafe {
        geometry.output_transform(
            m.data_ptr() as *const T,
            bias_values,
            o as usize,
            SharedMut(out.data_ptr() as *mut T),
        )
    };
    out
}

/// An element type the Winograd transforms read and write (they compute in f32).
pub(crate) trait Element: Copy + Send + Sync + 'static {
    const KIND: Kind;
    fn to_f32(self) -> f32;
    fn from_f32(value: f32) -> Self;
}

impl Element for f32 {
    const KIND: Kind = Kind::Float;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(value: f32) -> f32 {
        value
    }
}

impl Element for half::bf16 {
    const KIND: Kind = Kind::BFloat16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    /// Rounded to nearest, ties to even, as libtorch rounds.
    #[inline(always)]
    fn from_f32(value: f32) -> half::bf16 {
        half::bf16::from_f32(value)
    }
}

/// A pointer that threads write through at disjoint offsets.
pub(crate) struct SharedMut<T = f32>(pub(crate) *mut T);
// SAFETY: only used for writes to disjoint elements by scoped threads that are joined.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    pub(crate) fn ptr(self) -> *mut T {
        self.0
    }
}

/// Runs `f` on `0..len` split into one contiguous range per intra-op thread.
///
/// The ranges run on libtorch's own OpenMP threads (libgomp's `GOMP_parallel`, looked up in
/// the running process), as libtorch's kernels do: threads of sdgen's own would compete for
/// the cores with OpenMP's, which spin for a while after each libtorch kernel, and cost a
/// thread start per call. Without libgomp in the process, scoped threads do the same work.
pub(crate) fn parallel(len: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let threads = (tch::get_num_threads().max(1) as usize).min(len.max(1));
    let chunk = len.div_ceil(threads);
    // Part `t`'s range, empty (never reversed) where the parts outnumber the chunks.
    let part = |t: usize| (t * chunk).min(len)..((t + 1) * chunk).min(len);
    if threads <= 1 {
        f(0..len);
        return;
    }
    if let Some(omp) = openmp::get() {
        omp.run(threads, &|t| f(part(t)));
        return;
    }
    std::thread::scope(|scope| {
        for t in 1..threads {
            let (f, range) = (&f, part(t));
            scope.spawn(move || f(range));
        }
        f(part(0));
    });
}

/// libgomp's entry points, from the libgomp that libtorch loaded.
mod openmp {
    use std::ffi::{c_int, c_uint, c_void};
    use std::sync::OnceLock;

    type Parallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
    type Query = unsafe extern "C" fn() -> c_int;

    pub(super) struct OpenMp {
        parallel: Parallel,
        thread_num: Query,
        num_threads: Query,
    }

    /// One parallel region's work: part `i` of `parts` for each `i`.
    struct Region<'a> {
        work: &'a (dyn Fn(usize) + Sync),
        parts: usize,
        thread_num: Query,
        num_threads: Query,
        panic: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>,
    }

    extern "C" fn run_part(data: *mut c_void) {
        // SAFETY: `data` is the `Region` that `OpenMp::run` passed, alive until the region ends.
        let region = unsafe { &*(data as *const Region) };
        // SAFETY: plain queries of the calling OpenMP thread.
        let (me, team) = unsafe { ((region.thread_num)() as usize, ((region.num_threads)() as usize).max(1)) };
        // A team smaller than asked for (OpenMP may give fewer threads) still covers every part.
        for part in (me..region.parts).step_by(team) {
            // A panic must not unwind into C: keep it and raise it after the region.
            if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (region.work)(part))) {
                region.panic.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(payload);
            }
        }
    }

    impl OpenMp {
        /// Runs `work(i)` for every `i` in `0..parts` on an OpenMP team of `parts` threads.
        pub(super) fn run(&self, parts: usize, work: &(dyn Fn(usize) + Sync)) {
            let region = Region {
                work,
                parts,
                thread_num: self.thread_num,
                num_threads: self.num_threads,
                panic: std::sync::Mutex::new(None),
            };
            // SAFETY: GOMP_parallel runs `run_part(&region)` on each thread of a new team and
            // returns when all have finished, so `region` outlives every use.
            unsafe { (self.parallel)(run_part, &region as *const Region as *mut c_void, parts as c_uint, 0) };
            if let Some(payload) = region.panic.into_inner().unwrap_or_else(|p| p.into_inner()) {
                std::panic::resume_unwind(payload);
            }
        }
    }

    /// libgomp's functions, when the process has them (libtorch's CPU builds load libgomp).
    pub(super) fn get() -> Option<&'static OpenMp> {
        static OPENMP: OnceLock<Option<OpenMp>> = OnceLock::new();
        OPENMP
            .get_or_init(|| {
                // The program's handle finds symbols in every library it loaded; libgomp is
                // never unloaded, so the function pointers outlive the handle.
                let this = libloading::os::unix::Library::this();
                // SAFETY: these are libgomp's functions with exactly these C signatures.
                unsafe {
                    Some(OpenMp {
                        parallel: *this.get::<Parallel>(b"GOMP_parallel\0").ok()?,
                        thread_num: *this.get::<Query>(b"omp_get_thread_num\0").ok()?,
                        num_threads: *this.get::<Query>(b"omp_get_num_threads\0").ok()?,
                    })
                }
            })
            .as_ref()
    }
}

/// The tiling of one Winograd convolution: images, input size, tiles per column and row.
struct Geometry {
    n: usize,
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
}

impl Geometry {
    /// `v[4a + b][ch][tile] = (Bᵀ·d·B)[a][b]` for each 4×4 input tile `d` (zero outside the
    /// image), `Bᵀ` = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
    ///
    /// Works a row of tiles at a time: the four input rows, zero-padded, are split into even
    /// and odd columns so that every step is a unit-stride loop over the row's tiles.
    ///
    /// SAFETY: `x` holds n·channels·h·w values; `v` 16·channels·tiles, written only here.
    unsafe fn input_transform<T: Element>(&self, x: *const T, channels: usize, v: SharedMut<T>) {
        let Geometry { n, h, w, th, tw } = *self;
        let tiles = n * th * tw;
        let x = std::slice::from_raw_parts(x, n * channels * h * w);
        parallel(channels, |range| {
            let len = tw + 1;
            // even[i] / odd[i]: padded columns 2k and 2k + 1 of input row i of the tiles.
            let mut even = vec![vec![0f32; len]; 4];
            let mut odd = vec![vec![0f32; len]; 4];
            // The same after Bᵀ down the columns: re[a], ro[a].
            let mut re = vec![vec![0f32; len]; 4];
            let mut ro = vec![vec![0f32; len]; 4];
            for ch in range {
                for img in 0..n {
                    let plane = &x[(img * channels + ch) * h * w..][..h * w];
                    for ty in 0..th {
                        for i in 0..4 {
                            let y = (2 * ty + i).wrapping_sub(1);
                            let (e, o) = (&mut even[i], &mut odd[i]);
                            e.fill(0.0);
                            o.fill(0.0);
                            if y < h {
                                // Padded column p holds input column p - 1: odd[k] is input
                                // column 2k, even[k + 1] input column 2k + 1.
                                for (k, pair) in plane[y * w..(y + 1) * w].chunks(2).enumerate() {
                                    o[k] = pair[0].to_f32();
                                    if let Some(&second) = pair.get(1) {
                                        e[k + 1] = second.to_f32();
                                    }
                                }
                            }
                        }
                        for (src, dst) in [(&even, &mut re), (&odd, &mut ro)] {
                            combine(&mut dst[0], &src[0], &src[2], |p, q| p - q);
                            combine(&mut dst[1], &src[1], &src[2], |p, q| p + q);
                            combine(&mut dst[2], &src[2], &src[1], |p, q| p - q);
                            combine(&mut dst[3], &src[1], &src[3], |p, q| p - q);
                        }
                        let base = (img * th + ty) * tw;
                        for a in 0..4 {
                            let (e, o) = (&re[a], &ro[a]);
                            let out = |b: usize| {
                                let start = ((4 * a + b) * channels + ch) * tiles + base;
                                std::slice::from_raw_parts_mut(v.ptr().add(start), tw)
                            };
                            combine(out(0), &e[..tw], &e[1..], |p, q| p - q);
                            combine(out(1), &o[..tw], &e[1..], |p, q| p + q);
                            combine(out(2), &e[1..], &o[..tw], |p, q| p - q);
                            combine(out(3), &o[..tw], &o[1..], |p, q| p - q);
                        }
                    }
                }
            }
        });
    }

    /// `out[img][ch][2ty + i][2tx + j] = (Aᵀ·m·A)[i][j] + bias[ch]` for each tile's 16
    /// values `m[4a + b][ch][tile]`, `Aᵀ` = [[1, 1, 1, 0], [0, 1, -1, -1]]; outputs past an
    /// odd edge are dropped. A row of tiles at a time, in unit-stride loops.
    ///
    /// SAFETY: `m` holds 16·channels·tiles values, `bias` (if any) channels floats, `out`
    /// n·channels·h·w values, written only here.
    unsafe fn output_transform<T: Element>(
        &self,
        m: *const T,
        bias: Option<*const f32>,
        channels: usize,
        out: SharedMut<T>,
    ) {
        let Geometry { n, h, w, th, tw } = *self;
        let tiles = n * th * tw;
        let m = std::slice::from_raw_parts(m, 16 * channels * tiles);
        let bias = bias.map(|b| std::slice::from_raw_parts(b, channels));
        parallel(channels, |range| {
            // s[i][b]: Aᵀ down the columns; y[i][j]: then ·A along the rows.
            let mut s = vec![vec![0f32; tw]; 8];
            let mut y = vec![vec![0f32; tw]; 4];
            let mut tmp = vec![0f32; tw];
            for ch in range {
                let b0 = bias.map_or(0.0, |b| b[ch]);
                for img in 0..n {
                    let dst = out.ptr().add((img * channels + ch) * h * w);
                    for ty in 0..th {
                        let base = (img * th + ty) * tw;
                        let p = |a: usize, b: usize| &m[((4 * a + b) * channels + ch) * tiles + base..][..tw];
                        for b in 0..4 {
                            combine(&mut tmp, p(0, b), p(1, b), |x, y| x + y);
                            combine(&mut s[b], &tmp, p(2, b), |x, y| x + y);
                            combine(&mut tmp, p(1, b), p(2, b), |x, y| x - y);
                            combine(&mut s[4 + b], &tmp, p(3, b), |x, y| x - y);
                        }
                        for i in 0..2 {
                            let si = &s[4 * i..4 * i + 4];
                            combine(&mut tmp, &si[0], &si[1], |x, y| x + y);
                            combine(&mut y[2 * i], &tmp, &si[2], |x, y| x + y + b0);
                            combine(&mut tmp, &si[1], &si[2], |x, y| x - y);
                            combine(&mut y[2 * i + 1], &tmp, &si[3], |x, y| x - y + b0);
                        }
                        for i in 0..2 {
                            let row = 2 * ty + i;
                            if row >= h {
                                continue;
                            }
                            let dst_row = std::slice::from_raw_parts_mut(dst.add(row * w), w);
                            let (lo, hi) = (&y[2 * i], &y[2 * i + 1]);
                            let full = w / 2;
                            for ((pair, &l), &r) in dst_row.chunks_exact_mut(2).zip(&lo[..full]).zip(&hi[..full]) {
                                pair[0] = T::from_f32(l);
                                pair[1] = T::from_f32(r);
                            }
                            if w % 2 == 1 {
                                dst_row[w - 1] = T::from_f32(lo[full]);
                            }
                        }
                    }
                }
            }
        });
    }
}

/// `dst[k] = f(a[k], b[k])` over `dst`'s length, in f32 (a unit-stride loop the compiler
/// vectorizes).
#[inline(always)]
fn combine<D: Element, A: Element, B: Element>(dst: &mut [D], a: &[A], b: &[B], f: impl Fn(f32, f32) -> f32) {
    let (a, b) = (&a[..dst.len()], &b[..dst.len()]);
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = D::from_f32(f(x.to_f32(), y.to_f32()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn check(n: i64, c: i64, o: i64, h: i64, w: i64, k: i64, stride: i64, pad: i64, algo: ConvAlgo) -> &'static str {
        tch::manual_seed(n * 1000 + c * 7 + h);
        let x = Tensor::randn([n, c, h, w], (Kind::Float, Device::Cpu));
        let weight = Tensor::randn([o, c, k, k], (Kind::Float, Device::Cpu)) / ((c * k * k) as f64).sqrt();
        let bias = Tensor::randn([o], (Kind::Float, Device::Cpu));
        let want = x.conv2d(&weight, Some(&bias), [stride], [pad], [1], 1);
        let conv = Conv2d::new(weight, Some(bias), stride, pad, algo);
        let got = conv.forward(&x);
        assert_eq!(got.size(), want.size(), "{c}->{o} k{k} s{stride} on {h}x{w}");
        let err = (&got - &want).abs().max().double_value(&[]);
        // The same sums in another order: float rounding of sums of c·k² terms of size ~1.
        assert!(err < 2e-5 * ((c * k * k) as f64).sqrt(), "{c}->{o} k{k} s{stride} on {h}x{w}: max error {err}");
        conv.algorithm(h, w)
    }

    #[test]
    fn parallel_runs_every_index_once_on_libtorchs_openmp_threads() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        assert!(openmp::get().is_some(), "libgomp's GOMP_parallel not found beside libtorch");
        for len in [0, 1, 2, 3, 5, 1000] {
            let counts: Vec<AtomicUsize> = (0..len).map(|_| AtomicUsize::new(0)).collect();
            parallel(len, |range| {
                assert!(range.start <= range.end && range.end <= len, "{range:?} of {len}");
                range.for_each(|i| _ = counts[i].fetch_add(1, Ordering::Relaxed))
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "len {len}");
        }
        // Inside a region OpenMP gives a nested region a team of one thread (nesting is off),
        // fewer than the parts asked for: that thread runs them all.
        let omp = openmp::get().unwrap();
        let nested: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
        omp.run(2, &|outer| omp.run(4, &|inner| _ = nested[4 * outer + inner].fetch_add(1, Ordering::Relaxed)));
        assert!(nested.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        // A panic inside a part reaches the caller instead of unwinding into libgomp.
        let caught = std::panic::catch_unwind(|| {
            parallel(64, |range| assert!(!range.contains(&63), "part with 63"));
        });
        assert!(caught.is_err());
    }

    #[test]
    fn winograd_matches_direct_convolution_on_even_odd_and_tiny_maps() {
        for (n, c, o, h, w) in [(2, 8, 12, 8, 8), (1, 5, 3, 7, 9), (3, 4, 4, 1, 1), (2, 16, 8, 2, 5), (1, 3, 6, 13, 6)]
        {
            assert_eq!(check(n, c, o, h, w, 3, 1, 1, ConvAlgo::Winograd), "winograd");
        }
    }

    #[test]
    fn auto_uses_winograd_only_for_wide_layers() {
        assert_eq!(check(2, 640, 640, 6, 5, 3, 1, 1, ConvAlgo::Auto), "winograd");
        assert_eq!(check(1, 640, 320, 6, 6, 3, 1, 1, ConvAlgo::Auto), "winograd");
        assert_eq!(check(1, 120, 640, 6, 6, 3, 1, 1, ConvAlgo::Auto), "im2col");
        let narrow = if Thresholds::for_this_cpu(Kind::Float).min_channels <= 320 { "winograd" } else { "direct" };
        assert_eq!(check(1, 320, 320, 12, 12, 3, 1, 1, ConvAlgo::Auto), narrow);
        assert_eq!(check(1, 160, 160, 12, 12, 3, 1, 1, ConvAlgo::Auto), "direct");
    }

    #[test]
    fn large_maps_use_f4_on_the_widest_layers_only() {
        let (auto, large, small) = (ConvAlgo::Auto, FeatureMaps::Large, FeatureMaps::Small);
        for limits in [Thresholds::AVX512, Thresholds::GENERIC, Thresholds::BF16] {
            let tile = |algo, maps, shape: [i64; 4], stride, padding| {
                winograd_tile_with(limits, algo, maps, &shape, stride, padding, Kind::Float)
            };
            let wide = |c: i64| (c >= limits.large_maps_min_channels).then_some(Tile::F4);
            assert_eq!(tile(auto, large, [512, 512, 3, 3], 1, 1), wide(512));
            assert_eq!(tile(auto, large, [256, 512, 3, 3], 1, 1), wide(256), "512->256");
            assert_eq!(tile(auto, large, [128, 128, 3, 3], 1, 1), wide(128));
            assert_eq!(tile(auto, large, [64, 64, 3, 3], 1, 1), None);
            assert_eq!(tile(auto, large, [3, 128, 3, 3], 1, 1), None, "conv_out");
            assert_eq!(tile(auto, large, [512, 512, 3, 3], 2, 0), None, "the encoder's downsampling");
            assert_eq!(tile(auto, large, [512, 512, 1, 1], 1, 0), None);
            assert_eq!(tile(ConvAlgo::Direct, large, [512, 512, 3, 3], 1, 1), None);
            assert_eq!(tile(ConvAlgo::Winograd, large, [8, 4, 3, 3], 1, 1), Some(Tile::F4));
            assert_eq!(tile(ConvAlgo::Winograd, small, [8, 4, 3, 3], 1, 1), Some(Tile::F2));
            assert_eq!(tile(auto, small, [1280, 640, 3, 3], 1, 1), Some(Tile::F2));
            let narrow = (limits.min_channels <= 320).then_some(Tile::F2);
            assert_eq!(tile(auto, small, [320, 320, 3, 3], 1, 1), narrow, "the UNet's 320->320");
            assert_eq!(tile(auto, small, [320, 4, 3, 3], 1, 1), None, "conv_in");
            // bf16 takes F(2×2) only: the large tiles' transforms lose too much in bf16.
            let bf16 = winograd_tile_with(limits, auto, large, &[512, 512, 3, 3], 1, 1, Kind::BFloat16);
            assert_ne!(bf16, Some(Tile::F4));
        }
        let bf16 = |shape: [i64; 4]| winograd_tile(auto, small, &shape, 1, 1, Kind::BFloat16);
        assert_eq!(bf16([320, 320, 3, 3]), None, "bf16 keeps its own rule");
        assert_eq!(bf16([640, 640, 3, 3]), Some(Tile::F2));
    }

    #[test]
    fn gemm_paths_match_direct_convolution() {
        assert_eq!(check(2, 12, 7, 5, 6, 1, 1, 0, ConvAlgo::Auto), "gemm");
        assert_eq!(check(2, 12, 7, 5, 6, 1, 1, 0, ConvAlgo::Winograd), "gemm");
        // Stride 2 on a map small enough for im2col, with and without padding.
        assert_eq!(check(2, 6, 9, 9, 8, 3, 2, 1, ConvAlgo::Auto), "im2col");
        assert_eq!(check(1, 6, 9, 10, 10, 3, 2, 0, ConvAlgo::Auto), "im2col");
        assert_eq!(check(1, 6, 9, 10, 10, 3, 1, 1, ConvAlgo::Direct), "direct");
    }

    #[test]
    fn token_layout_projections_match_forward() {
        tch::manual_seed(3);
        let x = Tensor::randn([2, 6, 3, 5], (Kind::Float, Device::Cpu));
        let weight = Tensor::randn([4, 6, 1, 1], (Kind::Float, Device::Cpu));
        let bias = Tensor::randn([4], (Kind::Float, Device::Cpu));
        for algo in [ConvAlgo::Auto, ConvAlgo::Direct] {
            let conv = Conv2d::new(weight.shallow_clone(), Some(bias.shallow_clone()), 1, 0, algo);
            let image = conv.forward(&x);
            let tokens = conv.forward_to_tokens(&x);
            let want = image.permute([0, 2, 3, 1]).reshape([2, 15, 4]);
            assert!((&tokens - &want).abs().max().double_value(&[]) < 1e-5);
            let back_conv = Conv2d::new(Tensor::randn([6, 4, 1, 1], (Kind::Float, Device::Cpu)), None, 1, 0, algo);
            let back = back_conv.forward_from_tokens(&tokens, 3, 5);
            let want = back_conv.forward(&image);
            assert!((&back - &want).abs().max().double_value(&[]) < 1e-5);
        }
    }

    /// A bf16 convolution through `algo` and through libtorch's bf16 convolution, each
    /// against libtorch's fp32 convolution of the same bf16 values: the algorithm `algo`
    /// picked and both largest errors relative to the largest output.
    #[allow(clippy::too_many_arguments)]
    fn check_bf16(
        n: i64,
        c: i64,
        o: i64,
        h: i64,
        w: i64,
        k: i64,
        stride: i64,
        pad: i64,
        algo: ConvAlgo,
    ) -> (&'static str, f64, f64) {
        tch::manual_seed(n * 1000 + c * 7 + h * 3 + w);
        let bf16 = (Kind::BFloat16, Device::Cpu);
        let x = Tensor::randn([n, c, h, w], bf16);
        let weight = (Tensor::randn([o, c, k, k], (Kind::Float, Device::Cpu)) / ((c * k * k) as f64).sqrt())
            .to_kind(Kind::BFloat16);
        let bias = Tensor::randn([o], bf16);
        let f = |t: &Tensor| t.to_kind(Kind::Float);
        let want = f(&x).conv2d(&f(&weight), Some(&f(&bias)), [stride], [pad], [1], 1);
        let libtorch = x.conv2d(&weight, Some(&bias), [stride], [pad], [1], 1);
        let conv = Conv2d::new(weight, Some(bias), stride, pad, algo);
        let got = conv.forward(&x);
        assert_eq!(got.kind(), Kind::BFloat16);
        assert_eq!(got.size(), want.size(), "{c}->{o} k{k} s{stride} on {h}x{w}");
        let scale = want.abs().max().double_value(&[]);
        let err = |t: &Tensor| (f(t) - &want).abs().max().double_value(&[]) / scale;
        (conv.algorithm(h, w), err(&got), err(&libtorch))
    }

    /// bf16 keeps 8 significant bits: libtorch's own bf16 convolution is off by up to
    /// ~3e-3 of the largest output (its output rounding). Winograd rounds three times more
    /// (the transformed inputs, the transformed weights, the GEMM's output) and then sums
    /// up to 9 of those values. Measured on an AMD EPYC (avx512_bf16): Winograd ≤ 7.6e-3,
    /// libtorch ≤ 3.9e-3, GEMM ≤ 3.9e-3 on these shapes. The bounds leave 2×
    /// room; a wrong tap or tile would be off by ~1.
    #[test]
    fn bf16_kernels_match_libtorch_to_bf16_rounding() {
        let mut worst = (0f64, 0f64);
        for (n, c, o, h, w) in
            [(2, 8, 12, 8, 8), (1, 5, 3, 7, 9), (3, 4, 4, 1, 1), (2, 16, 8, 2, 5), (1, 3, 6, 13, 6), (2, 64, 48, 5, 6)]
        {
            let (algo, ours, theirs) = check_bf16(n, c, o, h, w, 3, 1, 1, ConvAlgo::Winograd);
            assert_eq!(algo, "winograd");
            assert!(ours < 1.6e-2, "winograd {c}->{o} on {h}x{w}: relative error {ours:.2e} (libtorch {theirs:.2e})");
            worst = (worst.0.max(ours), worst.1.max(theirs));
        }
        // The UNet's widths where Auto takes Winograd in bf16.
        for (c, o, size) in [(320, 640, 9), (640, 320, 4), (1280, 1280, 2)] {
            let (algo, ours, theirs) = check_bf16(1, c, o, size, size, 3, 1, 1, ConvAlgo::Auto);
            assert_eq!(algo, "winograd");
            assert!(
                ours < 1.6e-2,
                "winograd {c}->{o} on {size}x{size}: relative error {ours:.2e} (libtorch {theirs:.2e})"
            );
            worst = (worst.0.max(ours), worst.1.max(theirs));
        }
        assert_eq!(check_bf16(1, 320, 320, 9, 9, 3, 1, 1, ConvAlgo::Auto).0, "direct");
        // 1×1 as GEMM; no im2col in bf16.
        for (n, c, o, h, w, k, stride, pad, want) in [
            (2, 12, 7, 5, 6, 1, 1, 0, "gemm"),
            (2, 320, 640, 4, 4, 1, 1, 0, "gemm"),
            (2, 6, 9, 9, 8, 3, 2, 1, "direct"),
            (1, 160, 640, 6, 6, 3, 1, 1, "direct"),
        ] {
            let (algo, ours, theirs) = check_bf16(n, c, o, h, w, k, stride, pad, ConvAlgo::Auto);
            assert_eq!(algo, want, "{c}->{o} k{k} s{stride} on {h}x{w}");
            assert!(ours < 8e-3, "{algo} {c}->{o} on {h}x{w}: relative error {ours:.2e} (libtorch {theirs:.2e})");
        }
        eprintln!("bf16 Winograd worst relative error {:.2e}, libtorch's {:.2e}", worst.0, worst.1);
    }

    /// A LoRA delta added to a bf16 Winograd layer gives the layer of the summed kernel, to
    /// one more bf16 rounding of the transformed weights.
    #[test]
    fn bf16_winograd_delta_equals_the_patched_kernel() {
        tch::manual_seed(9);
        let bf16 = (Kind::BFloat16, Device::Cpu);
        let weight = Tensor::randn([12, 10, 3, 3], bf16) / 10.0;
        let delta = Tensor::randn([12, 10, 3, 3], (Kind::Float, Device::Cpu)) / 30.0;
        let bias = Tensor::randn([12], bf16);
        let x = Tensor::randn([2, 10, 7, 8], bf16);
        let mut patched = Conv2d::new(weight.shallow_clone(), Some(bias.shallow_clone()), 1, 1, ConvAlgo::Winograd);
        let before = patched.forward(&x);
        patched.add_delta(&delta);
        let summed = (weight.to_kind(Kind::Float) + &delta).to_kind(Kind::BFloat16);
        let fresh = Conv2d::new(summed, Some(bias), 1, 1, ConvAlgo::Winograd);
        let (got, want) = (patched.forward(&x).to_kind(Kind::Float), fresh.forward(&x).to_kind(Kind::Float));
        let scale = want.abs().max().double_value(&[]);
        let err = (&got - &want).abs().max().double_value(&[]) / scale;
        let moved = (&got - before.to_kind(Kind::Float)).abs().max().double_value(&[]) / scale;
        // Measured on an AMD EPYC: 4.0e-3 (bf16 rounding), while the delta moves the output by
        // 0.24 of its largest value.
        assert!(err < 1.5e-2 && moved > 0.1, "patched vs fresh {err:.2e}, delta moved {moved:.2e}");
    }

    #[test]
    fn bf16_token_layout_projections_match_forward() {
        tch::manual_seed(5);
        let bf16 = (Kind::BFloat16, Device::Cpu);
        let x = Tensor::randn([2, 6, 3, 5], bf16);
        let conv = Conv2d::new(Tensor::randn([4, 6, 1, 1], bf16), Some(Tensor::randn([4], bf16)), 1, 0, ConvAlgo::Auto);
        assert_eq!(conv.algorithm(3, 5), "gemm");
        let image = conv.forward(&x);
        let tokens = conv.forward_to_tokens(&x);
        assert_eq!(tokens.kind(), Kind::BFloat16);
        let want = image.permute([0, 2, 3, 1]).reshape([2, 15, 4]);
        // The same products and sums: equal up to the order oneDNN sums in, one bf16 rounding.
        assert!((&tokens - &want).to_kind(Kind::Float).abs().max().double_value(&[]) < 3e-2);
        let back = Conv2d::new(Tensor::randn([6, 4, 1, 1], bf16), None, 1, 0, ConvAlgo::Auto);
        let got = back.forward_from_tokens(&tokens, 3, 5);
        let want = back.forward(&image);
        assert!((&got - &want).to_kind(Kind::Float).abs().max().double_value(&[]) < 3e-2);
    }

    #[test]
    fn winograd_weights_made_on_first_use_equal_those_made_at_load_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conv.safetensors");
        tch::manual_seed(11);
        let weight = Tensor::randn([6, 5, 3, 3], (Kind::Float, Device::Cpu));
        let bias = Tensor::randn([6], (Kind::Float, Device::Cpu));
        Tensor::write_safetensors(&[("weight", &weight), ("bias", &bias)], &path).unwrap();
        let w = Weights::open(std::slice::from_ref(&path), Device::Cpu, Kind::Float).unwrap();
        w.set_conv_algo(ConvAlgo::Winograd);
        let lazy = Conv2d::load(&w, 5, 6, 3, 1, 1).unwrap();
        w.finish().unwrap();
        let transformed = |c: &Conv2d| match &c.kernel {
            Kernel::Winograd(d) => matches!(&*d.state(), Prepared::Transformed(_)),
            _ => panic!("expected a Winograd layer"),
        };
        assert!(!transformed(&lazy), "loading must not transform");
        let eager = Conv2d::new(weight, Some(bias), 1, 1, ConvAlgo::Winograd);
        let x = Tensor::randn([2, 5, 7, 6], (Kind::Float, Device::Cpu));
        let first = lazy.forward(&x);
        assert!(transformed(&lazy));
        assert!(first.equal(&eager.forward(&x)), "lazy and eager transforms must agree bit for bit");
        assert!(lazy.forward(&x).equal(&first));
        // A snapshot taken before first use, restored after, transforms again to the same.
        let mut layer = Conv2d::load(&w, 5, 6, 3, 1, 1).unwrap();
        let before = layer.snapshot();
        layer.add_delta(&Tensor::ones([6, 5, 3, 3], (Kind::Float, Device::Cpu)));
        assert!(!layer.forward(&x).equal(&first));
        layer.restore(before);
        assert!(layer.forward(&x).equal(&first));
    }
}
