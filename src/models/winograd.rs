//! Winograd F(m×m, 3×3) convolutions with large tiles (m = 4 and 6), for the large feature
//! maps of the VAE decoder, where oneDNN's direct convolution already runs near the GEMM
//! speed of the machine and only fewer multiplications help: F(4×4, 3×3) does 36 products per
//! 16 outputs (4× fewer than direct), F(6×6, 3×3) 64 per 36 (5.06× fewer), against F(2×2)'s
//! 2.25× (in `conv.rs`).
//!
//! The transforms use the interpolation points 0, ±1, ±2 (and ±½ for m = 6) and ∞ (Lavin and
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2015). Their input and output
//! matrices hold small integers and powers of two, exact in f32; the kernel transform is
//! computed in f64 and rounded once. The rounding error grows with the tile: the tests bound
//! it against libtorch's convolution.
//!
//! The layout is the one of `conv.rs`'s F(2×2): the input transform writes `[t², c, tiles]`
//! (t = m + 2), one batched GEMM with the `[t², out, in]` weights gives `[t², out, tiles]`,
//! and the output transform writes each tile's m×m outputs plus the bias into the image. Both
//! transforms work on a row of tiles at a time in unit-stride loops over the tiles: each input
//! row is split into m phases (columns ≡ r mod m), so column j of every tile is one phase at
//! one offset.

use crate::models::conv::{parallel, SharedMut};
use tch::{Device, Kind, Tensor};

/// The tile of a Winograd convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    /// F(2×2, 3×3): 4×4 input tiles, in `conv.rs`.
    F2,
    /// F(4×4, 3×3): 6×6 input tiles.
    F4,
    /// F(6×6, 3×3): 8×8 input tiles.
    F6,
}

/// The three transform matrices of one variant, row-major.
struct Matrices {
    /// Outputs per tile side.
    m: usize,
    /// Input transform `Bᵀ`, t×t.
    bt: &'static [f64],
    /// Kernel transform `G`, t×3.
    g: &'static [f64],
    /// Output transform `Aᵀ`, m×t.
    at: &'static [f64],
}

#[rustfmt::skip]
const F4: Matrices = Matrices {
    m: 4,
    bt: &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0,
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0,
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0,
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0,
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0,
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ],
    g: &[
        1.0 / 4.0, 0.0, 0.0,
        -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0,
        -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0,
        1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0,
        1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0,
        0.0, 0.0, 1.0,
    ],
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, 2.0, -2.0, 0.0,
        0.0, 1.0, 1.0, 4.0, 4.0, 0.0,
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ],
};

#[rustfmt::skip]
const F6: Matrices = Matrices {
    m: 6,
    bt: &[
        1.0, 0.0, -5.25, 0.0, 5.25, 0.0, -1.0, 0.0,
        0.0, 1.0, 1.0, -4.25, -4.25, 1.0, 1.0, 0.0,
        0.0, -1.0, 1.0, 4.25, -4.25, -1.0, 1.0, 0.0,
        0.0, 0.5, 0.25, -2.5, -1.25, 2.0, 1.0, 0.0,
        0.0, -0.5, 0.25, 2.5, -1.25, -2.0, 1.0, 0.0,
        0.0, 2.0, 4.0, -2.5, -5.0, 0.5, 1.0, 0.0,
        0.0, -2.0, 4.0, 2.5, -5.0, -0.5, 1.0, 0.0,
        0.0, -1.0, 0.0, 5.25, 0.0, -5.25, 0.0, 1.0,
    ],
    g: &[
        1.0, 0.0, 0.0,
        -2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0,
        -2.0 / 9.0, 2.0 / 9.0, -2.0 / 9.0,
        1.0 / 90.0, 1.0 / 45.0, 2.0 / 45.0,
        1.0 / 90.0, -1.0 / 45.0, 2.0 / 45.0,
        32.0 / 45.0, 16.0 / 45.0, 8.0 / 45.0,
        32.0 / 45.0, -16.0 / 45.0, 8.0 / 45.0,
        0.0, 0.0, 1.0,
    ],
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 0.0,
        0.0, 1.0, 1.0, 4.0, 4.0, 0.25, 0.25, 0.0,
        0.0, 1.0, -1.0, 8.0, -8.0, 0.125, -0.125, 0.0,
        0.0, 1.0, 1.0, 16.0, 16.0, 0.0625, 0.0625, 0.0,
        0.0, 1.0, -1.0, 32.0, -32.0, 0.03125, -0.03125, 1.0,
    ],
};

