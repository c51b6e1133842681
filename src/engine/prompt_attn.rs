//! Attention of a prompt chunk over its KV cache, on host vectors and the own pool, in candle's
//! exact arithmetic.
//!
//! Through candle a chunk's attention is two batched GEMMs on rayon's pool (which packs its
//! operands every call and computes the masked half of every causal score matrix), then a
//! scale pass, a mask pass, the softmax (an `exp` per masked score too) and the head
//! transposes back, each a full pass over the scores. On 2 cores rayon's threads and the own
//! pool's also take turns at the cores between the kernels. Here each query row's scores,
//! softmax and weighted sum of values run in one pass over the positions it sees, and rows are
//! shared between the own pool's threads.
//!
//! **Numerics: bit-identical to the candle path** (`candle_path` in the tests). gemm, which
//! candle's CPU matmul calls, accumulates each output with one fused multiply-add per step of
//! the inner dimension, in order, from zero, as long as that dimension fits one of its depth
//! blocks (at least 512) and the product takes its general kernel (not its horizontal
//! kernel for tiny outputs, nor its vector paths for one row, one column or a depth of 2).
//! Each score here is that same chain over the head dimension, each output value that same
//! chain over the positions; a masked position's weight is an exact 0, whose multiply-add
//! leaves the sum unchanged, so it is skipped. The scale, mask and softmax are candle's
//! operations in candle's order (`ops::softmax_row_visible`). Past 512 positions gemm sums each
//! depth block apart and adds the blocks; here the chain runs on over every position, so a
//! chunk there differs from candle's path by float rounding (a decoded row there takes
//! `decode_attn`). Outside those conditions (soft caps, sinks, tiny chunks) [`attend`] declines
//! and the caller keeps candle's path. `INFLUENCE_ATTN=candle` declines always, for
//! comparisons.
//!
//! An f16 cache (`engine.kv_cache = "f16"`) is read in place, each value widened exactly to f32
//! as it is loaded: the results are candle's path's on the widened K and V.

use candle_core::{CpuStorage, Result, Storage, Tensor};
use half::f16;

/// What a chunk's attention needs besides its tensors.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies the raw scores (candle's `affine` in f32).
    pub scale: f32,
}

/// The depth gemm accumulates in one chain at least (its smallest depth block).
pub(super) const ONE_CHAIN: usize = 512;
/// Scores per key block: one 512-bit vector of f32.
const KEYS: usize = 16;
/// From this many multiply-adds on, rows are shared between the pool's threads.
const PAR_MIN: usize = 1 << 16;

/// Whether `INFLUENCE_ATTN=candle` asks for candle's path.
pub(super) fn forced_candle() -> bool {
    static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *F.get_or_init(|| std::env::var("INFLUENCE_ATTN").is_ok_and(|v| v.trim() == "candle"))
}

/// A value type a KV cache holds, read as f32.
pub(super) trait KvValue: Copy + Sync {
    /// Two bytes a value (f16), widened as it is read.
    const HALF: bool;

    fn widen(self) -> f32;

    /// `src` as f32 values: itself, or widened into `buf` (of the same length).
    fn row<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];

    /// Eight consecutive values as one vector.
    ///
    /// # Safety
    /// `p` must be valid for 8 reads; the CPU must have AVX and F16C (every AVX2 CPU has).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvValue for f32 {
    const HALF: bool = false;

    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }

    #[inline(always)]
    fn row<'a>(src: &'a [f32], _buf: &'a mut [f32]) -> &'a [f32] {
        src
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's promise.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl KvValue for f16 {
    const HALF: bool = true;

    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }

    #[inline(always)]
    fn row<'a>(src: &'a [f16], buf: &'a mut [f32]) -> &'a [f32] {
        use half::slice::HalfFloatSliceExt;
        // F16C where the CPU has it (half checks at run time).
        src.convert_to_f32_slice(buf);
        buf
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's promise; f16 is 16 bits, as `vcvtph2ps` reads them.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
}

/// One KV buffer's view: where head 0 starts, the stride between heads, the positions held.
struct KvView<'a, T> {
    data: &'a [T],
    start: usize,
    head_stride: usize,
}

