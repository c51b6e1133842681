//! Q8_0 matrix multiplication with AVX-512 VNNI, and an AVX2 variant.
//!
//! candle 0.11 multiplies Q8_0 weights one 32-value block at a time per row (AVX2), and its
//! repacked VNNI kernel only takes matrices whose inner size is a multiple of 256 — which rules
//! out SmolLM2's 576-wide projections. This kernel handles any multiple of 32 and:
//! - stores weights offset by +128 as unsigned bytes, so `vpdpbusd` multiplies them directly
//!   with the signed activation bytes; the offset's contribution (`128 · Σa` per 4-byte lane)
//!   is computed once per activation row and is the accumulator `vpdpbusd` starts from, so
//!   every block's dot product is exact in integers, as in ggml and candle;
//! - multiplies tiles of 4 weight rows × up to 4 activation rows, so prompt processing reads
//!   each weight row once per 4 prompt rows instead of once per row;
//! - runs several matrices that share an input (q/k/v, gate/up) in one parallel region on the
//!   own kernels' pool (`pool.rs`: spin briefly, then park).
//!
//! [`kernel`] picks the variant the CPU runs (`simd.rs`): AVX-512 F/BW/VL + VNNI, else AVX-VNNI
//! (one 32-byte block at a time with the 256-bit `vpdpbusd`), else AVX2, FMA and F16C (same
//! layout and blocks with `vpmaddubsw`), else none and the engine keeps candle's kernels. Results match candle's Q8_0×Q8_0 products up to float summation order.

use half::f16;

use super::simd::Kernel;

/// Values per Q8_0 block.
pub const BLOCK: usize = 32;
/// Bytes per GGUF Q8_0 block: f16 scale + 32 signed bytes.
const GGUF_BLOCK_BYTES: usize = 34;
/// Weight rows per tile (the kernel is written for 4).
const ROWS: usize = 4;
/// Activation rows per tile.
const ACTS: usize = 4;

/// The kernel variant this CPU runs (`simd::kernel`), if any.
pub fn kernel() -> Option<Kernel> {
    super::simd::kernel()
}

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    kernel().is_some()
}

/// An `n × k` Q8_0 weight matrix (rows are output features), repacked for the kernel.
///
/// Rows are grouped in tiles of [`ROWS`]; within a tile the 64-byte pairs of blocks of its rows
/// are interleaved (pair 0 of rows 0..4, then pair 1 …) and so are the scales (per group of
/// 16 blocks, the 4 rows' scales one after the other), so the kernel reads the matrix as one
/// sequential stream the hardware prefetcher can follow. Rows are padded to a multiple of 64
/// values (one zero block for an odd block count) and the row count to a multiple of [`ROWS`],
/// with zeros. Scales are not padded: a row's last, partial group holds only its blocks' scales
/// (SmolLM2's 576-wide rows: 16 + 2, not 32), and the kernels read it with a masked load or
/// one scale at a time, so the matrix is the GGUF data's size plus that padding.
pub struct Q8Matrix {
    n: usize,
    k: usize,
    /// Weights as `w + 128`, tile-interleaved.
    qs: Vec<u8>,
    /// Block scales (f16 bits), tile-interleaved.
    d: Vec<u16>,
}

/// Pairs of blocks per padded row.
fn pairs(k: usize) -> usize {
    k.div_ceil(2 * BLOCK)
}

/// Groups of 16 block scales per row (the last may be partial).
fn groups(k: usize) -> usize {
    (k / BLOCK).div_ceil(GROUP)
}

/// Scales in group `g` of a row of `kb` blocks: [`GROUP`], or fewer in the last group.
fn width(kb: usize, g: usize) -> usize {
    (kb - g * GROUP).min(GROUP)
}

/// Offset of the scale of block `b` of tile row `rr` from the start of its tile's scales, for
/// rows of `kb` blocks: whole groups before it, then the group's earlier rows.
#[inline(always)]
fn scale_in_tile(kb: usize, rr: usize, b: usize) -> usize {
    let g = b / GROUP;
    g * ROWS * GROUP + rr * width(kb, g) + b % GROUP
}

/// Block scales per group (one zmm of f32).
const GROUP: usize = 16;