impl Tile {
    pub const ALL: [Tile; 3] = [Tile::F2, Tile::F4, Tile::F6];

    /// The matrices of the large tiles (F(2×2) has hand-written transforms in `conv.rs`).
    fn matrices(self) -> &'static Matrices {
        match self {
            Tile::F2 => unreachable!("F(2x2, 3x3) has its own transforms"),
            Tile::F4 => &F4,
            Tile::F6 => &F6,
        }
    }

    /// Outputs per tile side.
    pub fn outputs(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
            Tile::F6 => 6,
        }
    }

    /// Inputs per tile side.
    pub fn inputs(self) -> usize {
        self.outputs() + 2
    }

    /// What [`crate::models::conv::Conv2d::algorithm`] calls it.
    pub fn name(self) -> &'static str {
        match self {
            Tile::F2 => "winograd",
            Tile::F4 => "winograd-f4",
            Tile::F6 => "winograd-f6",
        }
    }
}

/// The nonzero entries of each row of a row-major matrix with `cols` columns, as f32 (every
/// entry of `Bᵀ` and `Aᵀ` is exact in f32).
fn sparse_rows(matrix: &[f64], cols: usize) -> Vec<Vec<(usize, f32)>> {
    matrix
        .chunks(cols)
        .map(|row| row.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(j, v)| (j, *v as f32)).collect())
        .collect()
}

/// `U[t·a + b] = (G · w · Gᵀ)[a, b]` for every (out, in) pair: `[out, in, 3, 3]` →
/// `[t², out, in]` in fp32 on the CPU, computed in f64 and rounded once.
pub(crate) fn weights(weight: &Tensor, tile: Tile) -> Tensor {
    if tile == Tile::F2 {
        return crate::models::conv::winograd_weights(weight);
    }
    let s = weight.size();
    assert!(s.len() == 4 && s[2] == 3 && s[3] == 3, "Winograd needs a 3x3 kernel, got {s:?}");
    let Matrices { g, m, .. } = tile.matrices();
    let t = m + 2;
    let w = weight.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let pairs = (s[0] * s[1]) as usize;
    let u = Tensor::empty([(t * t) as i64, s[0], s[1]], (Kind::Float, Device::Cpu));
    // SAFETY: `w` is a contiguous fp32 CPU tensor of pairs·9 elements that outlives `src`.
    let src = unsafe { std::slice::from_raw_parts(w.data_ptr() as *const f32, pairs * 9) };
    let planes = SharedMut(u.data_ptr() as *mut f32);
    const BLOCK: usize = 256;
    parallel(pairs, |range| {
        let mut buf = vec![[0f32; BLOCK]; t * t];
        let mut start = range.start;
        while start < range.end {
            let len = BLOCK.min(range.end - start);
            for q in 0..len {
                let k = &src[9 * (start + q)..9 * (start + q) + 9];
                // gk = G · k (t×3), then gk · Gᵀ (t×t).
                let mut gk = [[0f64; 3]; 8];
                for (a, row) in gk.iter_mut().enumerate().take(t) {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|i| g[3 * a + i] * f64::from(k[3 * i + j])).sum();
                    }
                }
                for a in 0..t {
                    for b in 0..t {
                        let v: f64 = (0..3).map(|j| gk[a][j] * g[3 * b + j]).sum();
                        buf[t * a + b][q] = v as f32;
                    }
                }
            }
            for (plane, values) in buf.iter().enumerate() {
                // SAFETY: start + len <= pairs and plane < t², so inside `u`; the pairs
                // start..start+len are this thread's.
                unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), planes.ptr().add(plane * pairs + start), len) };
            }
            start += len;
        }
    });
    u.to_device(weight.device())
}