impl<T> KvView<'_, T> {
    /// Position `j` of KV head `g`.
    fn row(&self, g: usize, j: usize, hd: usize) -> &[T] {
        let at = self.start + g * self.head_stride + j * hd;
        &self.data[at..at + hd]
    }
}

/// `q`: the chunk's query heads after RoPE, (1, heads, t, head_dim), contiguous; `k`, `v`: the
/// positions the cache holds, (1, kv_heads, len, head_dim), each head's positions contiguous
/// (a cache buffer narrowed to its length); `mask`: (t, cols ≥ len) of 0 and −∞ whose last
/// `len` columns are this chunk's (as the candle path narrows it), or none. Returns the
/// attention output (1, t, heads × head_dim), or `None` where candle's path must run (see the
/// module's conditions).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    s: &Shape,
) -> Option<Result<Tensor>> {
    attend_with(has_fma(), q, k, v, mask, s)
}

/// [`attend`] on the vector kernels (`fma`, where the CPU has them) or the plain loops.
fn attend_with(
    fma: bool,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    s: &Shape,
) -> Option<Result<Tensor>> {
    let (nh, nkv, hd) = (s.heads, s.kv_heads, s.head_dim);
    if forced_candle() || nkv == 0 || !nh.is_multiple_of(nkv) || hd <= 2 || hd > ONE_CHAIN {
        return None;
    }
    let (_, qh, t, qd) = q.dims4().ok()?;
    let (_, _, len, _) = k.dims4().ok()?;
    let rows = (nh / nkv) * t;
    // gemm's general kernel for both products: not one row, not a depth of 2 or less, not
    // 256 outputs or fewer (its horizontal kernel), and one depth block.
    // Past one depth block a decoded row takes `decode_attn`; a prompt chunk stays here.
    let long_decode = t == 1 && len > ONE_CHAIN;
    if qh != nh || qd != hd || rows <= 1 || len <= 2 || rows * len <= 256 || long_decode {
        return None;
    }
    let (q_guard, q_layout) = q.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(q_all)) = &*q_guard else {
        return None;
    };
    let (qa, qb) = q_layout.contiguous_offsets()?;
    let q_data = &q_all[qa..qb];
    let view = |x: &Tensor| -> Option<(usize, usize)> {
        let (_, h, l, d) = x.dims4().ok()?;
        let st = x.layout().stride();
        (h == nkv && l == len && d == hd && st[3] == 1 && st[2] == hd)
            .then(|| (x.layout().start_offset(), st[1]))
    };
    let (ks, kh) = view(k)?;
    let (vs, vh) = view(v)?;
    let (k_guard, v_guard) = (k.storage_and_layout().0, v.storage_and_layout().0);
    fn views<'a, T>(k: &'a [T], v: &'a [T], at: [usize; 4]) -> (KvView<'a, T>, KvView<'a, T>) {
        let view = |data, start, head_stride| KvView {
            data,
            start,
            head_stride,
        };
        (view(k, at[0], at[1]), view(v, at[2], at[3]))
    }
    let at = [ks, kh, vs, vh];

    // The mask's rows: the last `len` columns, and the span of positions each row sees.
    let m_guard = mask.map(|m| m.storage_and_layout());
    let mask_rows: Option<(&[f32], usize)> = match (&m_guard, mask) {
        (Some((g, l)), Some(m)) => {
            let Storage::Cpu(CpuStorage::F32(md)) = &**g else {
                return None;
            };
            let (ma, mb) = l.contiguous_offsets()?;
            let (mt, cols) = m.dims2().ok()?;
            if mt != t || cols < len {
                return None;
            }
            Some((&md[ma..mb], cols))
        }
        _ => None,
    };
    let mut spans = Vec::with_capacity(t);
    for i in 0..t {
        let span = match mask_rows {
            Some((md, cols)) => {
                let row = &md[i * cols + cols - len..(i + 1) * cols];
                let lo = row.iter().position(|m| *m != f32::NEG_INFINITY);
                let hi = row.iter().rposition(|m| *m != f32::NEG_INFINITY);
                match (lo, hi) {
                    (Some(lo), Some(hi)) => (lo, hi + 1),
                    // A row that sees nothing is NaN through candle's softmax: leave it there.
                    _ => return None,
                }
            }
            None => (0, len),
        };
        spans.push(span);
    }
    let dims = Dims {
        t,
        nh,
        nkv,
        hd,
        len,
    };
    let y = match (&*k_guard, &*v_guard) {
        (Storage::Cpu(CpuStorage::F32(kd)), Storage::Cpu(CpuStorage::F32(vd))) => {
            let (kv_k, kv_v) = views(kd.as_slice(), vd.as_slice(), at);
            chunk(fma, q_data, &kv_k, &kv_v, &spans, mask_rows, dims, s.scale)
        }
        (Storage::Cpu(CpuStorage::F16(kd)), Storage::Cpu(CpuStorage::F16(vd))) => {
            let (kv_k, kv_v) = views(kd.as_slice(), vd.as_slice(), at);
            chunk(fma, q_data, &kv_k, &kv_v, &spans, mask_rows, dims, s.scale)
        }
        _ => return None,
    };
    drop((q_guard, k_guard, v_guard, m_guard));
    Some(Tensor::from_vec(
        y,
        (1, t, nh * hd),
        &candle_core::Device::Cpu,
    ))
}

