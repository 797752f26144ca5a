//! CPU backend: expert FFNs and linear layers as f32 matrix products with the `gemm` crate,
//! multi-threaded on a rayon pool owned by the backend.
//!
//! Weights are read where they lie (a mapped file or a slot): aligned f32 weights are used in
//! place; bf16/f16 (and unaligned f32) weights are decoded to f32 one tile of rows at a time,
//! never as a whole tensor. Every product accumulates in f32.
//!
//! Parallel split: the output features (rows of `W`, contiguous in memory) are cut into one
//! range per thread, and each thread runs a single-threaded `gemm` on its range. At 1 token the
//! job is memory-bound and this lets every core stream its own part of the weights; at many
//! tokens each thread still gets an `m × n/threads × k` product large enough for gemm's kernels.

use rayon::prelude::*;

use super::{Backend, ExpertWeights, WeightRef};
use crate::dtype::{DType, decode_f32};
use crate::error::{Error, Result};
use crate::ffn::FfnKind;

/// Bytes of f32 weights decoded at a time per thread when weights are not f32 in place
/// (fits a typical 256 KiB–1 MiB L2 next to the activations).
const DECODE_TILE_BYTES: usize = 256 * 1024;

/// Up to this many rows (tokens of one expert), products use the streaming kernel
/// [`rows_small`] instead of gemm. Measured on the 2-core VM (Mixtral-shaped block, see
/// docs/PERFORMANCE.md): at 16 tokens (≈4 rows per expert) gemm 0.19 took 150–160 ms against
/// 24–32 ms for this kernel, which reads every weight row from memory once and applies it to
/// all tokens; at 128 tokens (≈32 rows per expert) this kernel took 125–138 ms against
/// 143–144 ms for gemm. Above 64 rows gemm's packed microkernel wins.
const SMALL_M: usize = 64;

/// Minimum output features per parallel range: below this, splitting costs more in
/// scheduling than it gains.
const MIN_ROWS_PER_TASK: usize = 16;

/// The CPU compute backend.
pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend").field("threads", &self.threads).finish()
    }
}

impl CpuBackend {
    /// A backend with its own pool of `threads` threads (0 = one per available core).
    pub fn new(threads: usize) -> Result<CpuBackend> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("moe-cpu-{i}"))
            .build()
            .map_err(|e| {
                Error::InvalidOption(format!("cannot start {threads} CPU threads: {e}"))
            })?;
        Ok(CpuBackend { pool, threads })
    }

    /// Number of compute threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on this backend's pool (so nested rayon work uses its threads).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of the output (see `linear_f32`), and the
// pointer outlives them because `pool.install` joins every task before returning.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper, not its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Checks that `w` is a float weight of `rows × cols` elements.
fn check_weight(w: &WeightRef<'_>, what: &str) -> Result<()> {
    if !w.dtype.is_float_weight() {
        return Err(Error::UnsupportedDtype {
            name: what.to_string(),
            found: w.dtype.to_string(),
            expected: "f32, bf16 or f16".into(),
        });
    }
    let need = w.rows * w.cols * w.dtype.size();
    if w.bytes.len() != need {
        return Err(Error::input(format!(
            "{what}: {} bytes given for a {}×{} {} weight ({need} bytes expected)",
            w.bytes.len(),
            w.rows,
            w.cols,
            w.dtype
        )));
    }
    Ok(())
}