/// F(m×m, 3×3) convolution, padding 1, stride 1: `x` `[n, c, h, w]` (fp32, CPU), `u` from
/// [`weights`] with the same tile, any `h` and `w` (partial tiles at the edges).
pub(crate) fn conv(x: &Tensor, u: &Tensor, bias: Option<&Tensor>, tile: Tile) -> Tensor {
    if tile == Tile::F2 {
        return crate::models::conv::winograd_conv(x, u, bias);
    }
    let (_, c, _, w) = x.size4().expect("conv2d expects [batch, channels, height, width]");
    assert!(x.kind() == Kind::Float && x.device() == Device::Cpu, "Winograd runs on fp32 CPU tensors");
    let m = tile.outputs() as i64;
    let t = tile.inputs() as i64;
    // The transforms below read raw memory: these checks keep every read inside its tensor.
    let us = u.size();
    assert!(us.len() == 3 && us[0] == t * t && us[2] == c, "Winograd weights {us:?} do not fit {c} input channels");
    let o = us[1];
    if let Some(b) = bias {
        assert!(b.numel() == o as usize, "bias of {} values for {o} output channels", b.numel());
    }
    let tw = (w + m - 1) / m;
    let x = x.contiguous();
    let bias = bias.map(|b| b.to_kind(Kind::Float).contiguous());
    // Rows of tiles (over all images) in chunks whose transformed tiles stay in the caches
    // between the transforms and the GEMM, but wide enough for the GEMM to reuse the weights.
    let per_tile = (t * t * c.max(o)) as usize * std::mem::size_of::<f32>();
    let chunk_tiles = (CHUNK_BYTES / per_tile).max(MIN_CHUNK_TILES);
    conv_in_chunks(&x, u, bias.as_ref(), tile, chunk_tiles / tw as usize)
}

/// [`conv`] over `chunk_rows` rows of tiles at a time (at least one).
fn conv_in_chunks(x: &Tensor, u: &Tensor, bias: Option<&Tensor>, tile: Tile, chunk_rows: usize) -> Tensor {
    let (n, c, h, w) = x.size4().expect("conv2d expects [batch, channels, height, width]");
    let (m, t) = (tile.outputs() as i64, tile.inputs() as i64);
    let o = u.size()[1];
    let (th, tw) = ((h + m - 1) / m, (w + m - 1) / m);
    let bias_values = bias.map(|b| b.data_ptr() as *const f32);
    let out = Tensor::empty([n, o, h, w], (Kind::Float, Device::Cpu));
    let rows = (n * th) as usize;
    let chunk_rows = chunk_rows.clamp(1, rows.max(1));
    let mut start = 0;
    while start < rows {
        let end = (start + chunk_rows).min(rows);
        let geometry = Geometry {
            tile,
            n: n as usize,
            h: h as usize,
            w: w as usize,
            th: th as usize,
            tw: tw as usize,
            rows: start..end,
        };
        let tiles = ((end - start) * tw as usize) as i64;
        let v = Tensor::empty([t * t, c, tiles], (Kind::Float, Device::Cpu));
        // SAFETY: `x` is a contiguous fp32 CPU tensor of n·c·h·w elements and `v` a fresh one
        // of t²·c·tiles; each thread writes only its own channels' elements of `v`.
        unsafe {
            geometry.input_transform(x.data_ptr() as *const f32, c as usize, SharedMut(v.data_ptr() as *mut f32))
        };
        let mm = u.bmm(&v);
        drop(v);
        // SAFETY: `mm` is a contiguous fp32 CPU tensor of t²·o·tiles elements (fresh from
        // bmm), `bias` has o elements, `out` n·o·h·w; threads write disjoint channels, and
        // each chunk its own rows.
        unsafe {
            geometry.output_transform(
                mm.data_ptr() as *const f32,
                bias_values,
                o as usize,
                SharedMut(out.data_ptr() as *mut f32),
            )
        };
        start = end;
    }
    out
}