/// The chunk's and cache's sizes.
#[derive(Clone, Copy)]
struct Dims {
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    len: usize,
}

/// The attention output (t × heads × head_dim) of the checked views.
#[allow(clippy::too_many_arguments)]
fn chunk<T: KvValue>(
    fma: bool,
    q_data: &[f32],
    kv_k: &KvView<T>,
    kv_v: &KvView<T>,
    spans: &[(usize, usize)],
    mask_rows: Option<(&[f32], usize)>,
    dims: Dims,
    scale: f32,
) -> Vec<f32> {
    let Dims {
        t,
        nh,
        nkv,
        hd,
        len,
    } = dims;
    // Keys transposed per KV head, (head_dim × padded len), so 16 positions' scores are one
    // vector of multiply-adds per head dimension.
    let lp = len.next_multiple_of(KEYS);
    let mut kt = vec![0f32; nkv * hd * lp];
    for g in 0..nkv {
        let dst = &mut kt[g * hd * lp..(g + 1) * hd * lp];
        for j in 0..len {
            for (d, x) in kv_k.row(g, j, hd).iter().enumerate() {
                dst[d * lp + j] = x.widen();
            }
        }
    }

    let mut out = vec![0f32; t * nh * hd];
    let out_at = out.as_mut_ptr() as usize;
    let job = Job {
        q: q_data,
        kt: &kt,
        lp,
        v: kv_v,
        spans,
        mask: mask_rows,
        t,
        nh,
        nkv,
        hd,
        scale,
        out: out_at,
        fma,
    };
    // One unit per (query head, row): a row's work grows with the positions it sees, so small
    // units let the pool's cursor even the threads out.
    let units = nh * t;
    let run = |range: std::ops::Range<usize>| {
        let mut row = vec![0f32; len];
        for u in range {
            // SAFETY: every unit writes only its own (row, head) output values.
            unsafe { job.unit(u / t, u % t, &mut row) };
        }
    };
    if units * len * hd < PAR_MIN {
        run(0..units);
    } else {
        super::pool::run_chunked(units, run);
    }
    out
}

/// Everything a unit reads, and where it writes.
struct Job<'a, T> {
    q: &'a [f32],
    kt: &'a [f32],
    lp: usize,
    v: &'a KvView<'a, T>,
    spans: &'a [(usize, usize)],
    /// The mask's values and columns per row.
    mask: Option<(&'a [f32], usize)>,
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    scale: f32,
    /// Address of the (t × heads × head_dim) output.
    out: usize,
    /// Whether the CPU runs AVX2 with FMA and F16C (the vector kernels below; same results).
    fma: bool,
}

