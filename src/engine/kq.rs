//! Q4_K and Q6_K matrix multiplication with AVX-512 VNNI, and an AVX2 variant.
//!
//! A Q4_K_M file is Q4_K and Q6_K matrices. candle 0.11 keeps each of them twice (its GGUF
//! blocks and a repacked copy with f32 scales, larger than the file's): peak memory on a 1.5B
//! model was twice the file. Here, as in `q8.rs`:
//! - weights are repacked at load into tiles of 4 rows whose 256-value blocks are interleaved
//!   (block 0 of rows 0..4, then block 1 …), so a matrix is one sequential stream, and the GGUF
//!   copy is dropped: the repacked form is the same size as the file's;
//! - activations are quantized per call to 8 bits in 256-value blocks with their sums per 16
//!   values (ggml's Q8_K), so each block's dot product is exact in integers: 4- and 6-bit weights
//!   times 8-bit activations in `vpmaddubsw`, the sub-block scales applied with `vpdpwssd` (AVX-512)
//!   or `vpmaddwd` (AVX2), one float multiply per block. Q4_K's minimums and Q6_K's −32 offset
//!   meet the activation sums instead of every value;
//! - tiles of 4 weight rows × up to 4 activation rows let prompts read each weight once per 4
//!   prompt rows, and several matrices sharing an input (q/k/v, gate/up) run in one parallel
//!   region on one quantization of it, even when they mix the two types.
//!
//! The variant comes from `simd::kernel`; without one (or off x86-64) the engine keeps candle's
//! kernels.

use half::f16;

use super::simd::Kernel;

/// Values per K-quant super-block.
pub const QK: usize = 256;
/// Weight rows per tile (the kernels are written for 4).
const ROWS: usize = 4;
/// Most activation rows per tile call.
const ACTS: usize = 4;

/// The K-quant types these kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KType {
    Q4K,
    Q6K,
}

impl KType {
    /// Bytes of one GGUF block of 256 values.
    const fn block_bytes(self) -> usize {
        match self {
            KType::Q4K => 144,
            KType::Q6K => 210,
        }
    }

    /// Bytes of one block of a 4-row tile.
    const fn tile_block_bytes(self) -> usize {
        ROWS * self.block_bytes()
    }

    pub fn name(self) -> &'static str {
        match self {
            KType::Q4K => "Q4_K",
            KType::Q6K => "Q6_K",
        }
    }
}

// Offsets inside one tile block. Q4_K: 4 × 128 bytes of nibbles, 4 × 12 bytes of packed 6-bit
// scales and minimums, 4 f16 scales, 4 f16 minimum scales. Q6_K: 4 × 128 bytes of low nibbles,
// 4 × 64 bytes of high bit pairs, 4 × 16 signed scales, 4 f16 scales.
const Q4_SCALES: usize = 512;
const Q4_D: usize = 560;
const Q4_DMIN: usize = 568;
const Q6_QH: usize = 512;
const Q6_SCALES: usize = 768;
const Q6_D: usize = 832;

/// An `n × k` Q4_K or Q6_K weight matrix (rows are output features), repacked for the kernels.
///
/// Q4_K nibbles are reordered so that in each 128-value half byte `i` holds value `i` (low
/// nibble) and value `64 + i` (high nibble), the layout Q6_K's low bits already have: a 64-byte
/// load then splits into two vectors of 64 consecutive values. Q6_K blocks are kept as they
/// are. The row count is padded to a multiple of 4 with zero rows.
pub struct KMatrix {
    ty: KType,
    n: usize,
    k: usize,
    data: Vec<u8>,
}

/// The 6-bit scale and minimum of sub-block `j` from Q4_K's 12 packed bytes (ggml's
/// `get_scale_min_k4`).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