/// The size of one chunk's transformed tiles (input or output side, whichever is wider).
const CHUNK_BYTES: usize = 4 << 20;
/// The fewest tiles per chunk: each chunk's GEMM reads all the weights.
const MIN_CHUNK_TILES: usize = 256;

/// The tiling of one convolution: tile, images, input size, tiles per column and row, and
/// the rows of tiles (`img · th + ty`) that one chunk covers.
struct Geometry {
    tile: Tile,
    n: usize,
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
    rows: std::ops::Range<usize>,
}

/// `dst[k] += c · src[k]` over `dst`'s length.
#[inline(always)]
fn axpy(dst: &mut [f32], c: f32, src: &[f32]) {
    let src = &src[..dst.len()];
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += c * s;
    }
}

impl Geometry {
    /// `v[t·a + b][ch][tile] = (Bᵀ·d·B)[a][b]` for each t×t input tile `d` (zero outside the
    /// image; tile (ty, tx) starts at input row m·ty − 1 and column m·tx − 1).
    ///
    /// SAFETY: `x` holds n·channels·h·w floats; `v` t²·channels·tiles, written only here.
    unsafe fn input_transform(&self, x: *const f32, channels: usize, v: SharedMut) {
        let Geometry { tile, n, h, w, th, tw, ref rows } = *self;
        let (m, t) = (tile.outputs(), tile.inputs());
        let bt = sparse_rows(tile.matrices().bt, t);
        let tiles = rows.len() * tw;
        let x = std::slice::from_raw_parts(x, n * channels * h * w);
        parallel(channels, |range| {
            let len = tw + 1;
            // input[i][r][k]: padded column m·k + r of the tile row's input row i.
            let mut input = vec![vec![vec![0f32; len]; m]; t];
            // down[a][r][k]: the same after Bᵀ down the columns.
            let mut down = vec![vec![vec![0f32; len]; m]; t];
            for ch in range {
                for row in rows.clone() {
                    let (img, ty) = (row / th, row % th);
                    let plane = &x[(img * channels + ch) * h * w..][..h * w];
                    for (i, phases) in input.iter_mut().enumerate() {
                        for p in phases.iter_mut() {
                            p.fill(0.0);
                        }
                        let y = (m * ty + i).wrapping_sub(1);
                        if y < h {
                            // Padded column p holds input column p − 1.
                            for (col, &value) in plane[y * w..(y + 1) * w].iter().enumerate() {
                                let p = col + 1;
                                phases[p % m][p / m] = value;
                            }
                        }
                    }
                    for (a, coeffs) in bt.iter().enumerate() {
                        for r in 0..m {
                            let dst = &mut down[a][r];
                            dst.fill(0.0);
                            for &(i, c) in coeffs {
                                axpy(dst, c, &input[i][r]);
                            }
                        }
                    }
                    let base = (row - rows.start) * tw;
                    for a in 0..t {
                        for (b, coeffs) in bt.iter().enumerate() {
                            let start = ((t * a + b) * channels + ch) * tiles + base;
                            let dst = std::slice::from_raw_parts_mut(v.ptr().add(start), tw);
                            dst.fill(0.0);
                            for &(j, c) in coeffs {
                                axpy(dst, c, &down[a][j % m][j / m..]);
                            }
                        }
                    }
                }
            }
        });
    }