impl<T: KvValue> Job<'_, T> {
    /// Query head `h`, chunk row `i`: scores, softmax and the weighted sum of values.
    ///
    /// # Safety
    /// No other call may write the same (`h`, `i`).
    unsafe fn unit(&self, h: usize, i: usize, row: &mut [f32]) {
        let (hd, lp, len) = (self.hd, self.lp, row.len());
        let g = h / (self.nh / self.nkv);
        let q = &self.q[(h * self.t + i) * hd..][..hd];
        let kt = &self.kt[g * hd * lp..(g + 1) * hd * lp];
        let (lo, hi) = self.spans[i];
        let mask = self
            .mask
            .map(|(md, cols)| &md[i * cols + cols - len..(i + 1) * cols]);

        // Scores of the positions the row sees: candle's matmul, then `· scale`, then the mask.
        row[..lo].fill(f32::NEG_INFINITY);
        row[hi..].fill(f32::NEG_INFINITY);
        let mut j0 = lo - lo % KEYS;
        while j0 < hi {
            // Four independent chains at a time keep the multiply-add units busy (one chain
            // waits on its previous step's latency).
            let blocks = if j0 + 4 * KEYS <= lp { 4 } else { 1 };
            let mut acc = [[0f32; KEYS]; 4];
            match (self.fma, blocks) {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `fma` says the CPU has AVX2 and FMA; the blocks lie inside `kt`.
                (true, 4) => unsafe { fma::scores::<8>(q, kt, lp, j0, &mut acc) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                (true, _) => unsafe { fma::scores::<2>(q, kt, lp, j0, &mut acc) },
                (_, 4) => scores::<4>(q, kt, lp, j0, &mut acc),
                _ => scores::<1>(q, kt, lp, j0, &mut acc),
            }
            for (l, a) in acc.iter().take(blocks).flatten().enumerate() {
                let j = j0 + l;
                if j >= lo && j < hi {
                    // candle's `affine`: `v · scale + 0`.
                    let scaled = *a * self.scale + 0.0;
                    row[j] = match mask {
                        Some(m) => scaled + m[j],
                        None => scaled,
                    };
                }
            }
            j0 += blocks * KEYS;
        }
        super::ops::softmax_row_visible(row, lo, hi);

        // Weighted sum of the values, one chain per output value over the positions in order,
        // a fixed-width slice of the head at a time so the sums stay in registers.
        let dst = (self.out as *mut f32).add((i * self.nh + h) * hd);
        let mut c = 0;
        while c < hd {
            #[cfg(target_arch = "x86_64")]
            if self.fma && hd - c >= 64 {
                // SAFETY: `fma` says the CPU has AVX2, FMA and F16C; `dst` as below.
                c += unsafe { fma::weighted64(row, lo, hi, self.v, g, hd, c, dst) };
                continue;
            }
            let w = if hd - c >= 64 {
                weighted::<64, T>(row, lo, hi, self.v, g, hd, c, dst)
            } else if hd - c >= 16 {
                weighted::<16, T>(row, lo, hi, self.v, g, hd, c, dst)
            } else {
                weighted::<1, T>(row, lo, hi, self.v, g, hd, c, dst)
            };
            c += w;
        }
    }
}

/// `B` blocks of 16 scores from position `j0`: for each, the chain of multiply-adds over the
/// head dimension in order, from zero.
#[inline(always)]
fn scores<const B: usize>(q: &[f32], kt: &[f32], lp: usize, j0: usize, acc: &mut [[f32; KEYS]; 4]) {
    for (d, &qd) in q.iter().enumerate() {
        let keys = &kt[d * lp + j0..d * lp + j0 + B * KEYS];
        for (b, block) in acc.iter_mut().take(B).enumerate() {
            for (a, &kv) in block.iter_mut().zip(&keys[b * KEYS..(b + 1) * KEYS]) {
                *a = qd.mul_add(kv, *a);
            }
        }
    }
}