impl KMatrix {
    /// Repacks raw GGUF data of an `n × k` matrix of type `ty`.
    pub fn from_gguf_bytes(data: &[u8], ty: KType, n: usize, k: usize) -> Result<Self, String> {
        if k == 0 || !k.is_multiple_of(QK) {
            return Err(format!("row length {k} is not a multiple of {QK}"));
        }
        let nb = k / QK;
        let bb = ty.block_bytes();
        if n.checked_mul(nb * bb) != Some(data.len()) {
            return Err(format!(
                "{} bytes of {} data for a {n}×{k} matrix (expected {})",
                data.len(),
                ty.name(),
                n.saturating_mul(nb * bb)
            ));
        }
        let tiles = n.div_ceil(ROWS);
        let tb = ty.tile_block_bytes();
        let mut out = vec![0u8; tiles * nb * tb];
        for (r, row) in data.chunks_exact(nb * bb).enumerate() {
            let (t, rr) = (r / ROWS, r % ROWS);
            for (b, blk) in row.chunks_exact(bb).enumerate() {
                let dst = &mut out[(t * nb + b) * tb..][..tb];
                match ty {
                    KType::Q4K => {
                        dst[Q4_D + 2 * rr..][..2].copy_from_slice(&blk[0..2]);
                        dst[Q4_DMIN + 2 * rr..][..2].copy_from_slice(&blk[2..4]);
                        dst[Q4_SCALES + 12 * rr..][..12].copy_from_slice(&blk[4..16]);
                        let qs = &blk[16..144];
                        // GGUF: byte 32j + l holds value 64j + l (low) and 64j + 32 + l (high).
                        let nib = |v: usize| {
                            let (j, w) = (v / 64, v % 64);
                            if w < 32 {
                                qs[32 * j + w] & 0x0F
                            } else {
                                qs[32 * j + w - 32] >> 4
                            }
                        };
                        let q = &mut dst[128 * rr..][..128];
                        for g in 0..2 {
                            for i in 0..64 {
                                q[64 * g + i] = nib(128 * g + i) | (nib(128 * g + 64 + i) << 4);
                            }
                        }
                    }
                    KType::Q6K => {
                        dst[128 * rr..][..128].copy_from_slice(&blk[0..128]);
                        dst[Q6_QH + 64 * rr..][..64].copy_from_slice(&blk[128..192]);
                        dst[Q6_SCALES + 16 * rr..][..16].copy_from_slice(&blk[192..208]);
                        dst[Q6_D + 2 * rr..][..2].copy_from_slice(&blk[208..210]);
                    }
                }
            }
        }
        Ok(Self {
            ty,
            n,
            k,
            data: out,
        })
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// Tile block `b` of tile `t`.
    fn tile_block(&self, t: usize, b: usize) -> &[u8] {
        let tb = self.ty.tile_block_bytes();
        &self.data[(t * (self.k / QK) + b) * tb..][..tb]
    }

    /// The quantized value `v` (0..256) of row `rr` in a tile block, and its integer
    /// (scale, minimum) such that the weight is `d · scale · q − dmin · minimum` (Q4_K) or
    /// `d · scale · (q − 32)` (Q6_K, minimum unused).
    fn value(ty: KType, tb: &[u8], rr: usize, v: usize) -> (i32, i32, i32) {
        let (g, w) = (v / 128, v % 128);
        match ty {
            KType::Q4K => {
                let byte = tb[128 * rr + 64 * g + w % 64];
                let q = if w < 64 { byte & 0x0F } else { byte >> 4 };
                let (sc, mn) = scale_min_k4(v / 32, &tb[Q4_SCALES + 12 * rr..][..12]);
                (q as i32, sc as i32, mn as i32)
            }
            KType::Q6K => {
                let (l, quarter) = (w % 32, w / 32);
                let byte = tb[128 * rr + 64 * g + l + 32 * (quarter % 2)];
                let lo = if quarter < 2 { byte & 0x0F } else { byte >> 4 };
                let hi = (tb[Q6_QH + 64 * rr + 32 * g + l] >> (2 * quarter)) & 3;
                let sc = tb[Q6_SCALES + 16 * rr + v / 16] as i8;
                ((lo | (hi << 4)) as i32, sc as i32, 0)
            }
        }
    }

    /// The f32 scales (d, dmin) of row `rr` in a tile block.
    fn scales(ty: KType, tb: &[u8], rr: usize) -> (f32, f32) {
        let f = |at: usize| f16::from_le_bytes([tb[at], tb[at + 1]]).to_f32();
        match ty {
            KType::Q4K => (f(Q4_D + 2 * rr), f(Q4_DMIN + 2 * rr)),
            KType::Q6K => (f(Q6_D + 2 * rr), 0.0),
        }
    }

    /// Dequantized row `r` (token-embedding lookups).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let (t, rr) = (r / ROWS, r % ROWS);
        let mut out = Vec::with_capacity(self.k);
        for b in 0..self.k / QK {
            let tb = self.tile_block(t, b);
            let (d, dmin) = Self::scales(self.ty, tb, rr);
            for v in 0..QK {
                let (q, sc, mn) = Self::value(self.ty, tb, rr, v);
                out.push(match self.ty {
                    KType::Q4K => d * sc as f32 * q as f32 - dmin * mn as f32,
                    KType::Q6K => d * (sc * (q - 32)) as f32,
                });
            }
        }
        out
    }
}

/// Activation rows quantized to 8 bits per 256-value block (ggml's Q8_K), with the sums the
/// weights' minimums and offsets meet.
pub struct QuantRowsK {
    m: usize,
    k: usize,
    qs: Vec<i8>,
    /// Block scales.
    d: Vec<f32>,
    /// Sums of each 16 values (16 per block): Q6_K's −32 offset.
    bs16: Vec<i16>,
    /// Sums of each 32 values, the block's 8 repeated 4 times (32 per block): Q4_K's minimums,
    /// laid out to meet 4 rows' minimums in one vector.
    bs32x4: Vec<i16>,
}

impl QuantRowsK {
    /// Quantizes `m` rows of `k` values (row-major `x`; `k` a multiple of 256).
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        debug_assert_eq!(x.len(), m * k);
        debug_assert_eq!(k % QK, 0);
        let nb = k / QK;
        let mut qs = vec![0i8; m * k];
        let mut d = vec![0f32; m * nb];
        let mut bs16 = vec![0i16; m * nb * 16];
        let mut bs32x4 = vec![0i16; m * nb * 32];
        for (blk, (src, dst)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
            // candle's `quantize_row_q8k` exactly (scale from the signed extreme, 1 / iscale),
            // so both engines see the same activation bytes on K-quant files.
            let (mut max, mut amax) = (0f32, 0f32);
            for &v in src {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax > 0.0 {
                let iscale = -127.0 / max;
                for (q, &v) in dst.iter_mut().zip(src) {
                    *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
                }
                d[blk] = 1.0 / iscale;
            }
            for (s, chunk) in dst.chunks_exact(16).enumerate() {
                bs16[blk * 16 + s] = chunk.iter().map(|&v| v as i16).sum();
            }
            for s in 0..8 {
                let sum = bs16[blk * 16 + 2 * s] + bs16[blk * 16 + 2 * s + 1];
                for r in 0..ROWS {
                    bs32x4[blk * 32 + 8 * r + s] = sum;
                }
            }
        }
        Self {
            m,
            k,
            qs,
            d,
            bs16,
            bs32x4,
        }
    }
}

/// The kernel variant this CPU runs (`simd::kernel`), if any.
pub fn kernel() -> Option<Kernel> {
    super::simd::kernel()
}