/// `out[m × n] (row stride ldo) = x[m × k] · W[n × k]ᵀ` for one block of W rows already in f32.
///
/// # Safety
/// `out` must be valid for writes of `m` rows of `n` elements with row stride `ldo`.
unsafe fn gemm_rows(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: *mut f32, ldo: usize) {
    debug_assert!(x.len() >= m * k && w.len() >= n * k);
    // SAFETY: lhs is x (row-major m×k), rhs is Wᵀ read through strides (element (kk, j) at
    // j·k + kk), dst is the caller's block; all in bounds by the checks above and the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            ldo as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Dot products of 4 rows of `x` with one weight row `w`, in 8 f32 lanes (vectorised by the
/// compiler), lanes summed at the end.
#[inline]
fn dot4(x: [&[f32]; 4], w: &[f32]) -> [f32; 4] {
    let mut acc = [[0f32; 8]; 4];
    let chunks = w.len() / 8;
    for c in 0..chunks {
        let wc: &[f32; 8] = w[c * 8..c * 8 + 8].try_into().unwrap_or(&[0.0; 8]);
        for (a, xr) in acc.iter_mut().zip(&x) {
            let xc: &[f32; 8] = xr[c * 8..c * 8 + 8].try_into().unwrap_or(&[0.0; 8]);
            for l in 0..8 {
                a[l] += xc[l] * wc[l];
            }
        }
    }
    let mut out = [0f32; 4];
    for (o, (a, xr)) in out.iter_mut().zip(acc.iter().zip(&x)) {
        let mut s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        for i in chunks * 8..w.len() {
            s += xr[i] * w[i];
        }
        *o = s;
    }
    out
}

/// `out[m × n] (row stride ldo) = x[m × k] · W[n × k]ᵀ` for few rows: each weight row is read
/// from memory once and applied to every token (4 at a time). Uses AVX2+FMA when the CPU has
/// them (checked at run time), else portable code.
///
/// # Safety
/// As [`gemm_rows`].
unsafe fn rows_small(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out: *mut f32,
    ldo: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features are present; bounds as the caller guarantees.
        unsafe { avx2::rows_small(x, m, k, w, n, out, ldo) };
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe { rows_small_portable(x, m, k, w, n, out, ldo) }
}

/// Portable version of [`rows_small`] (no AVX2 on this CPU).
///
/// # Safety
/// As [`gemm_rows`].
unsafe fn rows_small_portable(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out: *mut f32,
    ldo: usize,
) {
    let row = |i: usize| &x[i * k..(i + 1) * k];
    for j in 0..n {
        let wr = &w[j * k..(j + 1) * k];
        let mut i = 0;
        while i < m {
            // The last group repeats its final row; the duplicates are not written.
            let ids = [i, (i + 1).min(m - 1), (i + 2).min(m - 1), (i + 3).min(m - 1)];
            let d = dot4(ids.map(row), wr);
            for (r, v) in d.iter().enumerate().take((m - i).min(4)) {
                // SAFETY: row i + r < m and column j < n lie inside the caller's block.
                unsafe { *out.add((i + r) * ldo + j) = *v };
            }
            i += 4;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Bytes of weight rows kept hot while all tokens pass over them.
    const L2_TILE_BYTES: usize = 128 * 1024;

    /// Horizontal sum of 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// AVX2+FMA version of the portable `rows_small`: per weight row, 4 tokens × 2
    /// accumulators of 8 lanes; weights streamed once, token rows reused from L1.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `x` holds `m × k`, `w` holds `n × k`, and `out` is
    /// valid for `m` rows of `n` values with stride `ldo`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows_small(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        n: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let k16 = k / 16 * 16;
        let xp = x.as_ptr();
        if m == 1 {
            // One token: 4 independent accumulators over one row hide the FMA latency.
            let k32 = k / 32 * 32;
            for j in 0..n {
                // SAFETY: offsets below k within row j of w and within x; out[j] is in block.
                unsafe {
                    let wp = w.as_ptr().add(j * k);
                    let mut a = [_mm256_setzero_ps(); 4];
                    let mut c = 0;
                    while c < k32 {
                        for (q, acc) in a.iter_mut().enumerate() {
                            let o = c + 8 * q;
                            *acc = _mm256_fmadd_ps(
                                _mm256_loadu_ps(xp.add(o)),
                                _mm256_loadu_ps(wp.add(o)),
                                *acc,
                            );
                        }
                        c += 32;
                    }
                    let mut s =
                        hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
                    for e in k32..k {
                        s += *xp.add(e) * *wp.add(e);
                    }
                    *out.add(j) = s;
                }
            }
            return;
        }
        // Weight rows in tiles that stay in L2 while every group of 4 tokens passes over them,
        // so the weights are read from memory once whatever the token count.
        let tile = (L2_TILE_BYTES / (k * 4)).max(1);
        let mut j0 = 0;
        while j0 < n {
            let j1 = (j0 + tile).min(n);
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(4);
                for j in j0..j1 {
                    // SAFETY: every pointer offset stays below m·k for x, n·k for w, and
                    // inside the caller's output block, by the loop bounds.
                    unsafe {
                        let wp = w.as_ptr().add(j * k);
                        let r = [i, i + 1.min(rows - 1), i + 2.min(rows - 1), i + 3.min(rows - 1)];
                        let xr = r.map(|t| xp.add(t * k));
                        let mut a0 = [_mm256_setzero_ps(); 4];
                        let mut a1 = [_mm256_setzero_ps(); 4];
                        let mut c = 0;
                        while c < k16 {
                            let w0 = _mm256_loadu_ps(wp.add(c));
                            let w1 = _mm256_loadu_ps(wp.add(c + 8));
                            for q in 0..4 {
                                a0[q] = _mm256_fmadd_ps(_mm256_loadu_ps(xr[q].add(c)), w0, a0[q]);
                                a1[q] =
                                    _mm256_fmadd_ps(_mm256_loadu_ps(xr[q].add(c + 8)), w1, a1[q]);
                            }
                            c += 16;
                        }
                        for q in 0..rows {
                            let mut s = hsum(_mm256_add_ps(a0[q], a1[q]));
                            for e in k16..k {
                                s += *xr[q].add(e) * *wp.add(e);
                            }
                            *out.add((i + q) * ldo + j) = s;
                        }
                    }
                }
                i += 4;
            }
            j0 = j1;
        }
    }
}

/// Product of a block of W rows already in f32, by the kernel suited to `m`.
///
/// # Safety
/// As [`gemm_rows`].
unsafe fn product(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: *mut f32, ldo: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if m <= SMALL_M {
            rows_small(x, m, k, w, n, out, ldo)
        } else {
            gemm_rows(x, m, k, w, n, out, ldo)
        }
    }
}

