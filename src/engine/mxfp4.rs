//! MXFP4 matrix multiplication (gpt-oss's expert weights) with AVX-512 VNNI, AVX-VNNI, AVX2 and a
//! scalar reference (AVX-VNNI and AVX2 are one kernel, generic over the dot-product instruction).
//!
//! candle 0.11 does not know ggml's MXFP4 type (39), so these matrices never pass through it:
//! the loader reads their bytes itself (`gguf.rs` keeps their places) and repacks them here.
//! An MXFP4 block holds 32 values as one E8M0 exponent byte and 16 bytes of 4-bit E2M1 codes,
//! value `i` in the low and value `16 + i` in the high nibble of byte `i`, exactly where Q4_0
//! keeps its nibbles. So the layout is `legacy.rs`'s: tiles of 4 rows read as one stream, one
//! block per 32-bit lane in groups of 16, activations quantized per call to 8 bits per 32 values
//! in the same lane order ([`QuantRows`]), and a chain of `vpdpbusd` leaving each block's exact
//! integer dot product in its own lane. What differs:
//! - **codes become integers with a byte shuffle.** ggml's table of doubled E2M1 values
//!   (`kvalues_mxfp4`: 0, 1, 2, 3, 4, 6, 8, 12 and their negatives) plus 12 is unsigned
//!   (0..24), which `vpdpbusd` / `vpmaddubsw` take; one `vpshufb` per nibble vector looks it up,
//!   and each lane starts from `−12 · Σa` of its block, so the lane holds `Σ kvalue · a` exactly;
//! - **the scale is a power of two**, `2^(e − 128)` (ggml's `e8m0_to_fp32_half`, the half
//!   making up for the doubled table), kept as its byte (the repacked matrix is the file's 17
//!   bytes per block) and turned into a float in the kernel with integer shifts.
//!
//! **Numerics.** As in `legacy.rs`: block `b`'s exact integer dot product goes into float lane
//! `b % 16` as `fma(dot, d_w · d_a, lane)` and the 16 lanes are summed by `hsum16`'s tree, in
//! every variant, so results are bit-identical across AVX-512, AVX2 and the scalar reference,
//! and an activation row's result never depends on the other rows of the call.

use super::legacy::{groups, hsum16, QuantRows, ACTS, ACT_GROUP, GROUP};
use super::simd::Kernel;

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes of one GGUF block: the exponent, then 16 bytes of codes.
pub const BLOCK_BYTES: usize = 17;
/// Weight rows per tile (the kernels are written for 4).
const ROWS: usize = 4;
/// Zero exponents after the last, so the AVX2 variant's 8-byte read at a partial group's last
/// row stays inside the allocation (it clears what lies past the group).
const SLACK: usize = 8;

/// ggml's `kvalues_mxfp4`: E2M1 values, doubled, by 4-bit code.
const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
/// What every looked-up value is raised by so it is unsigned.
const OFFSET: i32 = 12;
/// [`KVALUES`] + [`OFFSET`], the byte-shuffle table.
const TABLE: [u8; 16] = [12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0];
const _: () = {
    let mut i = 0;
    while i < 16 {
        assert!(TABLE[i] as i32 == KVALUES[i] as i32 + OFFSET);
        i += 1;
    }
};