impl Q8Matrix {
    /// Repacks raw GGUF Q8_0 data of an `n × k` matrix.
    pub fn from_gguf_bytes(data: &[u8], n: usize, k: usize) -> Result<Self, String> {
        if !k.is_multiple_of(BLOCK) {
            return Err(format!("row length {k} is not a multiple of {BLOCK}"));
        }
        let kb = k / BLOCK;
        if data.len() != n * kb * GGUF_BLOCK_BYTES {
            return Err(format!(
                "{} bytes of Q8_0 data for a {n}×{k} matrix (expected {})",
                data.len(),
                n * kb * GGUF_BLOCK_BYTES
            ));
        }
        let tiles = n.div_ceil(ROWS);
        let np = pairs(k);
        // Padding weights stay 0 (not 128): they meet zero activations either way.
        let mut qs = vec![0u8; tiles * np * ROWS * 2 * BLOCK];
        let mut d = vec![0u16; tiles * ROWS * kb];
        for (r, row) in data.chunks_exact(kb * GGUF_BLOCK_BYTES).enumerate() {
            let (t, rr) = (r / ROWS, r % ROWS);
            for (b, blk) in row.chunks_exact(GGUF_BLOCK_BYTES).enumerate() {
                d[Self::scale_at(t, kb, rr, b)] = u16::from_le_bytes([blk[0], blk[1]]);
                let at = Self::block_at(t, np, rr, b);
                for (dst, &q) in qs[at..at + BLOCK].iter_mut().zip(&blk[2..]) {
                    *dst = q ^ 0x80;
                }
            }
        }
        Ok(Self { n, k, qs, d })
    }

    /// Offset of block `b` of row `rr` of tile `t` in `qs`.
    fn block_at(t: usize, np: usize, rr: usize, b: usize) -> usize {
        ((t * np + b / 2) * ROWS + rr) * 2 * BLOCK + (b % 2) * BLOCK
    }

    /// Offset of the scale of block `b` of row `rr` of tile `t` in `d` (rows of `kb` blocks).
    fn scale_at(t: usize, kb: usize, rr: usize, b: usize) -> usize {
        t * ROWS * kb + scale_in_tile(kb, rr, b)
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// Dequantized row `r` (token-embedding lookups).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let (t, rr) = (r / ROWS, r % ROWS);
        let (np, kb) = (pairs(self.k), self.k / BLOCK);
        (0..kb)
            .flat_map(|b| {
                let s = f16::from_bits(self.d[Self::scale_at(t, kb, rr, b)]).to_f32();
                let at = Self::block_at(t, np, rr, b);
                self.qs[at..at + BLOCK]
                    .iter()
                    .map(move |&v| (v as i32 - 128) as f32 * s)
            })
            .collect()
    }
}

/// Activation rows quantized to Q8_0 blocks, with the offset corrections, padded like the
/// weights.
pub struct QuantRows {
    m: usize,
    /// Padded row length in values.
    kp: usize,
    /// Padded scales per row.
    sp: usize,
    qs: Vec<i8>,
    /// Block scales.
    d: Vec<f32>,
    /// `-128 ·` the sum of each 4 consecutive values: what the weights' +128 offset adds to
    /// each `vpdpbusd` lane, taken away in advance.
    off: Vec<i32>,
}

impl QuantRows {
    /// One row: Q8_0 blocks into `qs` (padded), their scales into `d`, and the offset
    /// corrections of every 4 values into `off`.
    fn quantize_row(src: &[f32], qs: &mut [i8], d: &mut [f32], off: &mut [i32]) {
        // Fixed-size blocks keep the compiler's vectors inside a block: over slices it
        // vectorized across blocks with gathers, at several times the cost.
        let (src, _) = src.as_chunks::<BLOCK>();
        let (dst, _) = qs.as_chunks_mut::<BLOCK>();
        for (b, (src, dst)) in src.iter().zip(dst).enumerate() {
            let amax = super::simd::abs_max(src);
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            d[b] = scale;
            let (offs, _) = off[b * BLOCK / 4..(b + 1) * BLOCK / 4].as_chunks_mut::<8>();
            super::simd::quantize_block(src, inv, dst, &mut offs[0]);
        }
    }

