//! The numeric kernels of the forward pass: matrix products on faer, and the element-wise
//! steps (bias + GELU, layer norm, softmax, dot products) written here.
//!
//! The element-wise steps are plain loops in [`Kernel`]s run through
//! [`pulp::Arch::dispatch`], which compiles each once per instruction set (AVX-512,
//! AVX2 + FMA, scalar) and picks the best one the CPU has at run time, so LLVM vectorizes
//! them without `unsafe` code or a `-C target-cpu` flag. A kernel is a struct rather than a
//! closure because only `#[inline(always)]` code is compiled for the chosen instruction set:
//! a closure body LLVM declines to inline runs as baseline x86-64 code (`mul_add` becomes a
//! library call to `fmaf`). No crate offers fused bias + GELU or a one-pass layer norm over
//! plain slices, and `erf`/`exp` from `std` are scalar library calls that would not
//! vectorize: hence the short polynomial versions below, each checked against a
//! double-precision reference in the tests.
//!
//! Reductions keep [`LANES`] partial sums (one vector register) and add them up at the
//! end: a fixed order, so every result is deterministic.

use faer::{Accum, MatMut, MatRef, Par};

/// Partial sums kept by a reduction: one AVX-512 register of `f32`.
pub(crate) const LANES: usize = 16;

/// A step of the forward pass compiled for the best instruction set this CPU has: `run`
/// (and everything it calls) must be `#[inline(always)]`.
pub(crate) trait Kernel {
    type Output;
    fn run(self) -> Self::Output;
}

struct Dispatch<K>(K);

impl<K: Kernel> pulp::WithSimd for Dispatch<K> {
    type Output = K::Output;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> K::Output {
        self.0.run()
    }
}

/// Runs `kernel` compiled for the best instruction set this CPU has.
pub(crate) fn vectorized<K: Kernel>(kernel: K) -> K::Output {
    pulp::Arch::new().dispatch(Dispatch(kernel))
}

/// What [`linear`] adds to each output row while it is in cache.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Epilogue<'a> {
    /// `+ bias`.
    Bias(&'a [f32]),
    /// `gelu(· + bias)`.
    BiasGelu(&'a [f32]),
    /// `+ bias + residual[row]` (`residual` is `rows × width`).
    BiasResidual {
        bias: &'a [f32],
        residual: &'a [f32],
        width: usize,
    },
}

/// [`Epilogue`] over every row of one column block starting at column `start`.
struct EpilogueRows<'v, 'a> {
    view: MatMut<'v, f32>,
    start: usize,
    epilogue: Epilogue<'a>,
}

impl Kernel for EpilogueRows<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run(mut self) {
        let start = self.start;
        for r in 0..self.view.nrows() {
            let row = self
                .view
                .as_mut()
                .row_mut(r)
                .try_as_row_major_mut()
                .expect("bug: a row of a row-major block has unit stride")
                .as_slice_mut();
            match self.epilogue {
                Epilogue::Bias(bias) => add(row, &bias[start..]),
                Epilogue::BiasGelu(bias) => {
                    for (v, b) in row.iter_mut().zip(&bias[start..]) {
                        *v = gelu(*v + b);
                    }
                }
                Epilogue::BiasResidual {
                    bias,
                    residual,
                    width,
                } => {
                    add(row, &bias[start..]);
                    add(row, &residual[r * width + start..]);
                }
            }
        }
    }
}

/// `row += other` element-wise (over `row`'s length).
#[inline(always)]
fn add(row: &mut [f32], other: &[f32]) {
    for (v, o) in row.iter_mut().zip(other) {
        *v += o;
    }
}

/// A weight matrix laid out for `x · W`: `rows` = inputs, `cols` = outputs, row-major.
///
/// PyTorch stores a linear layer's weight as `[out, in]`; it is transposed once at load so
/// that the kernels read it with unit stride along the outputs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Matrix {
    pub(crate) data: Vec<f32>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

impl Matrix {
    /// `[out, in]` row-major (a PyTorch `Linear.weight`) into `[in, out]`.
    pub(crate) fn from_linear_weight(weight: &[f32], out: usize, inputs: usize) -> Self {
        debug_assert_eq!(weight.len(), out * inputs);
        let mut data = vec![0.0; weight.len()];
        for (o, row) in weight.chunks_exact(inputs).enumerate() {
            for (i, &w) in row.iter().enumerate() {
                data[i * out + o] = w;
            }
        }
        Self {
            data,
            rows: inputs,
            cols: out,
        }
    }

    /// Stacks matrices side by side (same `rows`): `[A | B | C]`.
    pub(crate) fn concat_cols(parts: &[Self]) -> Self {
        let rows = parts[0].rows;
        let cols = parts.iter().map(|p| p.cols).sum();
        let mut data = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for p in parts {
                debug_assert_eq!(p.rows, rows);
                data.extend_from_slice(&p.data[r * p.cols..(r + 1) * p.cols]);
            }
        }
        Self { data, rows, cols }
    }
}