/// ggml's `e8m0_to_fp32_half`: `2^(e − 128)`, including the two subnormal exponents.
pub fn scale_of(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// An `n × k` MXFP4 weight matrix (rows are output features), repacked.
///
/// Per tile of 4 rows and group: the 4 rows' codes one after the other (256 bytes each, or 16
/// per block in a partial group), each as 4 loads × the group's blocks × 4 bytes (`legacy.rs`'s
/// layout); the exponents as the group's count of bytes per row (a partial group's are not
/// padded to 16). Padding is only zero rows up to a multiple of 4 and [`SLACK`] trailing zero
/// exponents, so the matrix is the GGUF data's size.
pub struct MxMatrix {
    n: usize,
    k: usize,
    qs: Vec<u8>,
    e: Vec<u8>,
}

impl MxMatrix {
    /// Repacks raw GGUF data of an `n × k` MXFP4 matrix.
    pub fn from_gguf_bytes(data: &[u8], n: usize, k: usize) -> Result<Self, String> {
        if k == 0 || !k.is_multiple_of(BLOCK) {
            return Err(format!("row length {k} is not a multiple of {BLOCK}"));
        }
        let kb = k / BLOCK;
        if n.checked_mul(kb * BLOCK_BYTES) != Some(data.len()) {
            return Err(format!(
                "{} bytes of MXFP4 data for a {n}×{k} matrix (expected {})",
                data.len(),
                n.saturating_mul(kb * BLOCK_BYTES)
            ));
        }
        let tiles = n.div_ceil(ROWS);
        let mut m = Self {
            n,
            k,
            qs: vec![0u8; tiles * ROWS * kb * 16],
            e: vec![0u8; tiles * ROWS * kb + SLACK],
        };
        for (r, row) in data.chunks_exact(kb * BLOCK_BYTES).enumerate() {
            let (t, rr) = (r / ROWS, r % ROWS);
            for (b, blk) in row.chunks_exact(BLOCK_BYTES).enumerate() {
                let s = m.scale_at(t, rr, b);
                m.e[s] = blk[0];
                let (at, width) = (m.byte_at(t, rr, b, 0), m.width(b / GROUP));
                for (u, word) in blk[1..].chunks_exact(4).enumerate() {
                    m.qs[at + u * width * 4..][..4].copy_from_slice(word);
                }
            }
        }
        Ok(m)
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// Blocks per row.
    fn kb(&self) -> usize {
        self.k / BLOCK
    }

    /// Blocks in group `g` of a row.
    fn width(&self, g: usize) -> usize {
        (self.kb() - g * GROUP).min(GROUP)
    }

    /// Offset in `qs` of group `g` of row `rr` of tile `t`.
    fn group_at(&self, t: usize, g: usize, rr: usize) -> usize {
        t * ROWS * self.kb() * 16 + g * ROWS * GROUP * 16 + rr * self.width(g) * 16
    }

    /// Offset in `qs` of GGUF code byte `i` (0..16) of block `b` of row `rr` of tile `t`.
    fn byte_at(&self, t: usize, rr: usize, b: usize, i: usize) -> usize {
        let (g, j) = (b / GROUP, b % GROUP);
        self.group_at(t, g, rr) + ((i / 4) * self.width(g) + j) * 4 + i % 4
    }

    /// Offset in `e` of the exponent of block `b` of row `rr` of tile `t`.
    fn scale_at(&self, t: usize, rr: usize, b: usize) -> usize {
        self.scales_at(t, b / GROUP, rr) + b % GROUP
    }

    /// Offset in `e` of the first exponent of group `g` of row `rr` of tile `t`: whole groups
    /// before it, then the group's earlier rows.
    fn scales_at(&self, t: usize, g: usize, rr: usize) -> usize {
        t * ROWS * self.kb() + g * ROWS * GROUP + rr * self.width(g)
    }

    /// The 4-bit code of value `v` (0..32) of block `b` of row `rr` of tile `t`.
    fn code(&self, t: usize, rr: usize, b: usize, v: usize) -> usize {
        let byte = self.qs[self.byte_at(t, rr, b, v % 16)];
        (if v >= 16 { byte >> 4 } else { byte & 0x0F }) as usize
    }

    /// Dequantized row `r`, as ggml's `dequantize_row_mxfp4`: `kvalue · 2^(e − 128)` (the
    /// tests' view of the repacked layout; the decoder never looks rows up).
    #[cfg(test)]
    pub fn row(&self, r: usize) -> Vec<f32> {
        let (t, rr) = (r / ROWS, r % ROWS);
        let mut out = Vec::with_capacity(self.k);
        for b in 0..self.kb() {
            let d = scale_of(self.e[self.scale_at(t, rr, b)]);
            out.extend((0..BLOCK).map(|v| KVALUES[self.code(t, rr, b, v)] as f32 * d));
        }
        out
    }
}

/// The kernel variant this CPU runs, if any; without one the scalar reference runs (candle has
/// no MXFP4 to fall back on).
pub fn kernel() -> Option<Kernel> {
    super::simd::kernel()
}

/// `x @ wᵀ` for every matrix in `ws` (all with `k` columns): one row-major `m × n` output per
/// matrix. `x` is `m` rows of `k` values.
pub fn matmul(ws: &[&MxMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    matmul_with(kernel(), ws, x, m)
}

/// One row `xs[j]` through each matrix `ws[j]` (all with the same row length), in one parallel
/// region: a decoded token's experts, whose inputs differ. Each result is bit-identical to
/// [`matmul`] of that row alone.
pub fn matmul_each(ws: &[&MxMatrix], xs: &[&[f32]]) -> Vec<Vec<f32>> {
    let kern = kernel();
    let Some(first) = ws.first() else {
        return Vec::new();
    };
    let k = first.k;
    assert!(
        ws.len() == xs.len() && ws.iter().all(|w| w.k == k) && xs.iter().all(|x| x.len() == k),
        "matmul_each: shape mismatch"
    );
    let acts: Vec<QuantRows> = xs.iter().map(|x| QuantRows::new(x, 1, k)).collect();
    let ns: Vec<usize> = ws.iter().map(|w| w.n).collect();
    let tile = |j: usize, t: usize, out: *mut f32| {
        // SAFETY: as in `matmul_with`: one call per tile of each matrix, into that matrix's
        // `1 × n` output; the CPU runs `kern`.
        unsafe { tile_all_acts(kern, ws[j], t, &acts[j], out) }
    };
    // SAFETY: `tile_all_acts` writes every value of its tile, for every activation row.
    unsafe { super::pool::tiled(&ns, 1, k, ROWS, tile) }
}

/// [`matmul`] on a chosen kernel (`None`: the scalar reference). The caller guarantees the CPU
/// runs it, as [`kernel`] does.
fn matmul_with(kern: Option<Kernel>, ws: &[&MxMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let Some(first) = ws.first() else {
        return Vec::new();
    };
    let k = first.k;
    assert!(
        ws.iter().all(|w| w.k == k) && x.len() == m * k,
        "MXFP4 matmul: shape mismatch"
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
    w: &MxMatrix,
    t: usize,
    a: &QuantRows,
    out: *mut f32,
) {
    // AVX2 has 16 vector registers: 8 looked-up weight vectors and 2 × 2 accumulators fit.
    let most = match kern {
        Some(Kernel::Avx2 | Kernel::AvxVnni | Kernel::Vnni256) => 2,
        _ => ACTS,
    };
    let mut i0 = 0;
    while i0 < a.m {
        let acts = (a.m - i0).min(most);
        let mut res = [[0f32; ACTS]; ROWS];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked the CPU features of `kern`.
        unsafe {
            match kern {
                Some(Kernel::Avx512) => avx512::tile(w, t, a, i0, acts, &mut res),
                Some(Kernel::Avx2) => avx2::tile(w, t, a, i0, acts, &mut res),
                Some(Kernel::AvxVnni) => avx2::tile_avxvnni(w, t, a, i0, acts, &mut res),
                Some(Kernel::Vnni256) => avx2::tile_vnni256(w, t, a, i0, acts, &mut res),
                None => tile_scalar(w, t, a, i0, acts, &mut res),
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

/// Reference kernel: the lanes of the module docs, one value at a time.
fn tile_scalar(
    w: &MxMatrix,
    t: usize,
    a: &QuantRows,
    i0: usize,
    acts: usize,
    res: &mut [[f32; ACTS]; ROWS],
) {
    let kb = w.kb();
    for (rr, row) in res.iter_mut().enumerate() {
        for (i, v) in row[..acts].iter_mut().enumerate() {
            let ai = i0 + i;
            let mut lanes = [0f32; 16];
            // Padding blocks of a partial group add fma(0, 0, lane) as the vector code does.
            for b in 0..groups(kb) * GROUP {
                let mut dot = 0i32;
                if b < kb {
                    for val in 0..BLOCK {
                        let av = a.qs[ai * a.kp + QuantRows::at(b, val)] as i32;
                        dot += KVALUES[w.code(t, rr, b, val)] as i32 * av;
                    }
                }
                // Lanes past a partial group's blocks see exponent 0, as the kernels load them.
                let e = if b < kb { w.e[w.scale_at(t, rr, b)] } else { 0 };
                let dw = scale_of(e);
                let lane = &mut lanes[b % GROUP];
                *lane = (dot as f32).mul_add(dw * a.d[ai * a.sp + b], *lane);
            }
            *v = hsum16(&lanes);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{groups, MxMatrix, QuantRows, ACTS, ACT_GROUP, GROUP, ROWS, TABLE};
    use std::arch::x86_64::*;

    /// The last three levels of `hsum16`'s tree on its first level's 8 sums.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn hsum8(t8: __m256) -> f32 {
        let t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
        let t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
        _mm_cvtss_f32(_mm_add_ss(t2, _mm_shuffle_ps(t2, t2, 1)))
    }

    /// The exponent bytes of `lanes` from `p` as their scales `2^(e − 128)`
    /// ([`super::scale_of`]); the other lanes' exponents are 0 (a partial group's are stored
    /// unpadded, and memory past them is not touched).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn scales(p: *const u8, lanes: __mmask16) -> __m512 {
        let e = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(lanes, p as *const _));
        let normal = _mm512_slli_epi32(_mm512_sub_epi32(e, _mm512_set1_epi32(1)), 23);
        let sub = _mm512_sllv_epi32(_mm512_set1_epi32(0x0020_0000), e);
        let small = _mm512_cmplt_epu32_mask(e, _mm512_set1_epi32(2));
        _mm512_castsi512_ps(_mm512_mask_blend_epi32(small, normal, sub))
    }

    /// Runs the tile for `acts` activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL and VNNI; `t` must be a tile of `w` and `i0 + acts`
    /// rows of `a` must exist.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
    pub(super) unsafe fn tile(
        w: &MxMatrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        acts: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        match acts {
            4 => tile_impl::<4>(w, t, a, i0, res),
            3 => tile_impl::<3>(w, t, a, i0, res),
            2 => tile_impl::<2>(w, t, a, i0, res),
            _ => tile_impl::<1>(w, t, a, i0, res),
        }
    }

    /// Weight tile `t` (4 rows) times `M` activation rows from `i0`. Per group and row: 4 loads
    /// split into 8 nibble vectors and looked up; per group and (row, act): 8 `vpdpbusd` in two
    /// chains from `−12 · Σa`, one convert, one multiply of the scales and one FMA.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
    #[inline]
    unsafe fn tile_impl<const M: usize>(
        w: &MxMatrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        let ng = groups(w.kb());
        let m4 = _mm512_set1_epi8(0x0F);
        let table = _mm512_broadcast_i32x4(_mm_loadu_si128(TABLE.as_ptr() as *const __m128i));
        let mut acc = [[_mm512_setzero_ps(); M]; ROWS];
        for g in 0..ng {
            let width = w.width(g);
            let lanes: __mmask16 = if width == GROUP {
                0xFFFF
            } else {
                (1u16 << width) - 1
            };
            for (rr, row) in acc.iter_mut().enumerate() {
                let base = w.qs.as_ptr().add(w.group_at(t, g, rr));
                let mut lo = [_mm512_setzero_si512(); 4];
                let mut hi = [_mm512_setzero_si512(); 4];
                for u in 0..4 {
                    // Lanes past a partial group's blocks read as zeros (code 0, looked up as
                    // 12, against zero activations and a zero start).
                    let raw = _mm512_maskz_loadu_epi32(lanes, base.add(u * width * 4) as *const _);
                    lo[u] = _mm512_shuffle_epi8(table, _mm512_and_si512(raw, m4));
                    hi[u] =
                        _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4));
                }
                let dw = scales(w.e.as_ptr().add(w.scales_at(t, g, rr)), lanes);
                for (i, v) in row.iter_mut().enumerate() {
                    let ai = i0 + i;
                    let ap = a.qs.as_ptr().add(ai * a.kp + g * ACT_GROUP);
                    let sc = a.sp * ai + g * GROUP;
                    // −8·Σa + (−8·Σa) / 2 = −12·Σa (−8·Σa is even: exact).
                    let o = _mm512_loadu_si512(a.off8.as_ptr().add(sc) as *const __m512i);
                    let mut d0 = _mm512_add_epi32(o, _mm512_srai_epi32(o, 1));
                    let mut d1 = _mm512_setzero_si512();
                    for u in 0..4 {
                        let alo = _mm512_loadu_si512(ap.add(64 * u) as *const __m512i);
                        let ahi = _mm512_loadu_si512(ap.add(64 * (4 + u)) as *const __m512i);
                        d0 = _mm512_dpbusd_epi32(d0, lo[u], alo);
                        d1 = _mm512_dpbusd_epi32(d1, hi[u], ahi);
                    }
                    let dot = _mm512_cvtepi32_ps(_mm512_add_epi32(d0, d1));
                    let s = _mm512_mul_ps(dw, _mm512_loadu_ps(a.d.as_ptr().add(sc)));
                    *v = _mm512_fmadd_ps(dot, s, *v);
                }
            }
        }
        for rr in 0..ROWS {
            for i in 0..M {
                let v = acc[rr][i];
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
                res[rr][i] = hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), hi));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{groups, MxMatrix, QuantRows, ACTS, ACT_GROUP, GROUP, ROWS, TABLE};
    use crate::engine::simd::dot256::{Avx2, AvxVnni, Dot256, Evex};
    use std::arch::x86_64::*;

    /// The last three levels of `hsum16`'s tree on its first level's 8 sums.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn hsum8(t8: __m256) -> f32 {
        let t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
        let t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
        _mm_cvtss_f32(_mm_add_ss(t2, _mm_shuffle_ps(t2, t2, 1)))
    }

    /// The first `valid` of 8 exponent bytes from `p` as their scales `2^(e − 128)`
    /// ([`super::scale_of`]); the other lanes' exponents are 0 (a partial group's are stored
    /// unpadded: what the 8-byte read finds past them, the next row's or the slack, is cleared).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn scales(p: *const u8, valid: i32) -> __m256 {
        let keep = _mm_cmpgt_epi8(
            _mm_set1_epi8(valid as i8),
            _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        );
        let bytes = _mm_and_si128(_mm_loadl_epi64(p as *const __m128i), keep);
        let e = _mm256_cvtepu8_epi32(bytes);
        let normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
        let sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x0020_0000), e);
        let small = _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e);
        _mm256_castsi256_ps(_mm256_blendv_epi8(normal, sub, small))
    }

    /// Runs the tile for `acts` (1 or 2) activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `t` must be a tile of `w` and `i0 + acts` rows of `a`
    /// must exist.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(
        w: &MxMatrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        acts: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        tile_with::<Avx2>(w, t, a, i0, acts, res)
    }

    /// [`tile`] with AVX-VNNI's `vpdpbusd`.
    ///
    /// # Safety
    /// As [`tile`], and the CPU must have AVX-VNNI.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub(super) unsafe fn tile_avxvnni(
        w: &MxMatrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        acts: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        tile_with::<AvxVnni>(w, t, a, i0, acts, res)
    }

    /// [`tile`] with the EVEX `vpdpbusd` on ymm registers (`simd::Kernel::Vnni256`).
    ///
    /// # Safety
    /// As [`tile`], and the CPU must have AVX-512 VNNI and VL.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_vnni256(
        w: &MxMatrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        acts: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        tile_with::<Evex>(w, t, a, i0, acts, res)
    }

    /// The tile for `acts` rows, inlined into each variant's features.
    #[inline(always)]
    unsafe fn tile_with<D: Dot256>(
        w: &MxMatrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        acts: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        match acts {
            2 => tile_impl::<D, 2>(w, t, a, i0, res),
            _ => tile_impl::<D, 1>(w, t, a, i0, res),
        }
    }

    /// Weight tile `t` times `M` activation rows, each group as two halves of 8 blocks (lanes
    /// 0–7 and 8–15 of the AVX-512 variant), so each lane sees the same operations in the same
    /// order. The integer dot products are `D`'s: `vpdpbusd`, or `vpmaddubsw` (the two vectors'
    /// pairs stay below 2 · 2 · 24 · 128: no saturation) and `vpmaddwd` by ones.
    #[inline(always)]
    unsafe fn tile_impl<D: Dot256, const M: usize>(
        w: &MxMatrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        let ng = groups(w.kb());
        let m4 = _mm256_set1_epi8(0x0F);
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(TABLE.as_ptr() as *const __m128i));
        let mut acc = [[[_mm256_setzero_ps(); 2]; M]; ROWS];
        for g in 0..ng {
            let width = w.width(g);
            for h in 0..2 {
                if 8 * h >= width {
                    continue;
                }
                let valid = (width - 8 * h).min(8) as i32;
                let lanes = _mm256_cmpgt_epi32(
                    _mm256_set1_epi32(valid),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                );
                for (rr, row) in acc.iter_mut().enumerate() {
                    let base = w.qs.as_ptr().add(w.group_at(t, g, rr) + 32 * h);
                    let mut lo = [_mm256_setzero_si256(); 4];
                    let mut hi = [_mm256_setzero_si256(); 4];
                    for u in 0..4 {
                        let raw =
                            _mm256_maskload_epi32(base.add(u * width * 4) as *const i32, lanes);
                        lo[u] = _mm256_shuffle_epi8(table, _mm256_and_si256(raw, m4));
                        hi[u] = _mm256_shuffle_epi8(
                            table,
                            _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4),
                        );
                    }
                    let dw = scales(w.e.as_ptr().add(w.scales_at(t, g, rr) + 8 * h), valid);
                    for (i, v) in row.iter_mut().enumerate() {
                        let ai = i0 + i;
                        let ap = a.qs.as_ptr().add(ai * a.kp + g * ACT_GROUP + 32 * h);
                        let sc = a.sp * ai + g * GROUP + 8 * h;
                        let o = _mm256_loadu_si256(a.off8.as_ptr().add(sc) as *const __m256i);
                        let start = _mm256_add_epi32(o, _mm256_srai_epi32(o, 1));
                        let mut dot = [start, _mm256_setzero_si256()];
                        for u in 0..4 {
                            let alo = _mm256_loadu_si256(ap.add(64 * u) as *const __m256i);
                            let ahi = _mm256_loadu_si256(ap.add(64 * (4 + u)) as *const __m256i);
                            D::dot2(&mut dot, lo[u], alo, hi[u], ahi);
                        }
                        let dot = _mm256_add_epi32(dot[0], dot[1]);
                        let s = _mm256_mul_ps(dw, _mm256_loadu_ps(a.d.as_ptr().add(sc)));
                        v[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, v[h]);
                    }
                }
            }
        }
        for rr in 0..ROWS {
            for i in 0..M {
                res[rr][i] = hsum8(_mm256_add_ps(acc[rr][i][0], acc[rr][i][1]));
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

    /// `matmul_each` gives each matrix's row exactly what `matmul` gives that row alone.
    #[test]
    fn matmul_each_matches_one_matmul_per_row() {
        let k = 96;
        let ws: Vec<MxMatrix> = (0..3)
            .map(|j| {
                let n = 9 + 4 * j;
                MxMatrix::from_gguf_bytes(&random_gguf(n, k, 70 + j as u64), n, k).unwrap()
            })
            .collect();
        let xs: Vec<Vec<f32>> = (0..ws.len())
            .map(|j| {
                (0..k)
                    .map(|i| ((i * 5 + j * 11) as f32 * 0.29).cos())
                    .collect()
            })
            .collect();
        let refs: Vec<&MxMatrix> = ws.iter().collect();
        let rows: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
        let each = matmul_each(&refs, &rows);
        for (j, w) in ws.iter().enumerate() {
            assert_eq!(each[j], matmul(&[w], &xs[j], 1)[0], "matrix {j}");
        }
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

    /// Random MXFP4 bytes for an `n × k` matrix: every code random, exponents around those of
    /// real weights (2^-10..2^-2), and now and then one of the subnormal exponents 0 and 1.
    fn random_gguf(n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed);
        let mut out = Vec::new();
        for _ in 0..n * k / BLOCK {
            let e = match rng.next() % 50 {
                0 => 0,
                1 => 1,
                r => 118 + (r % 9) as u8,
            };
            out.push(e);
            out.extend((0..16).map(|_| rng.next() as u8));
        }
        out
    }

    /// Dequantizes GGUF bytes straight from the block format (ggml's `dequantize_row_mxfp4`),
    /// independently of the repacked layout.
    fn dequant_gguf(data: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        for blk in data.chunks_exact(BLOCK_BYTES) {
            let d = scale_of(blk[0]);
            let mut y = [0f32; BLOCK];
            for j in 0..16 {
                y[j] = KVALUES[(blk[1 + j] & 0x0F) as usize] as f32 * d;
                y[j + 16] = KVALUES[(blk[1 + j] >> 4) as usize] as f32 * d;
            }
            out.extend(y);
        }
        out
    }

    fn random_acts(m: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng(seed);
        (0..m * k)
            .map(|i| ((rng.next() % 2001) as f32 / 1000.0 - 1.0) * (1.0 + (i % 7) as f32))
            .collect()
    }

    /// The exact product (f64) of the dequantized weights with the quantized activations.
    fn reference(w: &[f32], a: &QuantRows, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; a.m * n];
        for i in 0..a.m {
            for r in 0..n {
                let mut s = 0f64;
                for c in 0..k {
                    let q = a.qs[i * a.kp + QuantRows::at(c / BLOCK, c % BLOCK)];
                    let av = q as f64 * a.d[i * a.sp + c / BLOCK] as f64;
                    s += w[r * k + c] as f64 * av;
                }
                out[i * n + r] = s as f32;
            }
        }
        out
    }

    fn check(n: usize, k: usize, m: usize) {
        let bytes = random_gguf(n, k, (n * 31 + k * 7 + m) as u64);
        let vals = dequant_gguf(&bytes);
        let w = MxMatrix::from_gguf_bytes(&bytes, n, k).unwrap();
        let x = random_acts(m, k, (n + m) as u64);
        let want = reference(&vals, &QuantRows::new(&x, m, k), n, k);
        let scalar = matmul_with(None, &[&w], &x, m).remove(0);
        for kern in kernels() {
            let what = format!("{kern:?} n={n} k={k} m={m}");
            let got = matmul_with(kern, &[&w], &x, m).remove(0);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                scalar.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{what}: differs from the scalar reference"
            );
            for i in 0..m {
                for r in 0..n {
                    let mag: f32 = (0..k).map(|c| (vals[r * k + c] * x[i * k + c]).abs()).sum();
                    let (g, e) = (got[i * n + r], want[i * n + r]);
                    let tol = 1e-5 * mag + 1e-6;
                    assert!(
                        (g - e).abs() <= tol,
                        "{what}: ({i}, {r}) is {g}, expected {e} (tolerance {tol})"
                    );
                }
            }
        }
    }

    #[test]
    fn scales_are_ggml_s_e8m0_halves() {
        assert_eq!(scale_of(128), 1.0);
        assert_eq!(scale_of(127), 0.5);
        assert_eq!(scale_of(130), 4.0);
        assert_eq!(scale_of(2), 2f32.powi(-126));
        assert_eq!(scale_of(1), 2f32.powi(-127));
        assert_eq!(scale_of(0), 2f32.powi(-128));
    }

    #[test]
    fn rows_dequantize_like_ggml() {
        for &(n, k) in &[(5, 64), (6, 96), (3, 2880), (4, 160)] {
            let bytes = random_gguf(n, k, 3);
            let ours = dequant_gguf(&bytes);
            let w = MxMatrix::from_gguf_bytes(&bytes, n, k).unwrap();
            for r in 0..n {
                assert_eq!(w.row(r), ours[r * k..(r + 1) * k], "{n}×{k} row {r}");
            }
        }
    }

    /// No growth beyond the documented padding: the repacked matrix is the GGUF data's size
    /// plus zero rows up to a multiple of 4 and the slack (a partial group's exponents are not
    /// padded to 16).
    #[test]
    fn repacked_size_is_the_gguf_size_plus_row_padding() {
        for &(n, k) in &[(8, 576), (7, 2880), (4, 512), (5, 32)] {
            let bytes = random_gguf(n, k, 11);
            let w = MxMatrix::from_gguf_bytes(&bytes, n, k).unwrap();
            let pad = (n.next_multiple_of(ROWS) - n) * (k / BLOCK) * BLOCK_BYTES + SLACK;
            assert_eq!(w.qs.len() + w.e.len(), bytes.len() + pad, "n={n} k={k}");
        }
    }

    #[test]
    fn matches_reference_for_odd_shapes() {
        // Blocks per row 1, 3, 5, 18, 48, 64, 31 and 9 (partial groups of every AVX2 half
        // split), gpt-oss's 2880 (90 blocks: 5 groups and 10); rows not a multiple of 4; 1 to
        // 9 activation rows cover every tile width and remainder.
        for &(n, k, m) in &[
            (4, 32, 1),
            (7, 96, 2),
            (9, 160, 3),
            (5, 576, 5),
            (16, 576, 4),
            (6, 1536, 9),
            (13, 2048, 1),
            (5, 2880, 3),
            (5, 32 * 31, 3),
            (4, 32 * 9, 4),
        ] {
            check(n, k, m);
        }
    }

    #[test]
    fn large_products_run_in_parallel_and_agree() {
        check(300, 576, 6);
        check(258, 1536, 1);
    }

    /// Row `i` of a call with `m` rows is bit-identical to a call with row `i` alone, on every
    /// variant: a sequence's tokens cannot depend on what it is batched with.
    #[test]
    fn rows_do_not_depend_on_the_other_rows() {
        let (n, k) = (37, 576);
        let x = random_acts(9, k, 21);
        let bytes = random_gguf(n, k, 20);
        let w = MxMatrix::from_gguf_bytes(&bytes, n, k).unwrap();
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

    #[test]
    fn fused_matrices_match_separate_calls() {
        let (k, m) = (576, 5);
        let ws: Vec<MxMatrix> = (0..3)
            .map(|j| {
                let n = 20 + 3 * j;
                MxMatrix::from_gguf_bytes(&random_gguf(n, k, j as u64), n, k).unwrap()
            })
            .collect();
        let refs: Vec<&MxMatrix> = ws.iter().collect();
        let x = random_acts(m, k, 4);
        for kern in kernels() {
            let all = matmul_with(kern, &refs, &x, m);
            for (j, w) in ws.iter().enumerate() {
                assert_eq!(all[j], matmul_with(kern, &[w], &x, m)[0], "{kern:?} {j}");
            }
        }
    }

    /// Against an f32 matmul on the dequantized weights: the only difference is the 8-bit
    /// activations, whose rounding error is at most half a step, `amax / 254` of each block.
    #[test]
    fn matches_f32_within_activation_rounding() {
        let (n, k, m) = (24, 576, 3);
        let bytes = random_gguf(n, k, 11);
        let wv = dequant_gguf(&bytes);
        let x = random_acts(m, k, 12);
        let w = MxMatrix::from_gguf_bytes(&bytes, n, k).unwrap();
        for kern in kernels() {
            let got = &matmul_with(kern, &[&w], &x, m)[0];
            for i in 0..m {
                for r in 0..n {
                    let want: f32 = (0..k).map(|c| wv[r * k + c] * x[i * k + c]).sum();
                    let bound: f32 = (0..k)
                        .map(|c| {
                            let blk = &x[i * k + c / BLOCK * BLOCK..][..BLOCK];
                            let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                            wv[r * k + c].abs() * amax / 254.0
                        })
                        .sum::<f32>()
                        * 1.01
                        + 1e-5;
                    let g = got[i * n + r];
                    assert!(
                        (g - want).abs() <= bound,
                        "{kern:?} ({i}, {r}): {g} vs f32 {want}, bound {bound}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        let bytes = random_gguf(2, 64, 1);
        assert!(MxMatrix::from_gguf_bytes(&bytes, 2, 64).is_ok());
        assert!(MxMatrix::from_gguf_bytes(&bytes, 1, 128).is_ok());
        assert!(MxMatrix::from_gguf_bytes(&bytes[1..], 2, 64).is_err());
        assert!(MxMatrix::from_gguf_bytes(&bytes, 4, 16).is_err());
        assert!(MxMatrix::from_gguf_bytes(&bytes, 2, 60).is_err());
    }
}