    /// Quantizes `m` rows of `k` values (row-major `x`), as ggml's `quantize_row_q8_0` does, on
    /// every thread for prompts (one thread took ~6 % of a 2-thread prompt, serially).
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        debug_assert_eq!(x.len(), m * k);
        debug_assert_eq!(k % BLOCK, 0);
        let kp = pairs(k) * 2 * BLOCK;
        let sp = groups(k) * GROUP;
        let mut qs = vec![0i8; m * kp];
        let mut d = vec![0f32; m * sp];
        let mut off = vec![0i32; m * kp / 4];
        type Row<'a> = (&'a mut [i8], &'a mut [f32], &'a mut [i32]);
        let rows: Vec<std::sync::Mutex<Row>> = qs
            .chunks_mut(kp)
            .zip(d.chunks_mut(sp))
            .zip(off.chunks_mut(kp / 4))
            .map(|((q, d), o)| std::sync::Mutex::new((q, d, o)))
            .collect();
        let run = |range: std::ops::Range<usize>| {
            for i in range {
                // Each row is handed out once: the lock is never contended.
                let mut row = rows[i].lock().unwrap_or_else(|e| e.into_inner());
                let (q, d, o) = &mut *row;
                Self::quantize_row(&x[i * k..(i + 1) * k], q, d, o);
            }
        };
        if m >= 4 {
            super::pool::run_chunked(m, run);
        } else {
            run(0..m);
        }
        drop(rows);
        Self {
            m,
            kp,
            sp,
            qs,
            d,
            off,
        }
    }
}

/// `x @ wᵀ` for every matrix in `ws` (all with `k` columns): one row-major `m × n` output per
/// matrix. `x` is `m` rows of `k` values.
pub fn matmul(ws: &[&Q8Matrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    matmul_with(kernel(), ws, x, m)
}

/// [`matmul`] on a chosen kernel (`None`: the scalar reference). The caller guarantees the CPU
/// runs it, as [`kernel`] does.
fn matmul_with(kern: Option<Kernel>, ws: &[&Q8Matrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let Some(first) = ws.first() else {
        return Vec::new();
    };
    let k = first.k;
    assert!(
        ws.iter().all(|w| w.k == k) && x.len() == m * k,
        "q8 matmul: shape mismatch"
    );
    let a = QuantRows::new(x, m, k);
    let ns: Vec<usize> = ws.iter().map(|w| w.n).collect();
    let tile = |j: usize, t: usize, out: *mut f32| {
        // SAFETY: `tiled` hands each tile of each matrix to one call with that matrix's
        // `m × n` output, which outlives the parallel region; the CPU runs `kern`.
        unsafe { tile_all_acts(kern, ws[j], t, &a, out) }
    };
    // SAFETY: `tile_all_acts` writes every value of its tile, for every activation row.
    unsafe { super::pool::tiled(&ns, m, k, ROWS, tile) }
}

/// Computes the output columns of weight tile `t` for every activation row.
///
/// # Safety
/// `out` must point to an `a.m × w.n` buffer, no other thread may write those columns, and the
/// CPU must run `kern`.
unsafe fn tile_all_acts(
    kern: Option<Kernel>,
    w: &Q8Matrix,
    t: usize,
    a: &QuantRows,
    out: *mut f32,
) {
    let mut i0 = 0;
    while i0 < a.m {
        let acts = (a.m - i0).min(ACTS);
        let mut res = [[0f32; ACTS]; ROWS];
        // SAFETY: the caller checked the CPU features of `kern`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match (kern, acts) {
                (Some(Kernel::Avx512), 4) => avx512::tile::<4>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx512), 3) => avx512::tile::<3>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx512), 2) => avx512::tile::<2>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx512), _) => avx512::tile::<1>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx2), 4) => avx2::tile::<4>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx2), 3) => avx2::tile::<3>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx2), 2) => avx2::tile::<2>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx2), _) => avx2::tile::<1>(w, t, a, i0, &mut res),
                // One row (decode) streams the weights from memory, where the VNNI tile read
                // them slower than the AVX2 one (SmolLM2's 49152 × 576 output matrix: 0.92×,
                // decode 0.89-0.93×, docs/PERFORMANCE.md); it pays from two rows on.
                (Some(Kernel::AvxVnni | Kernel::Vnni256), 1) => {
                    avx2::tile::<1>(w, t, a, i0, &mut res)
                }
                (Some(Kernel::AvxVnni), _) => vnni256::tile_avxvnni(w, t, a, i0, acts, &mut res),
                (Some(Kernel::Vnni256), _) => vnni256::tile_evex(w, t, a, i0, acts, &mut res),
                (None, _) => tile_scalar(w, t, a, i0, acts, &mut res),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = kern;
            tile_scalar(w, t, a, i0, acts, &mut res);
        }
        for (rr, row) in res.iter().enumerate() {
            let r = t * ROWS + rr;
            if r >= w.n {
                break;
            }
            for (i, v) in row[..acts].iter().enumerate() {
                // SAFETY: r < n and i0 + i < m, inside the caller's buffer.
                unsafe { *out.add((i0 + i) * w.n + r) = *v };
            }
        }
        i0 += acts;
    }
}