/// Whether the own K-quant kernels were asked for (`INFLUENCE_KQUANT=1`). They are off by
/// default: they decode 1.3-2.3x faster and halve a Q4_K_M model's memory, but their prompt
/// path runs at 0.4-0.5x candle's repacked kernels (docs/PERFORMANCE.md), and a long prompt
/// matters as much as decode, so candle's kernels stay the default until that path is fixed.
pub fn requested() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("INFLUENCE_KQUANT")
            .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "on" | "true"))
    })
}

/// Whether a Q4_K or Q6_K matrix with rows of `k` values runs on these kernels here.
pub fn runs(k: usize) -> bool {
    requested() && kernel().is_some() && k > 0 && k.is_multiple_of(QK)
}

/// `x @ wᵀ` for every matrix in `ws` (all with `k` columns): one row-major `m × n` output per
/// matrix. `x` is `m` rows of `k` values.
pub fn matmul(ws: &[&KMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    matmul_with(kernel(), ws, x, m)
}

/// [`matmul`] on a chosen kernel (`None`: the scalar reference). The caller guarantees the CPU
/// runs it, as [`kernel`] does.
fn matmul_with(kern: Option<Kernel>, ws: &[&KMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let Some(first) = ws.first() else {
        return Vec::new();
    };
    let k = first.k;
    assert!(
        ws.iter().all(|w| w.k == k) && x.len() == m * k,
        "k-quant matmul: shape mismatch"
    );
    let a = QuantRowsK::new(x, m, k);
    let ns: Vec<usize> = ws.iter().map(|w| w.n).collect();
    super::pool::tiled(&ns, m, k, ROWS, |j, t, out| {
        // SAFETY: `tiled` hands each tile of each matrix to one call with that matrix's
        // `m × n` output, which outlives the parallel region; the CPU runs `kern`.
        unsafe { tile_all_acts(kern, ws[j], t, &a, out) }
    })
}

/// Computes the output columns of weight tile `t` for every activation row.
///
/// # Safety
/// `out` must point to an `a.m × w.n` buffer, no other thread may write those columns, and the
/// CPU must run `kern`.
unsafe fn tile_all_acts(
    kern: Option<Kernel>,
    w: &KMatrix,
    t: usize,
    a: &QuantRowsK,
    out: *mut f32,
) {
    // AVX2 has 16 vector registers: 4 rows × 2 activations of accumulators fill them.
    let most = match kern {
        Some(Kernel::Avx2) => 2,
        _ => ACTS,
    };
    let mut i0 = 0;
    while i0 < a.m {
        let acts = (a.m - i0).min(most);
        let mut res = [[0f32; ACTS]; ROWS];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked the CPU features of `kern`.
        unsafe {
            match (kern, w.ty, acts) {
                (Some(Kernel::Avx512), KType::Q4K, 4) => avx512::q4k::<4>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx512), KType::Q4K, 3) => avx512::q4k::<3>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx512), KType::Q4K, 2) => avx512::q4k::<2>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx512), KType::Q4K, _) => avx512::q4k::<1>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx512), KType::Q6K, 4) => avx512::q6k::<4>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx512), KType::Q6K, 3) => avx512::q6k::<3>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx512), KType::Q6K, 2) => avx512::q6k::<2>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx512), KType::Q6K, _) => avx512::q6k::<1>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx2), KType::Q4K, 2) => avx2::q4k::<2>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx2), KType::Q4K, _) => avx2::q4k::<1>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx2), KType::Q6K, 2) => avx2::q6k::<2>(w, t, a, i0, &mut res),
                (Some(Kernel::Avx2), KType::Q6K, _) => avx2::q6k::<1>(w, t, a, i0, &mut res),
                (None, _, _) => tile_scalar(w, t, a, i0, acts, &mut res),
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

/// Reference kernel: the same integer arithmetic per block, one value at a time.
fn tile_scalar(
    w: &KMatrix,
    t: usize,
    a: &QuantRowsK,
    i0: usize,
    acts: usize,
    res: &mut [[f32; ACTS]; ROWS],
) {
    let nb = w.k / QK;
    for (rr, row) in res.iter_mut().enumerate() {
        for (i, v) in row[..acts].iter_mut().enumerate() {
            let ai = i0 + i;
            let mut sum = 0f32;
            for b in 0..nb {
                let tb = w.tile_block(t, b);
                let (d, dmin) = KMatrix::scales(w.ty, tb, rr);
                let aq = &a.qs[ai * a.k + b * QK..][..QK];
                let blk = ai * nb + b;
                let (mut dot, mut mins) = (0i32, 0i32);
                for (vi, &av) in aq.iter().enumerate() {
                    let (q, sc, mn) = KMatrix::value(w.ty, tb, rr, vi);
                    match w.ty {
                        KType::Q4K => {
                            dot += sc * q * av as i32;
                            mins += mn * av as i32;
                        }
                        KType::Q6K => dot += sc * (q - 32) * av as i32,
                    }
                }
                sum += block_sum(d, dmin, a.d[blk], dot, mins);
            }
            *v = sum;
        }
    }
}

/// One block's contribution to an output from its exact integer dot product and minimum term.
/// Every variant adds these in block order with this one expression, so all of them (and the
/// scalar reference) give bit-identical results: greedy outputs cannot depend on which variant
/// the CPU picked.
#[inline(always)]
fn block_sum(d: f32, dmin: f32, da: f32, dot: i32, mins: i32) -> f32 {
    d * da * dot as f32 - dmin * da * mins as f32
}