/// `dst (m × w.cols) = x (m × w.rows) · w`, then `epilogue` on each row of each column
/// block (a bias, a residual, an activation, added while the block is in cache), on as
/// many threads as `parts`.
///
/// The output columns are cut into `parts` blocks of whole multiples of [`LANES`]; each
/// block is one sequential faer product, so the result depends only on the shapes and
/// `parts`, never on which thread ran what. Call inside the [`Threads`](super::Threads)
/// pool when `parts > 1`.
pub(crate) fn linear(dst: &mut [f32], x: &[f32], w: &Matrix, parts: usize, epilogue: Epilogue<'_>) {
    let m = x.len() / w.rows;
    debug_assert_eq!(x.len(), m * w.rows);
    debug_assert_eq!(dst.len(), m * w.cols);
    if m == 0 {
        return;
    }
    let blocks = column_blocks(w.cols, parts);
    let lhs = MatRef::from_row_major_slice(x, m, w.rows);
    let mut views = Vec::with_capacity(blocks.len());
    let mut rest = MatMut::from_row_major_slice_mut(dst, m, w.cols);
    for &(start, len) in blocks.iter().rev() {
        let (left, right) = rest.split_at_col_mut(start);
        views.push((start, len, right));
        rest = left;
    }
    let run = |(start, len, mut view): (usize, usize, MatMut<'_, f32>)| {
        let rhs = MatRef::from_row_major_slice(&w.data, w.rows, w.cols).subcols(start, len);
        faer::linalg::matmul::matmul(view.as_mut(), Accum::Replace, lhs, rhs, 1.0, Par::Seq);
        vectorized(EpilogueRows {
            view,
            start,
            epilogue,
        });
    };
    if views.len() == 1 {
        views.into_iter().for_each(run);
    } else {
        use rayon::prelude::*;
        views.into_par_iter().for_each(run);
    }
}

/// Cuts `cols` output columns into at most `parts` blocks `(start, len)` of whole multiples
/// of [`LANES`] (the last takes the remainder).
fn column_blocks(cols: usize, parts: usize) -> Vec<(usize, usize)> {
    let per = cols.div_ceil(parts.max(1)).next_multiple_of(LANES);
    let mut blocks = Vec::with_capacity(parts);
    let mut start = 0;
    while start < cols {
        let len = per.min(cols - start);
        blocks.push((start, len));
        start += len;
    }
    blocks
}

/// `x · y` with [`LANES`] partial sums; call from a [`Kernel`].
#[inline(always)]
pub(crate) fn dot(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut acc = [0.0f32; LANES];
    let (xc, xr) = x.as_chunks::<LANES>();
    let (yc, yr) = y.as_chunks::<LANES>();
    for (a, b) in xc.iter().zip(yc) {
        for l in 0..LANES {
            acc[l] = a[l].mul_add(b[l], acc[l]);
        }
    }
    for (l, (a, b)) in xr.iter().zip(yr).enumerate() {
        acc[l] = a.mul_add(*b, acc[l]);
    }
    sum_lanes(&acc)
}

/// Sum of `x` with [`LANES`] partial sums; call from a [`Kernel`].
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (chunks, rest) = x.as_chunks::<LANES>();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (l, v) in rest.iter().enumerate() {
        acc[l] += v;
    }
    sum_lanes(&acc)
}

/// Adds the partial sums pairwise (a fixed tree: 8 + 4 + 2 + 1 additions).
#[inline(always)]
fn sum_lanes(acc: &[f32; LANES]) -> f32 {
    let mut v = *acc;
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            v[l] += v[l + width];
        }
        width /= 2;
    }
    v[0]
}

/// `row = (row - mean) / sqrt(var + eps) * gamma + beta` over one token's features (the
/// biased variance, as PyTorch's `LayerNorm`); call from a [`Kernel`].
#[inline(always)]
pub(crate) fn layer_norm(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    #[expect(
        clippy::cast_precision_loss,
        reason = "a row holds at most a few thousand features"
    )]
    let n = row.len() as f32;
    let mean = sum(row) / n;
    let mut acc = [0.0f32; LANES];
    let (chunks, rest) = row.as_chunks::<LANES>();
    for c in chunks {
        for l in 0..LANES {
            let d = c[l] - mean;
            acc[l] = d.mul_add(d, acc[l]);
        }
    }
    for (l, v) in rest.iter().enumerate() {
        let d = v - mean;
        acc[l] = d.mul_add(d, acc[l]);
    }
    let rstd = 1.0 / (sum_lanes(&acc) / n + eps).sqrt();
    for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *x = ((*x - mean) * rstd).mul_add(*g, *b);
    }
}