/// Reference kernel: the same arithmetic, one value at a time.
fn tile_scalar(
    w: &Q8Matrix,
    t: usize,
    a: &QuantRows,
    i0: usize,
    acts: usize,
    res: &mut [[f32; ACTS]; ROWS],
) {
    let (np, kb) = (pairs(w.k), w.k / BLOCK);
    for (rr, row) in res.iter_mut().enumerate() {
        for (i, v) in row[..acts].iter_mut().enumerate() {
            let ai = i0 + i;
            let mut sum = 0f32;
            for b in 0..kb {
                let at = Q8Matrix::block_at(t, np, rr, b);
                let wq = &w.qs[at..at + BLOCK];
                let aq = &a.qs[ai * a.kp + b * BLOCK..][..BLOCK];
                let dot: i32 = wq
                    .iter()
                    .zip(aq)
                    .map(|(&x, &y)| (x as i32 - 128) * y as i32)
                    .sum();
                let sw = f16::from_bits(w.d[Q8Matrix::scale_at(t, kb, rr, b)]).to_f32();
                sum += sw * a.d[ai * a.sp + b] * dot as f32;
            }
            *v = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{groups, pairs, width, Q8Matrix, QuantRows, ACTS, BLOCK, GROUP, ROWS};
    use std::arch::x86_64::*;

    /// Weight tile `t` (4 rows) times `M` activation rows from `i0`.
    ///
    /// Per pair of blocks (64 bytes) and (row, act) pair: one `vpdpbusd`, a convert, a scale
    /// permute and an FMA. Lanes 0–7 of a pair's product belong to its first block and 8–15 to
    /// the second, so the scale vector is permuted to match; lanes are summed once at the end.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn tile<const M: usize>(
        w: &Q8Matrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        let (np, ng, kb) = (pairs(w.k), groups(w.k), w.k / BLOCK);
        let mut wq = w.qs.as_ptr().add(t * np * ROWS * 2 * BLOCK);
        let mut ws = w.d.as_ptr().add(t * ROWS * kb);
        let mut acc = [[_mm512_setzero_ps(); M]; ROWS];
        for g in 0..ng {
            let first = g * GROUP / 2;
            let last = ((g + 1) * GROUP / 2).min(np);
            // A partial group's scales are stored unpadded: the lanes past them load as zeros,
            // as the padding did, and memory past them is not touched.
            let gw = width(kb, g);
            let lanes: __mmask16 = if gw == GROUP { 0xFFFF } else { (1 << gw) - 1 };
            // Combined scales of this group for every (row, act) pair.
            let mut sc = [[_mm512_setzero_ps(); M]; ROWS];
            for (rr, row) in sc.iter_mut().enumerate() {
                let sw =
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes, ws.add(rr * gw) as *const _));
                for (i, v) in row.iter_mut().enumerate() {
                    let da = _mm512_loadu_ps(a.d.as_ptr().add((i0 + i) * a.sp + g * GROUP));
                    *v = _mm512_mul_ps(sw, da);
                }
            }
            ws = ws.add(ROWS * gw);
            for p in first..last {
                let j = (2 * (p - first)) as i32;
                let idx = _mm512_set_epi32(
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j,
                    j,
                    j,
                    j,
                    j,
                    j,
                    j,
                    j,
                );
                let mut av = [_mm512_setzero_si512(); M];
                let mut ov = [_mm512_setzero_si512(); M];
                for i in 0..M {
                    let at = (i0 + i) * a.kp + p * 2 * BLOCK;
                    av[i] = _mm512_loadu_si512(a.qs.as_ptr().add(at) as *const __m512i);
                    ov[i] = _mm512_loadu_si512(a.off.as_ptr().add(at / 4) as *const __m512i);
                }
                for (rr, row) in acc.iter_mut().enumerate() {
                    let wv = _mm512_loadu_si512(wq.add(rr * 2 * BLOCK) as *const __m512i);
                    for (i, v) in row.iter_mut().enumerate() {
                        // Starting from the offset correction leaves the exact Σ w·a per lane.
                        let dp = _mm512_dpbusd_epi32(ov[i], wv, av[i]);
                        let s = _mm512_permutexvar_ps(idx, sc[rr][i]);
                        *v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), s, *v);
                    }
                }
                wq = wq.add(ROWS * 2 * BLOCK);
            }
        }
        for (dst, row) in res.iter_mut().zip(&acc) {
            for (d, v) in dst.iter_mut().zip(row) {
                // Even blocks' lanes plus odd blocks' lanes, then the AVX2 variant's horizontal
                // sum: both variants give the same bits.
                let lo = _mm512_castps512_ps256(*v);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*v)));
                *d = super::hsum8(_mm256_add_ps(lo, hi));
            }
        }
    }
}