/// Unpacks 4 rows' Q4_K scales and minimums (12 bytes each) into 32 bytes each, row-major,
/// with ggml's word-wide bit moves (the same values as [`scale_min_k4`]).
#[inline(always)]
fn unpack_q4k_scales(packed: &[u8], sc: &mut [u8; 32], mn: &mut [u8; 32]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    for r in 0..ROWS {
        let s = &packed[12 * r..12 * r + 12];
        let word =
            |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
        let (u0, u1, u2) = (word(0), word(1), word(2));
        let scales = [u0 & LOW6, (u2 & LOW4) | (((u0 >> 6) & LOW2) << 4)];
        let mins = [u1 & LOW6, ((u2 >> 4) & LOW4) | (((u1 >> 6) & LOW2) << 4)];
        for h in 0..2 {
            sc[8 * r + 4 * h..][..4].copy_from_slice(&scales[h].to_le_bytes());
            mn[8 * r + 4 * h..][..4].copy_from_slice(&mins[h].to_le_bytes());
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{
        block_sum, unpack_q4k_scales, KMatrix, QuantRowsK, ACTS, Q4_D, Q4_SCALES, Q6_D, Q6_QH,
        Q6_SCALES, QK, ROWS,
    };
    use std::arch::x86_64::*;

    /// Index vector for `vpermw`: lane `j` takes element `base + j / width`.
    #[inline(always)]
    unsafe fn spread(base: i16, width: usize) -> __m512i {
        let mut idx = [0i16; 32];
        for (j, v) in idx.iter_mut().enumerate() {
            *v = base + (j / width) as i16;
        }
        _mm512_loadu_si512(idx.as_ptr() as *const __m512i)
    }

    /// Q4_K weight tile `t` (4 rows) times `M` activation rows from `i0`.
    ///
    /// Per 64 weights and activation row: `vpmaddubsw` (nibbles × bytes into 16-bit pairs) and
    /// `vpdpwssd` (× the sub-block scale, into 32-bit lanes). Per block and (row, act): one
    /// convert and FMA. The minimums: 4 rows' 32 minimums against the activation's 8 sums of 32
    /// (repeated per row) in one `vpmaddwd`, lanes 4r..4r+4 belonging to row r.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    pub(super) unsafe fn q4k<const M: usize>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        let nb = w.k / QK;
        let tbb = w.ty.tile_block_bytes();
        let m4 = _mm512_set1_epi8(0x0F);
        let mut idx = [[_mm512_setzero_si512(); 4]; ROWS];
        for (r, row) in idx.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                *x = spread((8 * r + 2 * v) as i16, 16);
            }
        }
        let mut acc = [[0f32; M]; ROWS];
        for b in 0..nb {
            let base = w.data.as_ptr().add((t * nb + b) * tbb);
            let dd = _mm256_cvtph_ps(_mm_loadu_si128(base.add(Q4_D) as *const __m128i));
            let mut dv = [0f32; 8];
            _mm256_storeu_ps(dv.as_mut_ptr(), dd);
            let (mut sc, mut mn) = ([0u8; 32], [0u8; 32]);
            unpack_q4k_scales(
                std::slice::from_raw_parts(base.add(Q4_SCALES), 48),
                &mut sc,
                &mut mn,
            );
            let sc_all = _mm512_cvtepu8_epi16(_mm256_loadu_si256(sc.as_ptr() as *const __m256i));
            let mn_all = _mm512_cvtepu8_epi16(_mm256_loadu_si256(mn.as_ptr() as *const __m256i));
            let mut da = [0f32; M];
            let mut aq = [std::ptr::null::<i8>(); M];
            // Per activation row, lanes 4r..4r+4 of one `vpmaddwd` sum to row r's minimum term.
            let mut mins = [[0i32; 16]; M];
            for i in 0..M {
                let blk = (i0 + i) * nb + b;
                da[i] = *a.d.get_unchecked(blk);
                aq[i] = a.qs.as_ptr().add((i0 + i) * a.k + b * QK);
                let bs = _mm512_loadu_si512(a.bs32x4.as_ptr().add(blk * 32) as *const __m512i);
                _mm512_storeu_si512(
                    mins[i].as_mut_ptr() as *mut __m512i,
                    _mm512_madd_epi16(mn_all, bs),
                );
            }
            for r in 0..ROWS {
                let q = base.add(128 * r);
                let raw0 = _mm512_loadu_si512(q as *const __m512i);
                let raw1 = _mm512_loadu_si512(q.add(64) as *const __m512i);
                let vals = [
                    _mm512_and_si512(raw0, m4),
                    _mm512_and_si512(_mm512_srli_epi16(raw0, 4), m4),
                    _mm512_and_si512(raw1, m4),
                    _mm512_and_si512(_mm512_srli_epi16(raw1, 4), m4),
                ];
                let mut iacc = [_mm512_setzero_si512(); M];
                for (v, &wv) in vals.iter().enumerate() {
                    let s = _mm512_permutexvar_epi16(idx[r][v], sc_all);
                    for i in 0..M {
                        let av = _mm512_loadu_si512(aq[i].add(64 * v) as *const __m512i);
                        iacc[i] = _mm512_dpwssd_epi32(iacc[i], _mm512_maddubs_epi16(wv, av), s);
                    }
                }
                for i in 0..M {
                    let dot = _mm512_reduce_add_epi32(iacc[i]);
                    let mn = mins[i][4 * r..4 * r + 4].iter().sum::<i32>();
                    acc[r][i] += block_sum(dv[r], dv[4 + r], da[i], dot, mn);
                }
            }
        }
        for (dst, row) in res.iter_mut().zip(&acc) {
            dst[..M].copy_from_slice(row);
        }
    }

    /// Q6_K weight tile `t` (4 rows) times `M` activation rows from `i0`.
    ///
    /// Each 128-value half: one 64-byte load of low nibbles and one 32-byte load of high bit
    /// pairs (broadcast to both halves, shifted by lane-dependent amounts) give 2 vectors of
    /// 64 six-bit values. The −32 offset is taken away in integers: each (row, act) accumulator
    /// starts from `−32 · Σ scale · (sum of 16 activations)`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    pub(super) unsafe fn q6k<const M: usize>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        let nb = w.k / QK;
        let tbb = w.ty.tile_block_bytes();
        let m4 = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        // Low 256 bits hold the first 32 values of a vector, high 256 bits the next 32.
        let shl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        let shr = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
        let idx = [spread(0, 8), spread(4, 8), spread(8, 8), spread(12, 8)];
        let mut acc = [[0f32; M]; ROWS];
        for b in 0..nb {
            let base = w.data.as_ptr().add((t * nb + b) * tbb);
            let mut dv = [0f32; 4];
            _mm_storeu_ps(
                dv.as_mut_ptr(),
                _mm_cvtph_ps(_mm_loadl_epi64(base.add(Q6_D) as *const __m128i)),
            );
            let mut da = [0f32; M];
            let mut aq = [std::ptr::null::<i8>(); M];
            let mut bs = [_mm512_setzero_si512(); M];
            for i in 0..M {
                let blk = (i0 + i) * nb + b;
                da[i] = *a.d.get_unchecked(blk);
                aq[i] = a.qs.as_ptr().add((i0 + i) * a.k + b * QK);
                bs[i] = _mm512_castsi256_si512(_mm256_loadu_si256(
                    a.bs16.as_ptr().add(blk * 16) as *const __m256i
                ));
            }
            for r in 0..ROWS {
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                    base.add(Q6_SCALES + 16 * r) as *const __m128i
                ));
                let scz = _mm512_castsi256_si512(sc16);
                // −32 · scale; the upper half is zero, so the activation sums' upper half
                // (undefined) meets zeros.
                let neg = _mm512_zextsi256_si512(_mm256_sub_epi16(
                    _mm256_setzero_si256(),
                    _mm256_slli_epi16(sc16, 5),
                ));
                let mut iacc = [_mm512_setzero_si512(); M];
                for i in 0..M {
                    iacc[i] = _mm512_dpwssd_epi32(iacc[i], neg, bs[i]);
                }
                for g in 0..2 {
                    let ql = _mm512_loadu_si512(base.add(128 * r + 64 * g) as *const __m512i);
                    let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        base.add(Q6_QH + 64 * r + 32 * g) as *const __m256i,
                    ));
                    let lo = _mm512_or_si512(
                        _mm512_and_si512(ql, m4),
                        _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m30),
                    );
                    let hi = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                        _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m30),
                    );
                    for (h, &wv) in [lo, hi].iter().enumerate() {
                        let s = _mm512_permutexvar_epi16(idx[2 * g + h], scz);
                        for i in 0..M {
                            let av =
                                _mm512_loadu_si512(aq[i].add(128 * g + 64 * h) as *const __m512i);
                            iacc[i] = _mm512_dpwssd_epi32(iacc[i], _mm512_maddubs_epi16(wv, av), s);
                        }
                    }
                }
                for i in 0..M {
                    let dot = _mm512_reduce_add_epi32(iacc[i]);
                    acc[r][i] += block_sum(dv[r], 0.0, da[i], dot, 0);
                }
            }
        }
        for (dst, row) in res.iter_mut().zip(&acc) {
            dst[..M].copy_from_slice(row);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{
        block_sum, unpack_q4k_scales, KMatrix, QuantRowsK, ACTS, Q4_D, Q4_SCALES, Q6_D, Q6_QH,
        Q6_SCALES, QK, ROWS,
    };
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum256_i32(v: __m256i) -> i32 {
        hsum_i32(_mm_add_epi32(
            _mm256_castsi256_si128(v),
            _mm256_extracti128_si256(v, 1),
        ))
    }

    #[inline(always)]
    unsafe fn hsum_i32(v: __m128i) -> i32 {
        let v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b01_00_11_10));
        let v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b10_11_00_01));
        _mm_cvtsi128_si32(v)
    }

    /// Q4_K weight tile `t` times `M` activation rows, 32 bytes (one 32-value sub-block per
    /// nibble half) at a time: `vpmaddubsw`, then `vpmaddwd` by the broadcast sub-block scale.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4k<const M: usize>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        let nb = w.k / QK;
        let tbb = w.ty.tile_block_bytes();
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [[0f32; M]; ROWS];
        for b in 0..nb {
            let base = w.data.as_ptr().add((t * nb + b) * tbb);
            let mut dv = [0f32; 8];
            _mm256_storeu_ps(
                dv.as_mut_ptr(),
                _mm256_cvtph_ps(_mm_loadu_si128(base.add(Q4_D) as *const __m128i)),
            );
            let (mut sc, mut mn) = ([0u8; 32], [0u8; 32]);
            unpack_q4k_scales(
                std::slice::from_raw_parts(base.add(Q4_SCALES), 48),
                &mut sc,
                &mut mn,
            );
            let mut da = [0f32; M];
            let mut aq = [std::ptr::null::<i8>(); M];
            let mut bs = [_mm_setzero_si128(); M];
            for i in 0..M {
                let blk = (i0 + i) * nb + b;
                da[i] = *a.d.get_unchecked(blk);
                aq[i] = a.qs.as_ptr().add((i0 + i) * a.k + b * QK);
                bs[i] = _mm_loadu_si128(a.bs32x4.as_ptr().add(blk * 32) as *const __m128i);
            }
            for r in 0..ROWS {
                let mn16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr().add(8 * r) as *const _));
                let mut mins = [0i32; M];
                for i in 0..M {
                    mins[i] = hsum_i32(_mm_madd_epi16(mn16, bs[i]));
                }
                let q = base.add(128 * r);
                let mut iacc = [_mm256_setzero_si256(); M];
                for g in 0..2 {
                    for h in 0..2 {
                        let raw = _mm256_loadu_si256(q.add(64 * g + 32 * h) as *const __m256i);
                        let lo = _mm256_and_si256(raw, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                        let slo = _mm256_set1_epi16(sc[8 * r + 4 * g + h] as i16);
                        let shi = _mm256_set1_epi16(sc[8 * r + 4 * g + 2 + h] as i16);
                        for i in 0..M {
                            let alo =
                                _mm256_loadu_si256(aq[i].add(128 * g + 32 * h) as *const __m256i);
                            let ahi = _mm256_loadu_si256(
                                aq[i].add(128 * g + 64 + 32 * h) as *const __m256i
                            );
                            let p = _mm256_add_epi32(
                                _mm256_madd_epi16(_mm256_maddubs_epi16(lo, alo), slo),
                                _mm256_madd_epi16(_mm256_maddubs_epi16(hi, ahi), shi),
                            );
                            iacc[i] = _mm256_add_epi32(iacc[i], p);
                        }
                    }
                }
                for i in 0..M {
                    let dot = hsum256_i32(iacc[i]);
                    acc[r][i] += block_sum(dv[r], dv[4 + r], da[i], dot, mins[i]);
                }
            }
        }
        for (dst, row) in res.iter_mut().zip(&acc) {
            dst[..M].copy_from_slice(row);
        }
    }

    /// Q6_K weight tile `t` times `M` activation rows, 32 values at a time; the −32 offset is
    /// taken away from the activation sums per 16 values, as in the AVX-512 variant.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q6k<const M: usize>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        let nb = w.k / QK;
        let tbb = w.ty.tile_block_bytes();
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        let mut acc = [[0f32; M]; ROWS];
        for b in 0..nb {
            let base = w.data.as_ptr().add((t * nb + b) * tbb);
            let mut dv = [0f32; 4];
            _mm_storeu_ps(
                dv.as_mut_ptr(),
                _mm_cvtph_ps(_mm_loadl_epi64(base.add(Q6_D) as *const __m128i)),
            );
            let mut da = [0f32; M];
            let mut aq = [std::ptr::null::<i8>(); M];
            for i in 0..M {
                da[i] = *a.d.get_unchecked((i0 + i) * nb + b);
                aq[i] = a.qs.as_ptr().add((i0 + i) * a.k + b * QK);
            }
            for r in 0..ROWS {
                let scb = base.add(Q6_SCALES + 16 * r) as *const i8;
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(scb as *const __m128i));
                let neg = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5));
                let mut iacc = [_mm256_setzero_si256(); M];
                for (i, acc) in iacc.iter_mut().enumerate() {
                    let blk = (i0 + i) * nb + b;
                    let bs = _mm256_loadu_si256(a.bs16.as_ptr().add(blk * 16) as *const __m256i);
                    *acc = _mm256_madd_epi16(neg, bs);
                }
                for g in 0..2 {
                    let ql0 = _mm256_loadu_si256(base.add(128 * r + 64 * g) as *const __m256i);
                    let ql1 = _mm256_loadu_si256(base.add(128 * r + 64 * g + 32) as *const __m256i);
                    let qh =
                        _mm256_loadu_si256(base.add(Q6_QH + 64 * r + 32 * g) as *const __m256i);
                    for qq in 0..4 {
                        let low = match qq {
                            0 => _mm256_and_si256(ql0, m4),
                            1 => _mm256_and_si256(ql1, m4),
                            2 => _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                            _ => _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                        };
                        let high = match qq {
                            0 => _mm256_slli_epi16(qh, 4),
                            1 => _mm256_slli_epi16(qh, 2),
                            2 => qh,
                            _ => _mm256_srli_epi16(qh, 2),
                        };
                        let wv = _mm256_or_si256(low, _mm256_and_si256(high, m30));
                        let j = 8 * g + 2 * qq;
                        let s = _mm256_set_m128i(
                            _mm_set1_epi16(*scb.add(j + 1) as i16),
                            _mm_set1_epi16(*scb.add(j) as i16),
                        );
                        for i in 0..M {
                            let av =
                                _mm256_loadu_si256(aq[i].add(128 * g + 32 * qq) as *const __m256i);
                            iacc[i] = _mm256_add_epi32(
                                iacc[i],
                                _mm256_madd_epi16(_mm256_maddubs_epi16(wv, av), s),
                            );
                        }
                    }
                }
                for i in 0..M {
                    acc[r][i] += block_sum(dv[r], 0.0, da[i], hsum256_i32(iacc[i]), 0);
                }
            }
        }
        for (dst, row) in res.iter_mut().zip(&acc) {
            dst[..M].copy_from_slice(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QStorage, QTensor};
    use candle_core::{Device, Module, Tensor};

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

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
    }

    /// Random GGUF bytes for an `n × k` matrix of type `ty`: every bit of the quantized values
    /// and scales is random, the f16 scales small and positive like real ones.
    fn random_gguf(ty: KType, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed);
        let mut out = Vec::new();
        for _ in 0..n * k / QK {
            let mut blk: Vec<u8> = (0..ty.block_bytes()).map(|_| rng.next() as u8).collect();
            let mut scale = |at: usize, rng: &mut Rng| {
                let d = f16::from_f32(1e-4 + (rng.next() % 1000) as f32 * 2e-6);
                blk[at..at + 2].copy_from_slice(&d.to_le_bytes());
            };
            match ty {
                KType::Q4K => {
                    scale(0, &mut rng);
                    scale(2, &mut rng);
                }
                KType::Q6K => scale(208, &mut rng),
            }
            out.extend(blk);
        }
        out
    }

    /// Dequantizes GGUF bytes straight from the block format (ggml's `dequantize_row_q4_K` /
    /// `_q6_K`), independently of the repacked layout.
    fn dequant_gguf(ty: KType, data: &[u8]) -> Vec<f32> {
        let f = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        let mut out = Vec::new();
        for blk in data.chunks_exact(ty.block_bytes()) {
            let mut y = [0f32; QK];
            match ty {
                KType::Q4K => {
                    let (d, dmin) = (f(&blk[0..2]), f(&blk[2..4]));
                    let (scales, qs) = (&blk[4..16], &blk[16..144]);
                    for j in 0..4 {
                        let (s1, m1) = scale_min_k4(2 * j, scales);
                        let (s2, m2) = scale_min_k4(2 * j + 1, scales);
                        for l in 0..32 {
                            let q = qs[32 * j + l];
                            y[64 * j + l] = d * s1 as f32 * (q & 15) as f32 - dmin * m1 as f32;
                            y[64 * j + 32 + l] = d * s2 as f32 * (q >> 4) as f32 - dmin * m2 as f32;
                        }
                    }
                }
                KType::Q6K => {
                    let (ql, qh, sc, d) =
                        (&blk[0..128], &blk[128..192], &blk[192..208], f(&blk[208..]));
                    for n in 0..2 {
                        for l in 0..32 {
                            let (lq, hq) = (&ql[64 * n..], qh[32 * n + l]);
                            let q = [
                                (lq[l] & 15) | ((hq & 3) << 4),
                                (lq[l + 32] & 15) | (((hq >> 2) & 3) << 4),
                                (lq[l] >> 4) | (((hq >> 4) & 3) << 4),
                                (lq[l + 32] >> 4) | (((hq >> 6) & 3) << 4),
                            ];
                            for (quarter, &qv) in q.iter().enumerate() {
                                let v = 32 * quarter + l;
                                let s = sc[8 * n + v / 16] as i8 as f32;
                                y[128 * n + v] = d * s * (qv as i32 - 32) as f32;
                            }
                        }
                    }
                }
            }
            out.extend(y);
        }
        out
    }

    fn candle_tensor(ty: KType, data: &[u8], n: usize, k: usize) -> QTensor {
        let dt = match ty {
            KType::Q4K => GgmlDType::Q4K,
            KType::Q6K => GgmlDType::Q6K,
        };
        let st = QStorage::from_data(std::borrow::Cow::Borrowed(data), &Device::Cpu, dt).unwrap();
        QTensor::new(st, (n, k)).unwrap()
    }

    fn random_acts(m: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng(seed);
        (0..m * k)
            .map(|i| ((rng.next() % 2001) as f32 / 1000.0 - 1.0) * (1.0 + (i % 7) as f32))
            .collect()
    }

    /// The exact product (f64) of the dequantized weights with the quantized activations.
    fn reference(w: &[f32], a: &QuantRowsK, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; a.m * n];
        for i in 0..a.m {
            for r in 0..n {
                let mut s = 0f64;
                for c in 0..k {
                    let av = a.qs[i * k + c] as f64 * a.d[i * (k / QK) + c / QK] as f64;
                    s += w[r * k + c] as f64 * av;
                }
                out[i * n + r] = s as f32;
            }
        }
        out
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32], scale: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (idx, ((g, e), s)) in got.iter().zip(want).zip(scale).enumerate() {
            // f32 sums of per-block products: relative error of a few ulps of the terms.
            let tol = 1e-5 * s + 1e-6;
            assert!(
                (g - e).abs() <= tol,
                "{what}: element {idx} is {g}, expected {e} (tolerance {tol})"
            );
        }
    }

    /// Σ |w · a| per output: the size of the terms, for relative tolerances.
    fn magnitudes(w: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for r in 0..n {
                out[i * n + r] = (0..k).map(|c| (w[r * k + c] * x[i * k + c]).abs()).sum();
            }
        }
        out
    }

    fn check(ty: KType, n: usize, k: usize, m: usize) {
        let bytes = random_gguf(ty, n, k, (n * 31 + k * 7 + m) as u64);
        let vals = dequant_gguf(ty, &bytes);
        let w = KMatrix::from_gguf_bytes(&bytes, ty, n, k).unwrap();
        let x = random_acts(m, k, (n + m) as u64);
        let want = reference(&vals, &QuantRowsK::new(&x, m, k), n, k);
        let mags = magnitudes(&vals, &x, m, n, k);
        let scalar = matmul_with(None, &[&w], &x, m);
        for kern in kernels() {
            let got = &matmul_with(kern, &[&w], &x, m)[0];
            // Exact integers per block, one float expression in block order: bit-identical.
            assert_eq!(got, &scalar[0], "{} {kern:?} n={n} k={k} m={m}", ty.name());
            assert_close(
                &format!("{} {kern:?} n={n} k={k} m={m}", ty.name()),
                got,
                &want,
                &mags,
            );
        }
    }

    #[test]
    fn reference_dequantization_matches_candle() {
        for ty in [KType::Q4K, KType::Q6K] {
            let (n, k) = (5, 512);
            let bytes = random_gguf(ty, n, k, 3);
            let ours = dequant_gguf(ty, &bytes);
            let theirs: Vec<f32> = candle_tensor(ty, &bytes, n, k)
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(ours, theirs, "{}", ty.name());
            let w = KMatrix::from_gguf_bytes(&bytes, ty, n, k).unwrap();
            for r in 0..n {
                assert_eq!(w.row(r), ours[r * k..(r + 1) * k], "{} row {r}", ty.name());
            }
        }
    }

    #[test]
    fn matches_reference_for_odd_shapes() {
        // Rows not a multiple of 4 leave padded edge tiles; 1 to 9 activation rows cover every
        // tile width and a remainder.
        for ty in [KType::Q4K, KType::Q6K] {
            for &(n, k, m) in &[
                (4, 256, 1),
                (7, 256, 1),
                (9, 512, 3),
                (13, 768, 5),
                (6, 1536, 9),
                (1, 256, 2),
                (16, 2304, 4),
            ] {
                check(ty, n, k, m);
            }
        }
    }

    #[test]
    fn large_products_run_in_parallel_and_agree() {
        check(KType::Q4K, 300, 1536, 6);
        check(KType::Q6K, 258, 1024, 1);
    }

    /// Row `i` of a call with `m` rows is bit-identical to a call with row `i` alone, on every
    /// variant: a sequence's tokens cannot depend on what it is batched with.
    #[test]
    fn rows_do_not_depend_on_the_other_rows() {
        let (n, k) = (37, 512);
        let x = random_acts(9, k, 21);
        for ty in [KType::Q4K, KType::Q6K] {
            let bytes = random_gguf(ty, n, k, 20);
            let w = KMatrix::from_gguf_bytes(&bytes, ty, n, k).unwrap();
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
                            "{} {kern:?}: row {i} of {m} differs from the row alone",
                            ty.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fused_mixed_types_match_separate_calls() {
        let (k, m) = (512, 5);
        let b1 = random_gguf(KType::Q4K, 40, k, 1);
        let b2 = random_gguf(KType::Q6K, 22, k, 2);
        let w1 = KMatrix::from_gguf_bytes(&b1, KType::Q4K, 40, k).unwrap();
        let w2 = KMatrix::from_gguf_bytes(&b2, KType::Q6K, 22, k).unwrap();
        let x = random_acts(m, k, 4);
        for kern in kernels() {
            let both = matmul_with(kern, &[&w1, &w2], &x, m);
            assert_eq!(both[0], matmul_with(kern, &[&w1], &x, m)[0], "{kern:?}");
            assert_eq!(both[1], matmul_with(kern, &[&w2], &x, m)[0], "{kern:?}");
        }
    }

    /// Against candle's f32 matmul on the dequantized weights: the only difference is the
    /// 8-bit activations, whose rounding error is at most half a step, `amax / 254` of each
    /// 256-value block, per value; so each output is off by at most Σ |w| · amax_block / 254.
    #[test]
    fn matches_candle_f32_within_activation_rounding() {
        let (n, k, m) = (24, 768, 3);
        for ty in [KType::Q4K, KType::Q6K] {
            let bytes = random_gguf(ty, n, k, 11);
            let wt = candle_tensor(ty, &bytes, n, k)
                .dequantize(&Device::Cpu)
                .unwrap();
            let wv: Vec<f32> = wt.flatten_all().unwrap().to_vec1().unwrap();
            let x = random_acts(m, k, 12);
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let want: Vec<f32> = xt
                .matmul(&wt.t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            // candle's own quantized kernel (Q8_K activations) as a second opinion.
            let qm = candle_core::quantized::QMatMul::from_qtensor(candle_tensor(ty, &bytes, n, k))
                .unwrap();
            let theirs: Vec<f32> = qm
                .forward(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w = KMatrix::from_gguf_bytes(&bytes, ty, n, k).unwrap();
            for kern in kernels() {
                let got = &matmul_with(kern, &[&w], &x, m)[0];
                for i in 0..m {
                    for r in 0..n {
                        let bound: f32 = (0..k)
                            .map(|c| {
                                let blk = &x[i * k + c / QK * QK..][..QK];
                                let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                                wv[r * k + c].abs() * amax / 254.0
                            })
                            .sum::<f32>()
                            * 1.01
                            + 1e-5;
                        let (g, e) = (got[i * n + r], want[i * n + r]);
                        assert!(
                            (g - e).abs() <= bound,
                            "{} {kern:?} ({i}, {r}): {g} vs f32 {e}, bound {bound}",
                            ty.name()
                        );
                        let c = theirs[i * n + r];
                        assert!(
                            (g - c).abs() <= 2.0 * bound,
                            "{} {kern:?} ({i}, {r}): {g} vs candle {c}",
                            ty.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn word_wide_scale_unpacking_matches_ggml() {
        let mut rng = Rng(5);
        for _ in 0..200 {
            let packed: Vec<u8> = (0..48).map(|_| rng.next() as u8).collect();
            let (mut sc, mut mn) = ([0u8; 32], [0u8; 32]);
            unpack_q4k_scales(&packed, &mut sc, &mut mn);
            for r in 0..ROWS {
                for j in 0..8 {
                    let want = scale_min_k4(j, &packed[12 * r..12 * r + 12]);
                    assert_eq!(
                        (sc[8 * r + j], mn[8 * r + j]),
                        want,
                        "row {r} sub-block {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        let bytes = random_gguf(KType::Q4K, 2, 256, 1);
        assert!(KMatrix::from_gguf_bytes(&bytes, KType::Q4K, 2, 256).is_ok());
        assert!(KMatrix::from_gguf_bytes(&bytes[1..], KType::Q4K, 2, 256).is_err());
        assert!(KMatrix::from_gguf_bytes(&bytes, KType::Q4K, 1, 512).is_ok());
        assert!(KMatrix::from_gguf_bytes(&bytes, KType::Q4K, 4, 128).is_err());
        assert!(KMatrix::from_gguf_bytes(&bytes, KType::Q6K, 2, 256).is_err());
    }
}