    /// `out[img][ch][m·ty + i][m·tx + j] = (Aᵀ·M·A)[i][j] + bias[ch]` for each tile's t²
    /// values `M[t·a + b][ch][tile]`; outputs past the image's edge are dropped.
    ///
    /// SAFETY: `mm` holds t²·channels·tiles floats, `bias` (if any) channels, `out`
    /// n·channels·h·w, written only here.
    unsafe fn output_transform(&self, mm: *const f32, bias: Option<*const f32>, channels: usize, out: SharedMut) {
        let Geometry { tile, h, w, th, tw, ref rows, .. } = *self;
        let (m, t) = (tile.outputs(), tile.inputs());
        let at = sparse_rows(tile.matrices().at, t);
        let tiles = rows.len() * tw;
        let mm = std::slice::from_raw_parts(mm, t * t * channels * tiles);
        let bias = bias.map(|b| std::slice::from_raw_parts(b, channels));
        parallel(channels, |range| {
            // s[i][b]: Aᵀ down the columns; y[j]: then ·A along the rows, for one output row.
            let mut s = vec![vec![vec![0f32; tw]; t]; m];
            let mut y = vec![vec![0f32; tw]; m];
            for ch in range {
                let b0 = bias.map_or(0.0, |b| b[ch]);
                for tile_row in rows.clone() {
                    let (img, ty) = (tile_row / th, tile_row % th);
                    let dst = out.ptr().add((img * channels + ch) * h * w);
                    let base = (tile_row - rows.start) * tw;
                    let p = |a: usize, b: usize| &mm[((t * a + b) * channels + ch) * tiles + base..][..tw];
                    for (i, coeffs) in at.iter().enumerate() {
                        for (b, dst) in s[i].iter_mut().enumerate() {
                            dst.fill(0.0);
                            for &(a, c) in coeffs {
                                axpy(dst, c, p(a, b));
                            }
                        }
                    }
                    for i in 0..m {
                        let row = m * ty + i;
                        if row >= h {
                            break;
                        }
                        for (j, coeffs) in at.iter().enumerate() {
                            let yj = &mut y[j];
                            yj.fill(b0);
                            for &(b, c) in coeffs {
                                axpy(yj, c, &s[i][b]);
                            }
                        }
                        let dst_row = std::slice::from_raw_parts_mut(dst.add(row * w), w);
                        let full = w / m;
                        for (tx, chunk) in dst_row.chunks_exact_mut(m).enumerate() {
                            for (j, d) in chunk.iter_mut().enumerate() {
                                *d = y[j][tx];
                            }
                        }
                        for j in 0..w % m {
                            dst_row[full * m + j] = y[j][full];
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Aᵀ[(G g) ⊙ (Bᵀ d)]` is the correlation of `d` with `g`, in f64 to rounding.
    #[test]
    fn transforms_compute_a_one_dimensional_correlation() {
        for tile in [Tile::F4, Tile::F6] {
            let Matrices { m, bt, g, at } = tile.matrices();
            let t = m + 2;
            let d: Vec<f64> = (0..t).map(|i| ((i * 7 + 3) % 11) as f64 / 5.0 - 1.0).collect();
            let k = [0.3, -1.1, 0.7];
            let gg: Vec<f64> = (0..t).map(|a| (0..3).map(|i| g[3 * a + i] * k[i]).sum()).collect();
            let bd: Vec<f64> = (0..t).map(|a| (0..t).map(|i| bt[t * a + i] * d[i]).sum()).collect();
            for i in 0..*m {
                let got: f64 = (0..t).map(|a| at[t * i + a] * gg[a] * bd[a]).sum();
                let want: f64 = (0..3).map(|j| d[i + j] * k[j]).sum();
                assert!((got - want).abs() < 1e-12, "{tile:?} output {i}: {got} vs {want}");
            }
        }
    }

    /// Max |winograd − libtorch| / max |libtorch| for one shape.
    fn relative_error(tile: Tile, n: i64, c: i64, o: i64, h: i64, w: i64) -> f64 {
        use crate::models::conv::{Conv2d, ConvAlgo};
        tch::manual_seed(n * 1000 + c * 7 + h * 3 + w);
        let x = Tensor::randn([n, c, h, w], (Kind::Float, Device::Cpu));
        let weight = Tensor::randn([o, c, 3, 3], (Kind::Float, Device::Cpu)) / ((c * 9) as f64).sqrt();
        let bias = Tensor::randn([o], (Kind::Float, Device::Cpu));
        let want = x.conv2d(&weight, Some(&bias), [1], [1], [1], 1);
        let conv = Conv2d::with_winograd(weight.shallow_clone(), Some(bias.shallow_clone()), tile);
        assert_eq!(conv.algorithm(h, w), tile.name());
        let got = conv.forward(&x);
        assert_eq!(got.size(), want.size(), "{tile:?} {c}->{o} on {h}x{w}");
        // The same through the layer's own choice for comparison: Direct is libtorch's.
        let direct = Conv2d::new(weight, Some(bias), 1, 1, ConvAlgo::Direct).forward(&x);
        assert!(direct.equal(&want));
        (&got - &want).abs().max().double_value(&[]) / want.abs().max().double_value(&[])
    }

    #[test]
    fn large_tiles_match_libtorch_on_every_edge_case() {
        // Sizes that are and are not multiples of the tile, maps smaller than one tile, batches.
        for (n, c, o, h, w) in [(2, 8, 12, 8, 8), (1, 5, 3, 7, 9), (3, 4, 4, 1, 1), (2, 16, 8, 2, 5), (1, 3, 6, 13, 6)]
        {
            for tile in [Tile::F4, Tile::F6] {
                let err = relative_error(tile, n, c, o, h, w);
                // Measured on an AMD EPYC: ≤ 2.3e-6 (F4) and ≤ 3.8e-6 (F6) on these few channels.
                assert!(err < 2e-5, "{tile:?} {c}->{o} on {h}x{w}: relative error {err:.2e}");
            }
        }
    }

    #[test]
    fn chunks_of_tile_rows_give_the_whole_convolution() {
        tch::manual_seed(5);
        // Two images of 4 (F4) or 3 (F6) rows of tiles, the last ones partial.
        let x = Tensor::randn([2, 6, 15, 10], (Kind::Float, Device::Cpu));
        let weight = Tensor::randn([5, 6, 3, 3], (Kind::Float, Device::Cpu)) / 54f64.sqrt();
        let bias = Tensor::randn([5], (Kind::Float, Device::Cpu));
        let want = x.conv2d(&weight, Some(&bias), [1], [1], [1], 1);
        for tile in [Tile::F4, Tile::F6] {
            let u = weights(&weight, tile);
            for chunk_rows in [1, 2, 3, 5, 100] {
                let got = conv_in_chunks(&x, &u, Some(&bias), tile, chunk_rows);
                let err = (&got - &want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]);
                // Relative to the largest output; measured ≤ 1.5e-6 (F4) and ≤ 4.2e-6 (F6), as in
                // one chunk.
                assert!(err < 2e-5, "{tile:?} in chunks of {chunk_rows} rows: max error {err:.2e}");
            }
        }
    }

    #[test]
    fn large_tiles_match_libtorch_on_the_vae_decoder_channels() {
        // The VAE decoder's channel counts (512, 512→256, 256, 256→128, 128) on small maps;
        // errors grow with the input channels (sums of c·9 terms) and the tile.
        for (c, o, size) in [(512, 512, 12), (512, 256, 10), (256, 256, 13), (256, 128, 16), (128, 128, 11)] {
            let e4 = relative_error(Tile::F4, 1, c, o, size, size);
            let e6 = relative_error(Tile::F6, 1, c, o, size, size);
            // Measured on an AMD EPYC: F4 ≤ 1.1e-5, F6 ≤ 2.0e-5 (at 512 input channels; F2
            // ≤ 4.1e-7): the larger tiles' transforms amplify rounding (entries up to 5 and
            // 5.25 in Bᵀ, 8 and 32 in Aᵀ). The bounds leave ~5× for other SIMD kernels' sums.
            assert!(e4 < 5e-5, "F4 {c}->{o} on {size}x{size}: relative error {e4:.2e}");
            assert!(e6 < 1e-4, "F6 {c}->{o} on {size}x{size}: relative error {e6:.2e}");
        }
    }
}