/// Values `c..c + W` of the head's output: for each, the chain over positions `lo..hi` of
/// weight × value, in order, from zero, then gemm's final `1 · sum`. Returns `W`.
///
/// # Safety
/// `dst` must be valid for `hd` writes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weighted<const W: usize, T: KvValue>(
    row: &[f32],
    lo: usize,
    hi: usize,
    v: &KvView<T>,
    g: usize,
    hd: usize,
    c: usize,
    dst: *mut f32,
) -> usize {
    let mut acc = [0f32; W];
    for (j, &p) in row.iter().enumerate().take(hi).skip(lo) {
        let x = &v.row(g, j, hd)[c..c + W];
        for (a, &x) in acc.iter_mut().zip(x) {
            *a = p.mul_add(x.widen(), *a);
        }
    }
    for (d, a) in acc.iter().enumerate() {
        // SAFETY: c + d < hd, inside the caller's promise.
        unsafe { *dst.add(c + d) = 1.0 * *a };
    }
    W
}

/// Whether the vector kernels in [`fma`] run on this CPU.
pub(super) fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The same chains as [`scores`] and [`weighted`], eight lanes per vector: `vfmadd` is the
/// fused multiply-add `mul_add` is, so results are identical.
#[cfg(target_arch = "x86_64")]
mod fma {
    use super::{KvValue, KvView, KEYS};
    use std::arch::x86_64::*;