impl CpuBackend {
    /// The parallel product without bias, weights of any float dtype.
    fn linear_f32(&self, x: &[f32], m: usize, w: WeightRef<'_>, out: &mut [f32]) {
        let (n, k) = (w.rows, w.cols);
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            out.fill(0.0);
            return;
        }
        let direct: Option<&[f32]> = match w.dtype {
            DType::F32 => bytemuck::try_cast_slice(w.bytes).ok(),
            _ => None,
        };
        let tasks = self.threads.min(n.div_ceil(MIN_ROWS_PER_TASK)).max(1);
        let per = n.div_ceil(tasks);
        let esize = w.dtype.size();
        let ptr = OutPtr(out.as_mut_ptr());
        let run = |t: usize| {
            let j0 = t * per;
            let j1 = ((t + 1) * per).min(n);
            if j0 >= j1 {
                return;
            }
            match direct {
                // SAFETY: columns j0..j1 of every row belong to this task only.
                Some(wf) => unsafe {
                    product(x, m, k, &wf[j0 * k..j1 * k], j1 - j0, ptr.get().add(j0), n)
                },
                None => {
                    let tile_rows = (DECODE_TILE_BYTES / (k * 4)).max(1);
                    let mut buf = vec![0f32; tile_rows.min(j1 - j0) * k];
                    let mut j = j0;
                    while j < j1 {
                        let r = tile_rows.min(j1 - j);
                        let tile = &mut buf[..r * k];
                        decode_f32(w.dtype, &w.bytes[j * k * esize..(j + r) * k * esize], tile);
                        // SAFETY: as above, columns j..j+r are this task's.
                        unsafe { product(x, m, k, tile, r, ptr.get().add(j), n) };
                        j += r;
                    }
                }
            }
        };
        if tasks == 1 {
            run(0);
        } else {
            self.pool.install(|| (0..tasks).into_par_iter().for_each(run));
        }
    }
}