/// Softmax of `x` in place (max-subtracted); call from a [`Kernel`].
#[inline(always)]
pub(crate) fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / sum(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// GELU with the exact error function, `0.5 x (1 + erf(x / sqrt 2))` (BERT's `"gelu"`).
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The error function in single precision: Eigen's rational approximation (used by
/// TensorFlow and XLA), `x P(x²) / Q(x²)` on `[-4, 4]`, ±1 beyond. Branch-free, so it
/// vectorizes. Within 1e-6 of the exact value (see the tests).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
    p = x2.mul_add(p, -2.101_024e-6);
    p = x2.mul_add(p, -5.692_506_4e-5);
    p = x2.mul_add(p, -7.349_906_3e-4);
    p = x2.mul_add(p, -2.954_6e-3);
    p = x2.mul_add(p, -1.609_603_3e-2);
    let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
    q = x2.mul_add(q, -1.682_827e-3);
    q = x2.mul_add(q, -7.373_329e-3);
    q = x2.mul_add(q, -1.426_474e-2);
    x * p / q
}

/// `e^x` in single precision (Cephes' `expf`): `x = n ln 2 + r`, a degree-6 polynomial in
/// `r`, then `2^n` built from its exponent bits. Branch-free; inputs below -87.3 give about
/// 1e-38 instead of 0 (harmless for softmax, where every input is at most 0).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = x.mul_add(std::f32::consts::LOG2_E, 0.5).floor();
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = r.mul_add(1.987_569_1e-4, 1.398_2e-3);
    p = r.mul_add(p, 8.333_452e-3);
    p = r.mul_add(p, 4.166_579_6e-2);
    p = r.mul_add(p, 0.166_666_65);
    p = r.mul_add(p, 0.5);
    let y = (p * r).mul_add(r, r) + 1.0;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "n is an integer in [-126, 128] after the clamp, so n + 127 fits the exponent bits"
    )]
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    y * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf in double precision: its Taylor series on [-4, 4] (accurate to ~1e-10 there),
    /// ±1 beyond (erfc(4) < 2e-8).
    fn erf_f64(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let mut term = x;
        let mut total = x;
        for n in 1..200 {
            let n = f64::from(n);
            term *= -x * x / n;
            total += term / (2.0 * n + 1.0);
        }
        total * 2.0 / std::f64::consts::PI.sqrt()
    }

    fn samples(lo: f32, hi: f32, n: u16) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * f32::from(i) / f32::from(n))
    }

    #[test]
    fn erf_is_within_1e_6_of_the_exact_value() {
        let worst = samples(-6.0, 6.0, 20_000)
            .map(|x| (f64::from(erf(x)) - erf_f64(f64::from(x))).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "erf off by {worst}");
    }

    #[test]
    fn exp_is_within_2_ulp_relative() {
        let worst = samples(-87.0, 88.0, 20_000)
            .map(|x| {
                let want = f64::from(x).exp();
                (f64::from(exp(x)) - want).abs() / want
            })
            .fold(0.0, f64::max);
        assert!(worst < 2.5e-7, "exp relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37);
    }

    #[test]
    fn reductions_match_plain_sums() {
        let x: Vec<f32> = (0..389).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..389).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f64 = x.iter().map(|&v| f64::from(v)).sum();
        assert!((f64::from(sum(&x)) - plain).abs() < 1e-4);
        let plain: f64 = x.iter().zip(&y).map(|(a, b)| f64::from(a * b)).sum();
        assert!((f64::from(dot(&x, &y)) - plain).abs() < 1e-4);
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let mut row: Vec<f32> = (0..384).map(|i| (i as f32).sqrt()).collect();
        let gamma = vec![1.0; 384];
        let beta = vec![0.0; 384];
        layer_norm(&mut row, &gamma, &beta, 1e-12);
        let mean: f32 = row.iter().sum::<f32>() / 384.0;
        let var: f32 = row.iter().map(|v| v * v).sum::<f32>() / 384.0;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
            "{mean} {var}"
        );
    }

    #[test]
    fn linear_matches_a_naive_product_for_any_split() {
        let (m, k, n) = (5, 7, 40);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.3).sin()).collect();
        let torch: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.7).cos()).collect();
        let w = Matrix::from_linear_weight(&torch, n, k);
        let bias: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let residual: Vec<f32> = (0..m * n).map(|i| (i as f32).sqrt()).collect();
        let mut want = vec![0.0; m * n];
        for r in 0..m {
            for c in 0..n {
                let s: f32 = (0..k).map(|i| x[r * k + i] * torch[c * k + i]).sum();
                want[r * n + c] = s + bias[c] + residual[r * n + c];
            }
        }
        for parts in [1, 2, 3] {
            let mut got = vec![f32::NAN; m * n];
            let epilogue = Epilogue::BiasResidual {
                bias: &bias,
                residual: &residual,
                width: n,
            };
            linear(&mut got, &x, &w, parts, epilogue);
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-4, "parts {parts}: off by {diff}");
        }
        assert_eq!(column_blocks(40, 2), [(0, 32), (32, 8)]);
        assert_eq!(column_blocks(384, 2), [(0, 192), (192, 192)]);
        assert_eq!(column_blocks(1152, 1), [(0, 1152)]);
    }
}