    /// `V / 2` blocks of 16 scores from `j0` (`V` vectors of 8).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, and `kt` must hold `j0 + 8 · V` values past each
    /// row start `d · lp`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores<const V: usize>(
        q: &[f32],
        kt: &[f32],
        lp: usize,
        j0: usize,
        out: &mut [[f32; KEYS]; 4],
    ) {
        let mut acc = [_mm256_setzero_ps(); V];
        for (d, &qd) in q.iter().enumerate() {
            let b = _mm256_set1_ps(qd);
            let keys = &kt[d * lp + j0..d * lp + j0 + 8 * V];
            for (n, a) in acc.iter_mut().enumerate() {
                // SAFETY: `keys` holds 8 · V values.
                let k = unsafe { _mm256_loadu_ps(keys.as_ptr().add(8 * n)) };
                *a = _mm256_fmadd_ps(b, k, *a);
            }
        }
        for (n, a) in acc.iter().enumerate() {
            // SAFETY: vector n is lanes 8·(n % 2).. of block n / 2, inside `out`.
            unsafe { _mm256_storeu_ps(out[n / 2].as_mut_ptr().add(8 * (n % 2)), *a) };
        }
    }

    /// Values `c..c + 64` of the weighted sum (see `super::weighted`). Returns 64.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C, `c + 64 ≤ hd`, and `dst` valid for `hd` writes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn weighted64<T: KvValue>(
        row: &[f32],
        lo: usize,
        hi: usize,
        v: &KvView<T>,
        g: usize,
        hd: usize,
        c: usize,
        dst: *mut f32,
    ) -> usize {
        let mut acc = [_mm256_setzero_ps(); 8];
        for (j, &p) in row.iter().enumerate().take(hi).skip(lo) {
            let b = _mm256_set1_ps(p);
            let x = &v.row(g, j, hd)[c..c + 64];
            for (n, a) in acc.iter_mut().enumerate() {
                // SAFETY: `x` holds 64 values.
                let xv = unsafe { T::load8(x.as_ptr().add(8 * n)) };
                *a = _mm256_fmadd_ps(b, xv, *a);
            }
        }
        let one = _mm256_set1_ps(1.0);
        for (n, a) in acc.iter().enumerate() {
            // SAFETY: c + 8n + 8 ≤ hd, inside the caller's promise.
            unsafe { _mm256_storeu_ps(dst.add(c + 8 * n), _mm256_mul_ps(one, *a)) };
        }
        64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};

    /// candle's path as `decoder::seq_attention` runs it without soft cap and sinks.
    fn candle_path(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, s: &Shape) -> Tensor {
        let (_, _, t, hd) = q.dims4().unwrap();
        let len = k.dim(2).unwrap();
        let n_rep = s.heads / s.kv_heads;
        let q = q.reshape((1, s.kv_heads, n_rep * t, hd)).unwrap();
        let att = (q.matmul(&k.t().unwrap()).unwrap() * s.scale as f64).unwrap();
        let att = match mask {
            Some(m) => {
                let cols = m.dim(1).unwrap();
                let m = m.narrow(1, cols - len, len).unwrap().contiguous().unwrap();
                super::super::ops::add_mask(
                    &att.reshape((1, s.kv_heads, n_rep, t, len)).unwrap(),
                    &m,
                )
                .unwrap()
                .reshape((1, s.kv_heads, n_rep * t, len))
                .unwrap()
            }
            None => att,
        };
        let att = super::super::ops::softmax_last_dim(&att).unwrap();
        let y = att.contiguous().unwrap().matmul(v).unwrap();
        y.reshape((1, s.heads, t, hd))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((1, t, s.heads * hd))
            .unwrap()
    }

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
            })
            .collect()
    }

    /// The plain loops always; the vector kernels where the CPU runs them.
    fn variants() -> Vec<bool> {
        if has_fma() {
            vec![false, true]
        } else {
            eprintln!("not run: the AVX2/FMA attention kernels (this CPU lacks avx2 or fma)");
            vec![false]
        }
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    }

    /// A causal mask of `t` new rows after `past` positions, optionally windowed, with
    /// `extra` leading columns the chunk's cache no longer holds (a windowed cache's view).
    fn mask(t: usize, past: usize, window: Option<usize>, extra: usize) -> Tensor {
        let cols = extra + past + t;
        let mut m = vec![0f32; t * cols];
        for i in 0..t {
            let pos = extra + past + i;
            for j in 0..cols {
                let seen = j <= pos && window.is_none_or(|w| pos - j < w);
                if !seen {
                    m[i * cols + j] = f32::NEG_INFINITY;
                }
            }
        }
        Tensor::from_vec(m, (t, cols), &Device::Cpu).unwrap()
    }

    /// K/V as a cache holds them: a buffer of `cap` positions per head in `dtype`, narrowed to
    /// `len`.
    fn cache_view(
        kv_heads: usize,
        len: usize,
        cap: usize,
        hd: usize,
        seed: u64,
        dtype: DType,
    ) -> Tensor {
        let buf = Tensor::from_vec(
            noise(kv_heads * cap * hd, seed),
            (1, kv_heads, cap, hd),
            &Device::Cpu,
        )
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
        buf.narrow(2, 0, len).unwrap()
    }

    #[test]
    fn prompt_attention_matches_candle_s_path_bit_for_bit() {
        // (heads, kv heads, head dim, chunk rows, past positions, window, spare capacity)
        let cases = [
            (9, 3, 64, 128, 0, None, 128),
            (9, 3, 64, 32, 128, None, 96),
            (4, 4, 64, 7, 40, None, 0),
            (8, 2, 128, 20, 300, None, 12),
            (4, 1, 256, 5, 60, None, 3),
            (6, 2, 80, 64, 100, Some(37), 0),
            (2, 2, 32, 3, 200, Some(16), 5),
            (14, 2, 64, 100, 412, None, 0),
            // Decode steps: one row per sequence, the group's query heads stacked.
            (9, 3, 64, 1, 150, None, 106),
            (8, 2, 128, 1, 400, None, 0),
            (16, 2, 64, 1, 40, Some(32), 3),
        ];
        let mut checked = 0;
        // An f16 cache is read in place; candle's path reads it widened to f32.
        for dtype in [DType::F32, DType::F16] {
            for (n, &(nh, nkv, hd, t, past, window, spare)) in cases.iter().enumerate() {
                let len = past + t;
                let s = Shape {
                    heads: nh,
                    kv_heads: nkv,
                    head_dim: hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                };
                let q =
                    Tensor::from_vec(noise(nh * t * hd, n as u64), (1, nh, t, hd), &Device::Cpu)
                        .unwrap();
                let k = cache_view(nkv, len, len + spare, hd, 100 + n as u64, dtype);
                let v = cache_view(nkv, len, len + spare, hd, 200 + n as u64, dtype);
                let (k32, v32) = (
                    k.to_dtype(DType::F32).unwrap(),
                    v.to_dtype(DType::F32).unwrap(),
                );
                for fma in variants() {
                    for extra in [0, 9] {
                        let m = mask(t, past, window, extra);
                        let ours = attend_with(fma, &q, &k, &v, Some(&m), &s)
                            .expect("these shapes take the own path")
                            .unwrap();
                        let theirs = candle_path(&q, &k32, &v32, Some(&m), &s);
                        assert_eq!(ours.dims(), theirs.dims());
                        let at = format!("{dtype:?} case {n}, extra columns {extra}, fma {fma}");
                        assert!(bits(&ours) == bits(&theirs), "{at}");
                        checked += 1;
                    }
                    let ours = attend_with(fma, &q, &k, &v, None, &s).unwrap().unwrap();
                    let theirs = candle_path(&q, &k32, &v32, None, &s);
                    let at = format!("{dtype:?} case {n}, no mask, fma {fma}");
                    assert!(bits(&ours) == bits(&theirs), "{at}");
                }
            }
        }
        assert_eq!(checked, 2 * 2 * cases.len() * variants().len());
    }

    /// Past one gemm depth block the chain runs on: candle's path to float rounding, f32 and
    /// f16 caches, with and without a window.
    #[test]
    fn prompt_chunks_past_512_positions_match_candle_s_path_to_rounding() {
        let cases = [
            (9, 3, 64, 128, 900, None),
            (8, 2, 128, 64, 1000, Some(700)),
            (4, 4, 64, 3, 600, None),
        ];
        for dtype in [DType::F32, DType::F16] {
            for (n, &(nh, nkv, hd, t, past, window)) in cases.iter().enumerate() {
                let len = past + t;
                let s = Shape {
                    heads: nh,
                    kv_heads: nkv,
                    head_dim: hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                };
                let q =
                    Tensor::from_vec(noise(nh * t * hd, n as u64), (1, nh, t, hd), &Device::Cpu)
                        .unwrap();
                let k = cache_view(nkv, len, len + 5, hd, 100 + n as u64, dtype);
                let v = cache_view(nkv, len, len + 5, hd, 200 + n as u64, dtype);
                let (k32, v32) = (
                    k.to_dtype(DType::F32).unwrap(),
                    v.to_dtype(DType::F32).unwrap(),
                );
                let m = mask(t, past, window, 0);
                for fma in variants() {
                    let ours = attend_with(fma, &q, &k, &v, Some(&m), &s)
                        .expect("a chunk past 512 positions takes the own path")
                        .unwrap();
                    let theirs = candle_path(&q, &k32, &v32, Some(&m), &s);
                    let (a, b): (Vec<f32>, Vec<f32>) = (
                        ours.flatten_all().unwrap().to_vec1().unwrap(),
                        theirs.flatten_all().unwrap().to_vec1().unwrap(),
                    );
                    assert_eq!(a.len(), b.len());
                    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                        assert!(
                            (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                            "{dtype:?} case {n}, fma {fma}: [{i}] {x} vs {y}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn shapes_outside_one_gemm_chain_keep_candle_s_path() {
        let s = Shape {
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            scale: 0.125,
        };
        let q = |t: usize| Tensor::zeros((1, 4, t, 64), DType::F32, &Device::Cpu).unwrap();
        let kv = |len: usize| Tensor::zeros((1, 2, len, 64), DType::F32, &Device::Cpu).unwrap();
        // One decoded row; 256 scores or fewer; a decoded row past one depth block (that is
        // `decode_attn`'s); a chunk past it stays here.
        assert!(attend(&q(1), &kv(100), &kv(100), None, &s).is_none());
        assert!(attend(&q(2), &kv(60), &kv(60), None, &s).is_none());
        let s1 = Shape { heads: 4, ..s };
        let q1 = Tensor::zeros((1, 4, 1, 64), DType::F32, &Device::Cpu).unwrap();
        assert!(attend(&q1, &kv(600), &kv(600), None, &s1).is_none());
        assert!(attend(&q(4), &kv(600), &kv(600), None, &s).is_some());
        assert!(attend(&q(4), &kv(100), &kv(100), None, &s).is_some());
        // A row that sees nothing stays on candle's path (NaN there).
        let mut m = vec![0f32; 4 * 100];
        m[..100].fill(f32::NEG_INFINITY);
        let m = Tensor::from_vec(m, (4, 100), &Device::Cpu).unwrap();
        assert!(attend(&q(4), &kv(100), &kv(100), Some(&m), &s).is_none());
        let _ = D::Minus1;
    }
}