/// Adds a bias `[n]` to every row of `out [m × n]`.
fn add_bias(out: &mut [f32], n: usize, bias: &WeightRef<'_>) {
    let b = crate::dtype::to_f32_vec(bias.dtype, bias.bytes);
    for row in out.chunks_exact_mut(n) {
        for (o, v) in row.iter_mut().zip(&b) {
            *o += v;
        }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn linear(
        &self,
        x: &[f32],
        rows: usize,
        w: WeightRef<'_>,
        bias: Option<WeightRef<'_>>,
        out: &mut [f32],
    ) -> Result<()> {
        check_weight(&w, "weight")?;
        if x.len() != rows * w.cols || out.len() != rows * w.rows {
            return Err(Error::input(format!(
                "linear: input has {} values and output {} for {rows} rows of a {}×{} weight",
                x.len(),
                out.len(),
                w.rows,
                w.cols
            )));
        }
        self.linear_f32(x, rows, w, out);
        if let Some(b) = bias {
            check_weight(&b, "bias")?;
            if b.rows * b.cols != w.rows {
                return Err(Error::input(format!(
                    "bias has {} values for {} output features",
                    b.rows * b.cols,
                    w.rows
                )));
            }
            add_bias(out, w.rows, &b);
        }
        Ok(())
    }

    fn expert_ffn(
        &self,
        ffn: FfnKind,
        w: &ExpertWeights<'_>,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let f = w.up.rows;
        let h = w.up.cols;
        if w.down.rows != h || w.down.cols != f {
            return Err(Error::input(format!(
                "expert down projection is {}×{}, expected {h}×{f}",
                w.down.rows, w.down.cols
            )));
        }
        let mut hid = vec![0f32; rows * f];
        match ffn {
            FfnKind::Glu(act) => {
                let gate = w.gate.ok_or_else(|| {
                    Error::input("a GLU expert needs a gate projection".to_string())
                })?;
                self.linear(x, rows, gate, None, &mut hid)?;
                let mut up = vec![0f32; rows * f];
                self.linear(x, rows, w.up, w.up_bias, &mut up)?;
                for (g, u) in hid.iter_mut().zip(&up) {
                    *g = act.apply(*g) * u;
                }
            }
            FfnKind::Plain(act) => {
                self.linear(x, rows, w.up, w.up_bias, &mut hid)?;
                for v in hid.iter_mut() {
                    *v = act.apply(*v);
                }
            }
        }
        self.linear(&hid, rows, w.down, w.down_bias, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both streaming kernels (the one this CPU dispatches to and the portable fallback) and
    /// gemm agree on every row count around the 4-token grouping and odd `k`. Tolerance 1e-5
    /// relative: f32 sums of 37 products in different orders.
    #[test]
    fn kernels_agree() {
        let (k, n) = (37usize, 21usize);
        let mut rng = crate::rng::SplitMix64::new(1);
        let x: Vec<f32> = (0..9 * k).map(|_| rng.normal() as f32).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
        for m in 1..=9 {
            let mut a = vec![0f32; m * n];
            let mut b = vec![0f32; m * n];
            let mut c = vec![0f32; m * n];
            // SAFETY: each output holds m × n with stride n.
            unsafe {
                rows_small(&x, m, k, &w, n, a.as_mut_ptr(), n);
                rows_small_portable(&x, m, k, &w, n, b.as_mut_ptr(), n);
                gemm_rows(&x, m, k, &w, n, c.as_mut_ptr(), n);
            }
            for ((a, b), c) in a.iter().zip(&b).zip(&c) {
                assert!((a - c).abs() <= 1e-5 * (1.0 + c.abs()), "m={m}: {a} vs {c}");
                assert!((b - c).abs() <= 1e-5 * (1.0 + c.abs()), "m={m}: {b} vs {c}");
            }
        }
    }
}