/// The sum of 8 lanes in one fixed order, shared by both SIMD variants.
///
/// # Safety
/// The CPU must have AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn hsum8(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    _mm_cvtss_f32(h)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{pairs, scale_in_tile, Q8Matrix, QuantRows, ACTS, BLOCK, ROWS};
    use std::arch::x86_64::*;

    /// Weight tile `t` (4 rows) times `M` activation rows from `i0`, 32 bytes (one block) at a
    /// time. `vpmaddubsw` multiplies unsigned by signed bytes and saturates at 16 bits, so the
    /// +128 offset cannot stay in (255 · 127 · 2 overflows): the weights get their sign back
    /// and go in as |w| against a · sign(w), at most 127 · 127 · 2 per pair, as in ggml.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile<const M: usize>(
        w: &Q8Matrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        let (np, kb) = (pairs(w.k), w.k / BLOCK);
        let wq = w.qs.as_ptr().add(t * np * ROWS * 2 * BLOCK);
        let ws = w.d.as_ptr().add(t * ROWS * kb);
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        // Even and odd blocks accumulate apart, as in the AVX-512 variant's two 8-lane halves.
        let mut acc = [[[_mm256_setzero_ps(); 2]; M]; ROWS];
        for b in 0..kb {
            let (p, half) = (b / 2, b % 2);
            let mut av = [_mm256_setzero_si256(); M];
            let mut da = [0f32; M];
            for i in 0..M {
                av[i] = _mm256_loadu_si256(
                    a.qs.as_ptr().add((i0 + i) * a.kp + b * BLOCK) as *const __m256i
                );
                da[i] = *a.d.get_unchecked((i0 + i) * a.sp + b);
            }
            for (rr, row) in acc.iter_mut().enumerate() {
                let at = (p * ROWS + rr) * 2 * BLOCK + half * BLOCK;
                let wu = _mm256_loadu_si256(wq.add(at) as *const __m256i);
                let ws8 = _mm256_xor_si256(wu, flip);
                let wabs = _mm256_sign_epi8(ws8, ws8);
                let bits = *ws.add(scale_in_tile(kb, rr, b));
                let sw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
                for (i, v) in row.iter_mut().enumerate() {
                    let signed = _mm256_sign_epi8(av[i], ws8);
                    let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, signed), ones);
                    let s = _mm256_set1_ps(sw * da[i]);
                    v[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, v[half]);
                }
            }
        }
        for (dst, row) in res.iter_mut().zip(&acc) {
            for (d, v) in dst.iter_mut().zip(row) {
                *d = super::hsum8(_mm256_add_ps(v[0], v[1]));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni256 {
    use super::{pairs, scale_in_tile, Q8Matrix, QuantRows, ACTS, BLOCK, ROWS};
    use crate::engine::simd::dot256::{AvxVnni, Evex, Vnni256};
    use std::arch::x86_64::*;

    /// Weight tile `t` times `acts` activation rows from `i0`, with AVX-VNNI's `vpdpbusd`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C and AVX-VNNI; `t` must be a tile of `w` and
    /// `i0 + acts` rows of `a` must exist.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub(super) unsafe fn tile_avxvnni(
        w: &Q8Matrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        acts: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        by_acts::<AvxVnni>(w, t, a, i0, acts, res)
    }

    /// [`tile_avxvnni`] with the EVEX `vpdpbusd` on ymm registers (`simd::Kernel::Vnni256`).
    ///
    /// # Safety
    /// As [`tile_avxvnni`], with AVX-512 VNNI and VL instead of AVX-VNNI.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_evex(
        w: &Q8Matrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        acts: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        by_acts::<Evex>(w, t, a, i0, acts, res)
    }

    /// The tile for 2 to 4 activation rows (one runs on the AVX2 variant).
    #[inline(always)]
    unsafe fn by_acts<D: Vnni256>(
        w: &Q8Matrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        acts: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        match acts {
            4 => tile::<D, 4>(w, t, a, i0, res),
            3 => tile::<D, 3>(w, t, a, i0, res),
            _ => tile::<D, 2>(w, t, a, i0, res),
        }
    }

    /// The AVX2 variant's tile, one 32-byte block at a time, with its float steps in the same
    /// order (so the same bits), but the integer dot product is the AVX-512 variant's: one
    /// `vpdpbusd` of the +128 weights against the signed activations, started from the offset
    /// correction, where AVX2 needs two sign flips, `vpmaddubsw` and `vpmaddwd`.
    #[inline(always)]
    unsafe fn tile<D: Vnni256, const M: usize>(
        w: &Q8Matrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        let (np, kb) = (pairs(w.k), w.k / BLOCK);
        let wq = w.qs.as_ptr().add(t * np * ROWS * 2 * BLOCK);
        let ws = w.d.as_ptr().add(t * ROWS * kb);
        let mut acc = [[[_mm256_setzero_ps(); 2]; M]; ROWS];
        for b in 0..kb {
            let (p, half) = (b / 2, b % 2);
            let mut av = [_mm256_setzero_si256(); M];
            let mut ov = [_mm256_setzero_si256(); M];
            let mut da = [0f32; M];
            for i in 0..M {
                let at = (i0 + i) * a.kp + b * BLOCK;
                av[i] = _mm256_loadu_si256(a.qs.as_ptr().add(at) as *const __m256i);
                ov[i] = _mm256_loadu_si256(a.off.as_ptr().add(at / 4) as *const __m256i);
                da[i] = *a.d.get_unchecked((i0 + i) * a.sp + b);
            }
            for (rr, row) in acc.iter_mut().enumerate() {
                let at = (p * ROWS + rr) * 2 * BLOCK + half * BLOCK;
                let wu = _mm256_loadu_si256(wq.add(at) as *const __m256i);
                let bits = *ws.add(scale_in_tile(kb, rr, b));
                let sw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
                for (i, v) in row.iter_mut().enumerate() {
                    let dot = D::dpbusd(ov[i], wu, av[i]);
                    let s = _mm256_set1_ps(sw * da[i]);
                    v[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, v[half]);
                }
            }
        }
        for (dst, row) in res.iter_mut().zip(&acc) {
            for (d, v) in dst.iter_mut().zip(row) {
                *d = super::hsum8(_mm256_add_ps(v[0], v[1]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant this CPU runs, and the scalar reference.
    fn kernels() -> Vec<Option<Kernel>> {
        let mut v = vec![None];
        v.extend(
            super::super::simd::variants_for_tests()
                .into_iter()
                .map(Some),
        );
        v
    }

    /// A random `n × k` matrix as GGUF Q8_0 bytes and its dequantized values.
    fn random_matrix(n: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u32
        };
        let mut bytes = Vec::new();
        let mut vals = Vec::new();
        for _ in 0..n * k / BLOCK {
            let d = f16::from_f32(0.001 + (next() % 1000) as f32 * 1e-5);
            bytes.extend(d.to_bits().to_le_bytes());
            for _ in 0..BLOCK {
                let q = (next() % 255) as i32 - 127;
                bytes.push(q as i8 as u8);
                vals.push(q as f32 * d.to_f32());
            }
        }
        (bytes, vals)
    }

    fn random_acts(m: usize, k: usize) -> Vec<f32> {
        (0..m * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i % 5) as f32))
            .collect()
    }

    /// The exact product of the dequantized weights with the quantized activations.
    fn reference(w: &[f32], a: &QuantRows, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; a.m * n];
        for i in 0..a.m {
            for r in 0..n {
                let mut s = 0f64;
                for c in 0..k {
                    let av = a.qs[i * a.kp + c] as f64 * a.d[i * a.sp + c / BLOCK] as f64;
                    s += w[r * k + c] as f64 * av;
                }
                out[i * n + r] = s as f32;
            }
        }
        out
    }

    fn check(n: usize, k: usize, m: usize) {
        let (bytes, vals) = random_matrix(n, k, (n * 31 + k * 7 + m) as u64);
        let w = Q8Matrix::from_gguf_bytes(&bytes, n, k).unwrap();
        let x = random_acts(m, k);
        let want = reference(&vals, &QuantRows::new(&x, m, k), n, k);
        for kern in kernels() {
            let got = &matmul_with(kern, &[&w], &x, m)[0];
            for (idx, (g, e)) in got.iter().zip(&want).enumerate() {
                let tol = 2e-5 * (1.0 + e.abs());
                assert!(
                    (g - e).abs() <= tol,
                    "{kern:?} n={n} k={k} m={m}: element {idx} is {g}, expected {e}"
                );
            }
        }
    }

    #[test]
    fn matches_reference_for_odd_shapes() {
        // k = 576 leaves a 2-block tail after one 16-block group; 96 an odd block count;
        // n and m not multiples of the tile sizes exercise the edge tiles.
        for &(n, k, m) in &[
            (16, 576, 1),
            (7, 576, 5),
            (9, 96, 3),
            (64, 1536, 8),
            (5, 32, 2),
        ] {
            check(n, k, m);
        }
    }

    /// Every SIMD variant this CPU runs gives the same bits, so a model's output does not
    /// depend on whether the machine has AVX-512.
    #[test]
    fn simd_variants_agree_bit_for_bit() {
        let simd: Vec<Kernel> = kernels().into_iter().flatten().collect();
        for &(n, k, m) in &[
            (16, 576, 1),
            (7, 576, 5),
            (9, 96, 3),
            (64, 1536, 8),
            (5, 32, 4),
        ] {
            let (bytes, _) = random_matrix(n, k, (n * 13 + k + m) as u64);
            let w = Q8Matrix::from_gguf_bytes(&bytes, n, k).unwrap();
            let x = random_acts(m, k);
            let outs: Vec<Vec<f32>> = simd
                .iter()
                .map(|&kern| matmul_with(Some(kern), &[&w], &x, m).remove(0))
                .collect();
            for (kern, out) in simd.iter().zip(&outs).skip(1) {
                let same = out
                    .iter()
                    .zip(&outs[0])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{kern:?} differs from {:?} at n={n} k={k} m={m}",
                    simd[0]
                );
            }
        }
    }

    #[test]
    fn large_products_run_in_parallel_and_agree() {
        check(512, 576, 17);
    }

    #[test]
    fn fused_matrices_match_separate_calls() {
        let (b1, _) = random_matrix(40, 64, 1);
        let (b2, _) = random_matrix(24, 64, 2);
        let w1 = Q8Matrix::from_gguf_bytes(&b1, 40, 64).unwrap();
        let w2 = Q8Matrix::from_gguf_bytes(&b2, 24, 64).unwrap();
        let x = random_acts(3, 64);
        for kern in kernels() {
            let both = matmul_with(kern, &[&w1, &w2], &x, 3);
            assert_eq!(both[0], matmul_with(kern, &[&w1], &x, 3)[0], "{kern:?}");
            assert_eq!(both[1], matmul_with(kern, &[&w2], &x, 3)[0], "{kern:?}");
        }
    }

    /// The largest weights of either sign (−128 included, which GGUF's bytes allow) against
    /// the largest activations of either sign: AVX2's 16-bit pairs and the offset start of the
    /// VNNI variants must both stay exact, so every SIMD variant gives the same bits, within
    /// rounding of the exact product.
    #[test]
    fn extreme_values_give_exact_sums() {
        let (n, k, m) = (8, 576, 3);
        let mut bytes = Vec::new();
        let mut vals = Vec::new();
        for r in 0..n {
            for b in 0..k / BLOCK {
                bytes.extend(f16::ONE.to_bits().to_le_bytes());
                for v in 0..BLOCK {
                    let q: i8 = match (r + b + v) % 3 {
                        0 => -128,
                        1 => 127,
                        _ => {
                            if r % 2 == 0 {
                                -128
                            } else {
                                127
                            }
                        }
                    };
                    bytes.push(q as u8);
                    vals.push(q as f32);
                }
            }
        }
        let w = Q8Matrix::from_gguf_bytes(&bytes, n, k).unwrap();
        // All ones and all minus ones quantize to 127 and −127; the mixed row to both.
        let mut x = vec![1.0f32; k];
        x.extend(vec![-1.0f32; k]);
        x.extend((0..k).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }));
        let want = reference(&vals, &QuantRows::new(&x, m, k), n, k);
        let outs: Vec<(Kernel, Vec<f32>)> = kernels()
            .into_iter()
            .flatten()
            .map(|kern| (kern, matmul_with(Some(kern), &[&w], &x, m).remove(0)))
            .collect();
        for (kern, got) in &outs {
            for (idx, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-6 * e.abs().max(1.0),
                    "{kern:?}: element {idx} is {g}, expected {e}"
                );
            }
            assert_eq!(got, &outs[0].1, "{kern:?} differs from {:?}", outs[0].0);
        }
    }

    /// Row `i` of a call with `m` rows is bit-identical to a call with row `i` alone, on every
    /// variant: a sequence's tokens cannot depend on what it is batched with.
    #[test]
    fn rows_do_not_depend_on_the_other_rows() {
        let (n, k) = (37, 576);
        let (bytes, _) = random_matrix(n, k, 20);
        let w = Q8Matrix::from_gguf_bytes(&bytes, n, k).unwrap();
        let x: Vec<f32> = random_acts(9, k).iter().map(|v| v * 1.37 - 0.1).collect();
        for kern in kernels() {
            let alone: Vec<Vec<f32>> = (0..9)
                .map(|i| matmul_with(kern, &[&w], &x[i * k..(i + 1) * k], 1).remove(0))
                .collect();
            for m in 1..=9 {
                let all = matmul_with(kern, &[&w], &x[..m * k], m).remove(0);
                for (i, want) in alone.iter().enumerate().take(m) {
                    let got = &all[i * n..(i + 1) * n];
                    assert!(
                        got.iter()
                            .zip(want)
                            .all(|(g, e)| g.to_bits() == e.to_bits()),
                        "{kern:?}: row {i} of {m} differs from the row alone"
                    );
                }
            }
        }
    }

    /// Not a test: time per call and multiply-adds per second of SmolLM2's shapes (FFN and the
    /// tied output matrix) for 1 to 64 rows, each SIMD variant. Run with
    /// `CANDLE_NUM_THREADS=1 cargo test --release --lib engine::q8::tests::bench_rows --
    /// --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement that prints timings and asserts nothing; run it by hand"]
    fn bench_rows() {
        use std::time::Instant;
        let time = |f: &mut dyn FnMut()| {
            f();
            let (mut best, reps) = (f64::MAX, 10);
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..reps {
                    f();
                }
                best = best.min(t.elapsed().as_secs_f64() * 1e6 / reps as f64);
            }
            best
        };
        for &(n, k) in &[(1536, 576), (576, 1536), (49152, 576)] {
            let (bytes, _) = random_matrix(n, k, 1);
            let w = Q8Matrix::from_gguf_bytes(&bytes, n, k).unwrap();
            for m in [1usize, 4, 16, 64] {
                let x = random_acts(m, k);
                let mut line = format!("Q8_0 {n}x{k} m={m:2}:");
                for kern in kernels().into_iter().skip(1) {
                    let us = time(&mut || {
                        std::hint::black_box(matmul_with(kern, &[&w], &x, m));
                    });
                    let gmac = (n * k * m) as f64 / us / 1e3;
                    line += &format!(" {kern:?} {us:8.1} µs {gmac:5.1} GMAC/s");
                }
                println!("{line}");
            }
        }
    }

    /// No growth beyond the documented padding: the repacked matrix is the GGUF data's size
    /// plus zero rows up to a multiple of 4 and one zero block per row for an odd block count
    /// (the scales of a partial group are not padded).
    #[test]
    fn repacked_size_is_the_gguf_size_plus_row_padding() {
        for &(n, k) in &[(8, 576), (7, 576), (12, 96), (4, 1536), (5, 32)] {
            let (bytes, vals) = random_matrix(n, k, (n + k) as u64);
            let w = Q8Matrix::from_gguf_bytes(&bytes, n, k).unwrap();
            let kb = k / BLOCK;
            let padded_rows = n.next_multiple_of(ROWS);
            let pad = (padded_rows - n) * kb * GGUF_BLOCK_BYTES + padded_rows * (kb % 2) * BLOCK;
            let repacked = w.qs.len() + std::mem::size_of_val(w.d.as_slice());
            assert_eq!(repacked, bytes.len() + pad, "n={n} k={k}");
            // The unpadded scales still give every row back.
            for r in 0..n {
                assert_eq!(w.row(r), vals[r * k..(r + 1) * k], "n={n} k={k} row {r}");
            }
        }
    }

    #[test]
    fn rows_dequantize() {
        let (bytes, vals) = random_matrix(3, 64, 9);
        let w = Q8Matrix::from_gguf_bytes(&bytes, 3, 64).unwrap();
        assert_eq!(w.row(2), vals[128..192]);
        assert!(Q8Matrix::from_gguf_bytes(&bytes[1..], 3, 64).is_err());
    }
}
