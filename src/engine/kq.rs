//! Q4_K, Q5_K and Q6_K matrix multiplication with AVX-512 VNNI, AVX-VNNI and AVX2 variants.
//!
//! A Q4_K_M file is Q4_K and Q6_K matrices (Q5_K_M files add Q5_K). candle 0.11 keeps each of
//! them twice (its GGUF blocks and a repacked copy with f32 scales, larger than the file's): peak
//! memory on a 1.5B model was twice the file. Here, as in `q8.rs` and `legacy.rs`:
//! - weights are repacked at load into tiles of 16 rows whose 256-value blocks are interleaved
//!   (block 0 of rows 0..16, then block 1 …), so a matrix is one sequential stream, and the GGUF
//!   copy is dropped: the repacked form is the same size as the file's;
//! - **one weight row per 32-bit lane.** Every section of a GGUF block (nibbles, fifth or high
//!   bits, packed scales) is cut into 4-byte words, and word `g` of the tile's 16 rows is one
//!   64-byte vector, row `r` in lane `r`. A 4-value group of activations broadcast to all lanes
//!   then meets 16 rows at once: `vpdpbusd` with an embedded broadcast (AVX-512), the 256-bit
//!   `vpdpbusd` (AVX-VNNI, 8 rows at a time) or `vpmaddubsw` (AVX2) leaves each row's sums in its own lane, so no horizontal sums are
//!   needed, and scales, minimums and the float step apply to 16 rows per instruction. (The first
//!   version kept one row's values across a vector and summed lanes per row and block: its prompt
//!   path ran at 0.4-0.5x candle's and spilled its 4 × 4 register tile.) Because the layout is
//!   GGUF's words moved, not re-encoded, repacking is a word scatter;
//! - activations are quantized once per call to 8 bits in 256-value blocks with their sums per
//!   16 and 32 values (ggml's Q8_K), so each block's dot product is exact in integers; Q4_K/Q5_K
//!   minimums and Q6_K's −32 offset meet the activation sums instead of every value;
//! - tiles of 16 weight rows × up to 4 activation rows read each weight once per 4 prompt rows,
//!   and several matrices sharing an input (q/k/v, gate/up) run in one parallel region on one
//!   quantization of it, even when they mix the three types.
//!
//! **Numerics.** Each block's dot product (and minimum term) is an exact integer in every
//! variant, and every variant turns it into a float with one expression ([`block_sum`],
//! [`block_sum6`]) added in block order, so the AVX-512, AVX-VNNI, AVX2 and scalar kernels give
//! bit-identical results and an activation row's result never depends on the other rows of the
//! call (the batching engine relies on both). The expression is the one the earlier 4-row
//! kernels used, so outputs did not change with the new layout.
//!
//! The variant comes from `simd::kernel`; without one (or off x86-64) the engine keeps candle's
//! kernels. `INFLUENCE_KQUANT=0` also keeps candle's for these three types (for comparisons).

use half::f16;

use super::simd::Kernel;

/// Values per K-quant super-block.
pub const QK: usize = 256;
/// Weight rows per tile: one per 32-bit lane of a 512-bit vector.
const ROWS: usize = 16;
/// Most activation rows per tile call (the 256-bit variants'; the AVX-512 one takes 4).
const ACTS: usize = 8;

/// The K-quant types these kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KType {
    Q4K,
    Q5K,
    Q6K,
}

/// The parts of a GGUF block made of 4-byte words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Packed scales (and minimums).
    Scales,
    /// 4-bit values (Q6_K: their low 4 bits).
    Nibbles,
    /// Q5_K's fifth bits, Q6_K's high bit pairs.
    High,
}

/// A GGUF block's layout: its parts as (part, start, 32-bit words), the offset of the f16 `d`,
/// and of `dmin` where the type has one.
type GgufParts = (&'static [(Part, usize, usize)], usize, Option<usize>);

impl KType {
    /// Bytes of one GGUF block of 256 values.
    const fn block_bytes(self) -> usize {
        match self {
            KType::Q4K => 144,
            KType::Q5K => 176,
            KType::Q6K => 210,
        }
    }

    /// Bytes of one block of a 16-row tile.
    const fn tile_block_bytes(self) -> usize {
        ROWS * self.block_bytes()
    }

    /// The GGUF block's parts as (part, start in the GGUF block, words), and where its f16
    /// scales are (d, dmin).
    fn gguf_parts(self) -> GgufParts {
        use Part::*;
        match self {
            // d, dmin, 12 bytes of scales, 128 of nibbles.
            KType::Q4K => (&[(Scales, 4, 3), (Nibbles, 16, 32)], 0, Some(2)),
            // d, dmin, 12 bytes of scales, 32 of fifth bits, 128 of nibbles.
            KType::Q5K => (
                &[(Scales, 4, 3), (High, 16, 8), (Nibbles, 48, 32)],
                0,
                Some(2),
            ),
            // 128 bytes of low nibbles, 64 of high bit pairs, 16 of scales, d.
            KType::Q6K => (
                &[(Nibbles, 0, 32), (High, 128, 16), (Scales, 192, 4)],
                208,
                None,
            ),
        }
    }

    /// The 64-byte line of a tile block that holds word `g` of `part` for the tile's 16 rows.
    ///
    /// Lines are in the order the kernels read them, so a tile block is read front to back and
    /// the hardware prefetcher keeps up: with Q6_K's high bits in a region of their own, decode
    /// read a 182 MB Q6_K matrix at half the speed of the same kernel in this order. Scales come
    /// first; Q5_K's fifth-bit lines sit beside the first 8 nibble lines (the first pass over
    /// the sub-block pairs reads both, the others find the fifth bits in L1); Q6_K goes in
    /// triples (low nibbles `c` and `c + 8` of a 128-value half, then their high bits); the f16
    /// scales close the block.
    const fn line(self, part: Part, g: usize) -> usize {
        match (self, part) {
            (_, Part::Scales) => g,
            (KType::Q4K, _) => 3 + g,
            (KType::Q5K, Part::Nibbles) if g < 8 => 3 + 2 * g,
            (KType::Q5K, Part::Nibbles) => 11 + g,
            (KType::Q5K, Part::High) => 4 + 2 * g,
            (KType::Q6K, Part::Nibbles) => 4 + 24 * (g / 16) + 3 * (g % 8) + (g % 16) / 8,
            (KType::Q6K, Part::High) => 4 + 24 * (g / 8) + 3 * (g % 8) + 2,
        }
    }

    /// Byte offset in a tile block of the first byte of word `g` of `part` (row 0).
    const fn at(self, part: Part, g: usize) -> usize {
        64 * self.line(part, g)
    }

    /// Byte offset of the 16 rows' f16 `d` in a tile block (their `dmin` follow, Q4_K/Q5_K).
    const fn d_at(self) -> usize {
        match self {
            KType::Q4K => 64 * 35,
            KType::Q5K => 64 * 43,
            KType::Q6K => 64 * 52,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KType::Q4K => "Q4_K",
            KType::Q5K => "Q5_K",
            KType::Q6K => "Q6_K",
        }
    }
}

/// An `n × k` Q4_K, Q5_K or Q6_K weight matrix (rows are output features), repacked for the
/// kernels: tiles of 16 rows, block by block, each block's GGUF words row-interleaved (module
/// docs). The row count is padded to a multiple of 16 with zero rows.
///
/// What a word holds, by the GGUF formats:
/// - Q4_K/Q5_K nibble word `g = 8 p + c` (p, c < 4, 8): byte `b` holds value `64 p + 4 c + b`
///   in its low nibble (sub-block `2 p`) and `64 p + 32 + 4 c + b` in its high one (`2 p + 1`);
///   Q5_K fifth-bit word `c`: bit `s` of byte `b` is the fifth bit of value `32 s + 4 c + b`;
/// - Q6_K low-nibble word `g = 16 h + c` (h, c < 2, 16): byte `b` holds value `128 h + 4 c + b`
///   low and `128 h + 64 + 4 c + b` high; high-bit word `8 h + c'` (c' < 8): bit pairs 0, 1, 2,
///   3 of byte `b` belong to values `128 h + 4 c' + b` plus 0, 32, 64, 96.
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
        let (parts, d_at, dmin_at) = ty.gguf_parts();
        let mut out = vec![0u8; tiles * nb * tb];
        // Tiles in parallel: a 1.5B model's matrices took about a second on one thread.
        super::pool::for_each_chunk_mut(&mut out, nb * tb, |t, tile| {
            let rows = data.chunks_exact(nb * bb).skip(t * ROWS).take(ROWS);
            for (rr, row) in rows.enumerate() {
                for (blk, dst) in row.chunks_exact(bb).zip(tile.chunks_exact_mut(tb)) {
                    for &(part, from, words) in parts {
                        for g in 0..words {
                            dst[ty.at(part, g) + 4 * rr..][..4]
                                .copy_from_slice(&blk[from + 4 * g..][..4]);
                        }
                    }
                    dst[ty.d_at() + 2 * rr..][..2].copy_from_slice(&blk[d_at..d_at + 2]);
                    if let Some(at) = dmin_at {
                        dst[ty.d_at() + 32 + 2 * rr..][..2].copy_from_slice(&blk[at..at + 2]);
                    }
                }
            }
        });
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

    /// Byte `i` (0..4) of word `g` of `part` of row `rr` in a tile block.
    fn word_byte(ty: KType, tb: &[u8], part: Part, g: usize, rr: usize, i: usize) -> u8 {
        tb[ty.at(part, g) + 4 * rr + i]
    }

    /// The quantized value `v` (0..256) of row `rr` in a tile block, and its integer
    /// (scale, minimum) such that the weight is `d · scale · q − dmin · minimum` (Q4_K, Q5_K) or
    /// `d · scale · (q − 32)` (Q6_K, minimum unused).
    fn value(ty: KType, tb: &[u8], rr: usize, v: usize) -> (i32, i32, i32) {
        let byte = |part, g, i| Self::word_byte(ty, tb, part, g, rr, i);
        match ty {
            KType::Q4K | KType::Q5K => {
                let (p, x) = (v / 64, v % 64);
                let l = x % 32;
                let nib = byte(Part::Nibbles, 8 * p + l / 4, l % 4);
                let mut q = if x < 32 { nib & 0x0F } else { nib >> 4 };
                if ty == KType::Q5K {
                    q |= ((byte(Part::High, l / 4, l % 4) >> (v / 32)) & 1) << 4;
                }
                let packed: [u8; 12] = std::array::from_fn(|i| byte(Part::Scales, i / 4, i % 4));
                let (sc, mn) = scale_min_k4(v / 32, &packed);
                (q as i32, sc as i32, mn as i32)
            }
            KType::Q6K => {
                let (h, y) = (v / 128, v % 128);
                let (high, c, b) = (y >= 64, (y % 64) / 4, y % 4);
                let nib = byte(Part::Nibbles, 16 * h + c, b);
                let lo = if high { nib >> 4 } else { nib & 0x0F };
                let pair = (c / 8) + 2 * high as usize;
                let hi = (byte(Part::High, 8 * h + c % 8, b) >> (2 * pair)) & 3;
                let j = v / 16;
                let sc = byte(Part::Scales, j / 4, j % 4) as i8;
                ((lo | (hi << 4)) as i32, sc as i32, 0)
            }
        }
    }

    /// The f32 scales (d, dmin) of row `rr` in a tile block.
    fn scales(ty: KType, tb: &[u8], rr: usize) -> (f32, f32) {
        let f = |at: usize| f16::from_le_bytes([tb[at], tb[at + 1]]).to_f32();
        match ty {
            KType::Q4K | KType::Q5K => (f(ty.d_at() + 2 * rr), f(ty.d_at() + 32 + 2 * rr)),
            KType::Q6K => (f(ty.d_at() + 2 * rr), 0.0),
        }
    }

    /// Dequantized row `r` (token-embedding lookups), as ggml dequantizes.
    pub fn row(&self, r: usize) -> Vec<f32> {
        let (t, rr) = (r / ROWS, r % ROWS);
        let mut out = Vec::with_capacity(self.k);
        for b in 0..self.k / QK {
            let tb = self.tile_block(t, b);
            let (d, dmin) = Self::scales(self.ty, tb, rr);
            for v in 0..QK {
                let (q, sc, mn) = Self::value(self.ty, tb, rr, v);
                out.push(match self.ty {
                    KType::Q4K | KType::Q5K => d * sc as f32 * q as f32 - dmin * mn as f32,
                    KType::Q6K => d * (sc * (q - 32)) as f32,
                });
            }
        }
        out
    }
}

/// Activation rows quantized to 8 bits per 256-value block (ggml's Q8_K), with the sums the
/// weights' minimums and offsets meet, packed as pairs of i16 in 32-bit words so one
/// `vpdpwssd` / `vpmaddwd` against a broadcast word covers two sub-blocks of 16 rows.
pub struct QuantRowsK {
    m: usize,
    k: usize,
    qs: Vec<i8>,
    /// Block scales.
    d: Vec<f32>,
    /// 4 words per block for Q4_K/Q5_K minimums: the sums of 32 values `s` as
    /// (s0, s2), (s1, s3), (s4, s6), (s5, s7), the pairing the packed minimums unpack to.
    w4: Vec<i32>,
    /// 8 words per block for Q6_K's −32 offset: the sums of 16 values `t` as (t0, t2), (t1, t3),
    /// (t4, t6), (t5, t7), … , the pairing of the scales' bytes in their words.
    w6: Vec<i32>,
}

/// Two i16 in one word: `lo` in the low half.
fn pair(lo: i32, hi: i32) -> i32 {
    (lo as i16 as u16 as u32 | ((hi as i16 as u16 as u32) << 16)) as i32
}

impl QuantRowsK {
    /// Quantizes `m` rows of `k` values (row-major `x`; `k` a multiple of 256), prompt rows on
    /// every thread (one row at a time it was ~8 % of a 2-thread prompt).
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        debug_assert_eq!(x.len(), m * k);
        debug_assert_eq!(k % QK, 0);
        let nb = k / QK;
        let mut qs = vec![0i8; m * k];
        let mut d = vec![0f32; m * nb];
        let mut w4 = vec![0i32; m * nb * 4];
        let mut w6 = vec![0i32; m * nb * 8];
        type Row<'a> = (&'a mut [i8], &'a mut [f32], &'a mut [i32], &'a mut [i32]);
        let rows: Vec<std::sync::Mutex<Row>> = qs
            .chunks_mut(k)
            .zip(d.chunks_mut(nb))
            .zip(w4.chunks_mut(4 * nb))
            .zip(w6.chunks_mut(8 * nb))
            .map(|(((q, d), w4), w6)| std::sync::Mutex::new((q, d, w4, w6)))
            .collect();
        let run = |range: std::ops::Range<usize>| {
            for i in range {
                // Each row is handed out once: the lock is never contended.
                let mut row = rows[i].lock().unwrap_or_else(|e| e.into_inner());
                let (q, d, w4, w6) = &mut *row;
                Self::quantize_row(&x[i * k..(i + 1) * k], q, d, w4, w6);
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
            k,
            qs,
            d,
            w4,
            w6,
        }
    }

    /// One row: its bytes, block scales and paired sums.
    fn quantize_row(x: &[f32], qs: &mut [i8], d: &mut [f32], w4: &mut [i32], w6: &mut [i32]) {
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
            let mut s16 = [0i32; 16];
            for (s, chunk) in s16.iter_mut().zip(dst.chunks_exact(16)) {
                *s = chunk.iter().map(|&v| v as i32).sum();
            }
            let s32: [i32; 8] = std::array::from_fn(|j| s16[2 * j] + s16[2 * j + 1]);
            for (q, w) in w4[blk * 4..][..4].iter_mut().enumerate() {
                // Words 0, 1 pair sub-blocks (0, 2), (1, 3); words 2, 3 the same from 4.
                let base = 4 * (q / 2) + q % 2;
                *w = pair(s32[base], s32[base + 2]);
            }
            for (q, w) in w6[blk * 8..][..8].iter_mut().enumerate() {
                let base = 4 * (q / 2) + q % 2;
                *w = pair(s16[base], s16[base + 2]);
            }
        }
    }

    /// The sum of activation row `i`'s values `from..from + len` (the scalar reference's own,
    /// independent of the packed words).
    fn sum(&self, i: usize, from: usize, len: usize) -> i32 {
        self.qs[i * self.k + from..][..len]
            .iter()
            .map(|&v| v as i32)
            .sum()
    }
}

/// The kernel variant this CPU runs (`simd::kernel`), if any.
pub fn kernel() -> Option<Kernel> {
    super::simd::kernel()
}

/// Whether the own K-quant kernels are turned off (`INFLUENCE_KQUANT=0`, for comparisons with
/// candle's: they are on by default wherever `simd::kernel` picks a variant).
fn turned_off() -> bool {
    use std::sync::OnceLock;
    static OFF: OnceLock<bool> = OnceLock::new();
    *OFF.get_or_init(|| {
        std::env::var("INFLUENCE_KQUANT").is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "0" | "off" | "false" | "candle"
            )
        })
    })
}

/// Whether a Q4_K, Q5_K or Q6_K matrix with rows of `k` values runs on these kernels here.
pub fn runs(k: usize) -> bool {
    !turned_off() && kernel().is_some() && k > 0 && k.is_multiple_of(QK)
}

/// `x @ wᵀ` for every matrix in `ws` (all with `k` columns): one row-major `m × n` output per
/// matrix. `x` is `m` rows of `k` values.
pub fn matmul(ws: &[&KMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    matmul_with(kernel(), ws, x, m)
}

/// One row `xs[j]` through each matrix `ws[j]` (all with the same row length), in one parallel
/// region: a decoded token's experts, whose inputs differ. Each result is bit-identical to
/// [`matmul`] of that row alone.
pub fn matmul_each(ws: &[&KMatrix], xs: &[&[f32]]) -> Vec<Vec<f32>> {
    let kern = kernel();
    let Some(first) = ws.first() else {
        return Vec::new();
    };
    let k = first.k;
    assert!(
        ws.len() == xs.len() && ws.iter().all(|w| w.k == k) && xs.iter().all(|x| x.len() == k),
        "matmul_each: shape mismatch"
    );
    let acts: Vec<QuantRowsK> = xs.iter().map(|x| QuantRowsK::new(x, 1, k)).collect();
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
    let tile = |j: usize, t: usize, out: *mut f32| {
        // SAFETY: `tiled` hands each tile of each matrix to one call with that matrix's
        // `m × n` output, which outlives the parallel region; the CPU runs `kern`.
        unsafe { tile_all_acts(kern, ws[j], t, &a, out) }
    };
    // SAFETY: `tile_all_acts` writes every value of its tile, for every activation row.
    unsafe { super::pool::tiled(&ns, m, k, ROWS, tile) }
}

/// One tile call's results: `[activation row][weight row of the tile]`.
type Res = [[f32; ROWS]; ACTS];

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
    // Activation rows per pass over the tile's weights (measured on Qwen2.5-1.5B's FFN shapes,
    // 128 rows, one thread): AVX-512 runs at the same speed from 4 to 8 (~145 GMAC/s, 2 and 3
    // are slower), so 4, the fewest registers. AVX2 gains from every row that shares the weight
    // unpacking, spills notwithstanding: 8 rows 105-110 GMAC/s, 4 rows 97-101, 2 rows 81-84.
    let most = match kern {
        Some(Kernel::Avx2 | Kernel::AvxVnni | Kernel::Vnni256) => 8,
        _ => 4,
    };
    let mut i0 = 0;
    while i0 < a.m {
        let acts = (a.m - i0).min(most);
        let mut res: Res = [[0f32; ROWS]; ACTS];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked the CPU features of `kern`.
        unsafe {
            macro_rules! by_acts {
                ($m:ident :: $f:ident) => {
                    match acts {
                        8 => $m::$f::<8>(w, t, a, i0, &mut res),
                        7 => $m::$f::<7>(w, t, a, i0, &mut res),
                        6 => $m::$f::<6>(w, t, a, i0, &mut res),
                        5 => $m::$f::<5>(w, t, a, i0, &mut res),
                        4 => $m::$f::<4>(w, t, a, i0, &mut res),
                        3 => $m::$f::<3>(w, t, a, i0, &mut res),
                        2 => $m::$f::<2>(w, t, a, i0, &mut res),
                        _ => $m::$f::<1>(w, t, a, i0, &mut res),
                    }
                };
            }
            match (kern, w.ty) {
                (Some(Kernel::Avx512), KType::Q4K) => by_acts!(avx512::q4k),
                (Some(Kernel::Avx512), KType::Q5K) => by_acts!(avx512::q5k),
                (Some(Kernel::Avx512), KType::Q6K) => by_acts!(avx512::q6k),
                (Some(Kernel::Avx2), KType::Q4K) => by_acts!(avx2::q4k),
                (Some(Kernel::Avx2), KType::Q5K) => by_acts!(avx2::q5k),
                (Some(Kernel::Avx2), KType::Q6K) => by_acts!(avx2::q6k),
                (Some(Kernel::AvxVnni), KType::Q4K) => by_acts!(vnni256::q4k_avxvnni),
                (Some(Kernel::AvxVnni), KType::Q5K) => by_acts!(vnni256::q5k_avxvnni),
                (Some(Kernel::AvxVnni), KType::Q6K) => by_acts!(vnni256::q6k_avxvnni),
                (Some(Kernel::Vnni256), KType::Q4K) => by_acts!(vnni256::q4k_evex),
                (Some(Kernel::Vnni256), KType::Q5K) => by_acts!(vnni256::q5k_evex),
                (Some(Kernel::Vnni256), KType::Q6K) => by_acts!(vnni256::q6k_evex),
                (None, _) => tile_scalar(w, t, a, i0, acts, &mut res),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = kern;
            tile_scalar(w, t, a, i0, acts, &mut res);
        }
        for (i, row) in res[..acts].iter().enumerate() {
            let r0 = t * ROWS;
            let valid = w.n.saturating_sub(r0).min(ROWS);
            // SAFETY: r0 + valid <= n and i0 + i < m, inside the caller's buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(row.as_ptr(), out.add((i0 + i) * w.n + r0), valid)
            };
        }
        i0 += acts;
    }
}

/// Reference kernel: the same integer arithmetic per block, one value at a time, from the
/// GGUF definitions of the values (through [`KMatrix::value`]) rather than the vector layout.
fn tile_scalar(w: &KMatrix, t: usize, a: &QuantRowsK, i0: usize, acts: usize, res: &mut Res) {
    let nb = w.k / QK;
    for (i, out) in res[..acts].iter_mut().enumerate() {
        let ai = i0 + i;
        for (rr, v) in out.iter_mut().enumerate() {
            let mut sum = 0f32;
            for b in 0..nb {
                let tb = w.tile_block(t, b);
                let (d, dmin) = KMatrix::scales(w.ty, tb, rr);
                let aq = &a.qs[ai * a.k + b * QK..][..QK];
                let da = a.d[ai * nb + b];
                let (mut dot, mut mins) = (0i32, 0i32);
                for (vi, &av) in aq.iter().enumerate() {
                    let (q, sc, mn) = KMatrix::value(w.ty, tb, rr, vi);
                    match w.ty {
                        KType::Q4K | KType::Q5K => {
                            dot += sc * q * av as i32;
                            if vi % 32 == 0 {
                                mins += mn * a.sum(ai, b * QK + vi, 32);
                            }
                        }
                        KType::Q6K => dot += sc * (q - 32) * av as i32,
                    }
                }
                sum += match w.ty {
                    KType::Q6K => block_sum6(d, da, dot),
                    _ => block_sum(d, dmin, da, dot, mins),
                };
            }
            *v = sum;
        }
    }
}

/// One Q4_K/Q5_K block's contribution to an output from its exact integer dot product and
/// minimum term. Every variant adds these in block order with this one expression (vector
/// lanes included: no fused multiply-add), so all of them and the scalar reference give
/// bit-identical results: greedy outputs cannot depend on which variant the CPU picked.
#[inline(always)]
fn block_sum(d: f32, dmin: f32, da: f32, dot: i32, mins: i32) -> f32 {
    d * da * dot as f32 - dmin * da * mins as f32
}

/// [`block_sum`] for Q6_K, which has no minimum.
#[inline(always)]
fn block_sum6(d: f32, da: f32, dot: i32) -> f32 {
    d * da * dot as f32
}

/// `vpshufb` index bytes that put byte `j` (0..4) of each 32-bit lane into the bytes of the lane
/// marked 1 in `mask` (bit `i` for byte `i`) and zero the others.
#[cfg(target_arch = "x86_64")]
const fn lane_shuffle(j: usize, mask: u8) -> [u8; 16] {
    let mut out = [0x80u8; 16];
    let mut i = 0;
    while i < 16 {
        if mask & (1 << (i % 4)) != 0 {
            out[i] = (4 * (i / 4) + j) as u8;
        }
        i += 1;
    }
    out
}

/// `lane_shuffle(j, mask)` for j = 0..4.
#[cfg(target_arch = "x86_64")]
const fn lane_shuffles(mask: u8) -> [[u8; 16]; 4] {
    [
        lane_shuffle(0, mask),
        lane_shuffle(1, mask),
        lane_shuffle(2, mask),
        lane_shuffle(3, mask),
    ]
}

/// Byte `j` of each lane zero-extended to the lane (unsigned 32-bit scales).
#[cfg(target_arch = "x86_64")]
const ZX32: [[u8; 16]; 4] = lane_shuffles(0b0001);
/// Byte `j` of each lane in the lane's top byte (`>> 24` sign-extends it).
#[cfg(target_arch = "x86_64")]
const TOP32: [[u8; 16]; 4] = lane_shuffles(0b1000);
/// Byte `j` of each lane in both 16-bit halves' low bytes (an unsigned i16 pair (s, s)).
#[cfg(target_arch = "x86_64")]
const ZX16: [[u8; 16]; 4] = lane_shuffles(0b0101);
/// Byte `j` of each lane in both 16-bit halves' high bytes (`>> 8` sign-extends them).
#[cfg(target_arch = "x86_64")]
const TOP16: [[u8; 16]; 4] = lane_shuffles(0b1010);

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{KMatrix, KType, Part, QuantRowsK, Res, QK, TOP32, ZX32};
    use std::arch::x86_64::*;

    /// A 16-byte shuffle pattern repeated in each 128-bit lane.
    #[inline(always)]
    unsafe fn pattern(p: &[u8; 16]) -> __m512i {
        _mm512_broadcast_i32x4(_mm_loadu_si128(p.as_ptr() as *const __m128i))
    }

    /// The 4-byte activation group at `p`, in every lane.
    #[inline(always)]
    unsafe fn bcast(p: *const i8) -> __m512i {
        _mm512_set1_epi32((p as *const i32).read_unaligned())
    }

    /// Q4_K weight tile `t` (16 rows) times `M` activation rows from `i0`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    pub(super) unsafe fn q4k<const M: usize>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut Res,
    ) {
        q45k::<M, false>(w, t, a, i0, res)
    }

    /// Q5_K weight tile `t` (16 rows) times `M` activation rows from `i0`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    pub(super) unsafe fn q5k<const M: usize>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut Res,
    ) {
        q45k::<M, true>(w, t, a, i0, res)
    }

    /// Q4_K (`FIVE` false) or Q5_K weight tile `t` times `M` activation rows from `i0`.
    ///
    /// Per 64 bytes of nibbles (4 values × 16 rows, twice): two `vpdpbusd` per activation row,
    /// into one accumulator per 32-value sub-block, which is then multiplied by the 16 rows'
    /// sub-block scales (`vpmulld`). Per block and activation row: the minimums (4 `vpdpwssd` of
    /// the unpacked minimums against the activation's paired sums) and one float step for 16
    /// outputs. The scales are unpacked for 16 rows at once with ggml's word-wide bit moves.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    #[inline]
    unsafe fn q45k<const M: usize, const FIVE: bool>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut Res,
    ) {
        let nb = w.k / QK;
        let ty = if FIVE { KType::Q5K } else { KType::Q4K };
        let tbb = ty.tile_block_bytes();
        let m4 = _mm512_set1_epi8(0x0F);
        let m10 = _mm512_set1_epi8(0x10);
        let low6 = _mm512_set1_epi8(0x3F);
        let low4 = _mm512_set1_epi8(0x0F);
        let low2 = _mm512_set1_epi8(0x03);
        let even = _mm512_set1_epi32(0x00FF_00FF);
        let zx = [
            pattern(&ZX32[0]),
            pattern(&ZX32[1]),
            pattern(&ZX32[2]),
            pattern(&ZX32[3]),
        ];
        let mut acc = [_mm512_setzero_ps(); M];
        for b in 0..nb {
            let base = w.data.as_ptr().add((t * nb + b) * tbb);
            let ld = |at: usize| _mm512_loadu_si512(base.add(at) as *const __m512i);
            let (u0, u1, u2) = (ld(0), ld(64), ld(128));
            // Lane r: the scales of sub-blocks 0..4 and 4..8 of row r, one per byte.
            let sc = [
                _mm512_and_si512(u0, low6),
                _mm512_or_si512(
                    _mm512_and_si512(u2, low4),
                    _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), low2), 4),
                ),
            ];
            let mn_lo = _mm512_and_si512(u1, low6);
            let mn_hi = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi32(u2, 4), low4),
                _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), low2), 4),
            );
            // The minimums as i16 pairs (m0, m2), (m1, m3), (m4, m6), (m5, m7): the pairing of
            // the activation words `w4`.
            let mins = [
                _mm512_and_si512(mn_lo, even),
                _mm512_and_si512(_mm512_srli_epi32(mn_lo, 8), even),
                _mm512_and_si512(mn_hi, even),
                _mm512_and_si512(_mm512_srli_epi32(mn_hi, 8), even),
            ];
            let mut aq = [std::ptr::null::<i8>(); M];
            for (i, p) in aq.iter_mut().enumerate() {
                *p = a.qs.as_ptr().add((i0 + i) * a.k + b * QK);
            }
            let mut dot = [_mm512_setzero_si512(); M];
            for p in 0..4 {
                // Fifth bits of sub-blocks 2p and 2p + 1 at bits 0 and 1.
                let shift = _mm_cvtsi32_si128(2 * p as i32);
                let mut lo_acc = [_mm512_setzero_si512(); M];
                let mut hi_acc = [_mm512_setzero_si512(); M];
                for c in 0..8 {
                    let raw = ld(ty.at(Part::Nibbles, 8 * p + c));
                    let mut lo = _mm512_and_si512(raw, m4);
                    let mut hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
                    if FIVE {
                        let bits = _mm512_srl_epi16(ld(ty.at(Part::High, c)), shift);
                        lo = _mm512_or_si512(lo, _mm512_and_si512(_mm512_slli_epi16(bits, 4), m10));
                        hi = _mm512_or_si512(hi, _mm512_and_si512(_mm512_slli_epi16(bits, 3), m10));
                    }
                    for i in 0..M {
                        let ap = aq[i].add(64 * p + 4 * c);
                        lo_acc[i] = _mm512_dpbusd_epi32(lo_acc[i], lo, bcast(ap));
                        hi_acc[i] = _mm512_dpbusd_epi32(hi_acc[i], hi, bcast(ap.add(32)));
                    }
                }
                let s = sc[p / 2];
                let s_lo = _mm512_shuffle_epi8(s, zx[(2 * p) % 4]);
                let s_hi = _mm512_shuffle_epi8(s, zx[(2 * p + 1) % 4]);
                for i in 0..M {
                    dot[i] = _mm512_add_epi32(
                        dot[i],
                        _mm512_add_epi32(
                            _mm512_mullo_epi32(lo_acc[i], s_lo),
                            _mm512_mullo_epi32(hi_acc[i], s_hi),
                        ),
                    );
                }
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(ty.d_at()) as *const __m256i));
            let dmw = _mm512_cvtph_ps(_mm256_loadu_si256(
                base.add(ty.d_at() + 32) as *const __m256i
            ));
            for i in 0..M {
                let blk = (i0 + i) * nb + b;
                let wp = a.w4.as_ptr().add(blk * 4);
                let mut mn = _mm512_setzero_si512();
                for (q, mv) in mins.iter().enumerate() {
                    mn = _mm512_dpwssd_epi32(mn, *mv, _mm512_set1_epi32(*wp.add(q)));
                }
                let da = _mm512_set1_ps(*a.d.get_unchecked(blk));
                // block_sum, lane-wise and in the same order.
                let t1 = _mm512_mul_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(dot[i]));
                let t2 = _mm512_mul_ps(_mm512_mul_ps(dmw, da), _mm512_cvtepi32_ps(mn));
                acc[i] = _mm512_add_ps(acc[i], _mm512_sub_ps(t1, t2));
            }
        }
        for (dst, v) in res.iter_mut().zip(&acc) {
            _mm512_storeu_ps(dst.as_mut_ptr(), *v);
        }
    }

    /// Q6_K weight tile `t` (16 rows) times `M` activation rows from `i0`.
    ///
    /// Per triple of lines (two of low nibbles, one of their high bit pairs): four 6-bit weight
    /// vectors, four `vpdpbusd` per activation row into one accumulator per 16-value sub-block,
    /// multiplied by the sign-extended sub-block scales. The −32 offset is taken away once per
    /// block from 8 `vpdpwssd` of the scales against the activation's paired sums of 16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    pub(super) unsafe fn q6k<const M: usize>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut Res,
    ) {
        let nb = w.k / QK;
        let ty = KType::Q6K;
        let tbb = ty.tile_block_bytes();
        let m4 = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        let top = [
            pattern(&TOP32[0]),
            pattern(&TOP32[1]),
            pattern(&TOP32[2]),
            pattern(&TOP32[3]),
        ];
        let mut acc = [_mm512_setzero_ps(); M];
        for b in 0..nb {
            let base = w.data.as_ptr().add((t * nb + b) * tbb);
            let ld = |at: usize| _mm512_loadu_si512(base.add(at) as *const __m512i);
            // Word q of the scales: sub-blocks 4q..4q + 4, one signed byte each.
            let scw = [ld(0), ld(64), ld(128), ld(192)];
            let mut aq = [std::ptr::null::<i8>(); M];
            for (i, p) in aq.iter_mut().enumerate() {
                *p = a.qs.as_ptr().add((i0 + i) * a.k + b * QK);
            }
            let mut dot = [_mm512_setzero_si512(); M];
            for h in 0..2 {
                for q in 0..2 {
                    // Groups c = 4q..4q + 4 of half h and c + 8: sub-blocks 8h + q (low
                    // nibbles of c), 8h + 2 + q (of c + 8), 8h + 4 + q and 8h + 6 + q (high).
                    let mut accs = [[_mm512_setzero_si512(); M]; 4];
                    for cc in 0..4 {
                        let c = 4 * q + cc;
                        let lo_c = ld(ty.at(Part::Nibbles, 16 * h + c));
                        let lo_c8 = ld(ty.at(Part::Nibbles, 16 * h + c + 8));
                        let bits = ld(ty.at(Part::High, 8 * h + c));
                        // Bit pairs 0, 1, 2, 3 of each byte to bits 4-5.
                        let ws = [
                            (lo_c, _mm512_slli_epi16(bits, 4), 0),
                            (lo_c8, _mm512_slli_epi16(bits, 2), 32),
                            (_mm512_srli_epi16(lo_c, 4), bits, 64),
                            (_mm512_srli_epi16(lo_c8, 4), _mm512_srli_epi16(bits, 2), 96),
                        ];
                        for (acc, &(nib, hb, off)) in accs.iter_mut().zip(&ws) {
                            let wv = _mm512_or_si512(
                                _mm512_and_si512(nib, m4),
                                _mm512_and_si512(hb, m30),
                            );
                            for i in 0..M {
                                let ap = aq[i].add(128 * h + 4 * c + off);
                                acc[i] = _mm512_dpbusd_epi32(acc[i], wv, bcast(ap));
                            }
                        }
                    }
                    // Sub-blocks 8h + 2r + q: word 2h + r / 2, byte q + 2 (r % 2).
                    for (r, acc) in accs.iter().enumerate() {
                        let word = scw[2 * h + r / 2];
                        let s =
                            _mm512_srai_epi32(_mm512_shuffle_epi8(word, top[q + 2 * (r % 2)]), 24);
                        for i in 0..M {
                            dot[i] = _mm512_add_epi32(dot[i], _mm512_mullo_epi32(acc[i], s));
                        }
                    }
                }
            }
            // The scales as i16 pairs (s0, s2), (s1, s3) of each word: the pairing of `w6`.
            let mut pairs = [_mm512_setzero_si512(); 8];
            for (q, &v) in scw.iter().enumerate() {
                pairs[2 * q] = _mm512_srai_epi16(_mm512_slli_epi16(v, 8), 8);
                pairs[2 * q + 1] = _mm512_srai_epi16(v, 8);
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(ty.d_at()) as *const __m256i));
            for i in 0..M {
                let blk = (i0 + i) * nb + b;
                let wp = a.w6.as_ptr().add(blk * 8);
                let mut off = _mm512_setzero_si512();
                for (q, pv) in pairs.iter().enumerate() {
                    off = _mm512_dpwssd_epi32(off, *pv, _mm512_set1_epi32(*wp.add(q)));
                }
                let d = _mm512_sub_epi32(dot[i], _mm512_slli_epi32(off, 5));
                let da = _mm512_set1_ps(*a.d.get_unchecked(blk));
                // block_sum6, lane-wise.
                let t1 = _mm512_mul_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(d));
                acc[i] = _mm512_add_ps(acc[i], t1);
            }
        }
        for (dst, v) in res.iter_mut().zip(&acc) {
            _mm512_storeu_ps(dst.as_mut_ptr(), *v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{KMatrix, KType, Part, QuantRowsK, Res, QK, TOP16, ZX16};
    use std::arch::x86_64::*;

    /// A 16-byte shuffle pattern in both 128-bit lanes.
    #[inline(always)]
    unsafe fn pattern(p: &[u8; 16]) -> __m256i {
        _mm256_broadcastsi128_si256(_mm_loadu_si128(p.as_ptr() as *const __m128i))
    }

    /// The 4-byte activation group at `p`, in every lane.
    #[inline(always)]
    unsafe fn bcast(p: *const i8) -> __m256i {
        _mm256_set1_epi32((p as *const i32).read_unaligned())
    }

    /// Q4_K weight tile `t` times `M` activation rows from `i0`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4k<const M: usize>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut Res,
    ) {
        q45k::<Madd16, M, false>(w, t, a, i0, res)
    }

    /// Q5_K weight tile `t` times `M` activation rows from `i0`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q5k<const M: usize>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut Res,
    ) {
        q45k::<Madd16, M, true>(w, t, a, i0, res)
    }

    /// How a sub-block's integer dot products are formed: a line of weight bytes against its
    /// broadcast activations, added up, then times the rows' sub-block scales widened by
    /// `WIDEN`. Every step is exact in integers, so each implementation gives the same sums.
    pub(super) trait SubDot {
        /// Shuffle patterns that widen the sub-block scale bytes to the multiplier's lanes.
        const WIDEN: &'static [[u8; 16]; 4];
        /// `acc` plus the products of `w`'s unsigned bytes with `a`'s signed ones.
        unsafe fn add(acc: __m256i, w: __m256i, a: __m256i) -> __m256i;
        /// The 32-bit lanes of `acc` times the widened scales `s`.
        unsafe fn scaled(acc: __m256i, s: __m256i) -> __m256i;
        /// Shuffle patterns that move Q6_K's signed scale bytes to the top of the multiplier's
        /// lanes, and the shift that sign-extends them there.
        const TOP: &'static [[u8; 16]; 4];
        unsafe fn signed(x: __m256i) -> __m256i;
    }

    /// AVX2: `vpmaddubsw` into 16-bit sums (Q4_K: 8 × 2 × 15 × 128 ≤ 30,720 fits; Q5_K's 31s:
    /// 4 groups at a time), then `vpmaddwd` by the scale as an i16 pair.
    pub(super) struct Madd16;

    impl SubDot for Madd16 {
        const WIDEN: &'static [[u8; 16]; 4] = &ZX16;
        #[inline(always)]
        unsafe fn add(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
            _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, a))
        }
        #[inline(always)]
        unsafe fn scaled(acc: __m256i, s: __m256i) -> __m256i {
            _mm256_madd_epi16(acc, s)
        }
        const TOP: &'static [[u8; 16]; 4] = &TOP16;
        #[inline(always)]
        unsafe fn signed(x: __m256i) -> __m256i {
            _mm256_srai_epi16(x, 8)
        }
    }

    /// Q4_K (`FIVE` false) or Q5_K weight tile `t` times `M` activation rows from `i0`, the 16
    /// rows as two halves of 8 (bytes 0..32 and 32..64 of every 64-byte word vector).
    ///
    /// Per 32 bytes and activation row: two [`SubDot::add`] summed over a sub-block (Q5_K: 4
    /// groups at a time), then [`SubDot::scaled`] by the rows' sub-block scales, into 32-bit
    /// lanes. The caller enables AVX2, FMA and F16C (and its `S`'s instruction).
    #[inline(always)]
    pub(super) unsafe fn q45k<S: SubDot, const M: usize, const FIVE: bool>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut Res,
    ) {
        let nb = w.k / QK;
        let ty = if FIVE { KType::Q5K } else { KType::Q4K };
        let tbb = ty.tile_block_bytes();
        let m4 = _mm256_set1_epi8(0x0F);
        let m10 = _mm256_set1_epi8(0x10);
        let low6 = _mm256_set1_epi8(0x3F);
        let low2 = _mm256_set1_epi8(0x03);
        let even = _mm256_set1_epi32(0x00FF_00FF);
        let dup = [
            pattern(&S::WIDEN[0]),
            pattern(&S::WIDEN[1]),
            pattern(&S::WIDEN[2]),
            pattern(&S::WIDEN[3]),
        ];
        let mut acc = [[_mm256_setzero_ps(); M]; 2];
        for b in 0..nb {
            let block = w.data.as_ptr().add((t * nb + b) * tbb);
            let mut aq = [std::ptr::null::<i8>(); M];
            for (i, p) in aq.iter_mut().enumerate() {
                *p = a.qs.as_ptr().add((i0 + i) * a.k + b * QK);
            }
            for (half, acc) in acc.iter_mut().enumerate() {
                let base = block.add(32 * half);
                let ld = |at: usize| _mm256_loadu_si256(base.add(at) as *const __m256i);
                let (u0, u1, u2) = (ld(0), ld(64), ld(128));
                let sc = [
                    _mm256_and_si256(u0, low6),
                    _mm256_or_si256(
                        _mm256_and_si256(u2, m4),
                        _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u0, 6), low2), 4),
                    ),
                ];
                let mn_lo = _mm256_and_si256(u1, low6);
                let mn_hi = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi32(u2, 4), m4),
                    _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u1, 6), low2), 4),
                );
                let mut dot = [_mm256_setzero_si256(); M];
                for p in 0..4 {
                    let shift = _mm_cvtsi32_si128(2 * p as i32);
                    let s = sc[p / 2];
                    let s_lo = _mm256_shuffle_epi8(s, dup[(2 * p) % 4]);
                    let s_hi = _mm256_shuffle_epi8(s, dup[(2 * p + 1) % 4]);
                    let mut lo16 = [_mm256_setzero_si256(); M];
                    let mut hi16 = [_mm256_setzero_si256(); M];
                    for c in 0..8 {
                        let raw = ld(ty.at(Part::Nibbles, 8 * p + c));
                        let mut lo = _mm256_and_si256(raw, m4);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                        if FIVE {
                            let bits = _mm256_srl_epi16(ld(ty.at(Part::High, c)), shift);
                            lo = _mm256_or_si256(
                                lo,
                                _mm256_and_si256(_mm256_slli_epi16(bits, 4), m10),
                            );
                            hi = _mm256_or_si256(
                                hi,
                                _mm256_and_si256(_mm256_slli_epi16(bits, 3), m10),
                            );
                        }
                        for i in 0..M {
                            let ap = aq[i].add(64 * p + 4 * c);
                            lo16[i] = S::add(lo16[i], lo, bcast(ap));
                            hi16[i] = S::add(hi16[i], hi, bcast(ap.add(32)));
                        }
                        if c == 7 || (FIVE && c == 3) {
                            for i in 0..M {
                                dot[i] = _mm256_add_epi32(
                                    dot[i],
                                    _mm256_add_epi32(
                                        S::scaled(lo16[i], s_lo),
                                        S::scaled(hi16[i], s_hi),
                                    ),
                                );
                                lo16[i] = _mm256_setzero_si256();
                                hi16[i] = _mm256_setzero_si256();
                            }
                        }
                    }
                }
                let mins = [
                    _mm256_and_si256(mn_lo, even),
                    _mm256_and_si256(_mm256_srli_epi32(mn_lo, 8), even),
                    _mm256_and_si256(mn_hi, even),
                    _mm256_and_si256(_mm256_srli_epi32(mn_hi, 8), even),
                ];
                let dw =
                    _mm256_cvtph_ps(_mm_loadu_si128(block.add(ty.d_at() + 16 * half) as *const _));
                let dmw = _mm256_cvtph_ps(_mm_loadu_si128(
                    block.add(ty.d_at() + 32 + 16 * half) as *const _
                ));
                for i in 0..M {
                    let blk = (i0 + i) * nb + b;
                    let wp = a.w4.as_ptr().add(blk * 4);
                    let mut mn = _mm256_setzero_si256();
                    for (q, mv) in mins.iter().enumerate() {
                        mn = _mm256_add_epi32(
                            mn,
                            _mm256_madd_epi16(*mv, _mm256_set1_epi32(*wp.add(q))),
                        );
                    }
                    let da = _mm256_set1_ps(*a.d.get_unchecked(blk));
                    let t1 = _mm256_mul_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(dot[i]));
                    let t2 = _mm256_mul_ps(_mm256_mul_ps(dmw, da), _mm256_cvtepi32_ps(mn));
                    acc[i] = _mm256_add_ps(acc[i], _mm256_sub_ps(t1, t2));
                }
            }
        }
        for (half, acc) in acc.iter().enumerate() {
            for (dst, v) in res.iter_mut().zip(acc) {
                _mm256_storeu_ps(dst.as_mut_ptr().add(8 * half), *v);
            }
        }
    }

    /// Q6_K weight tile `t` times `M` activation rows from `i0`, in two halves of 8 rows.
    ///
    /// `vpmaddubsw` sums of two groups (2 × 2 × 63 × 128 ≤ 32,256) are multiplied by the
    /// sub-block scale as an i16 pair (`vpmaddwd`); the −32 offset as in the AVX-512 variant.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q6k<const M: usize>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut Res,
    ) {
        q6k_with::<Madd16, M>(w, t, a, i0, res)
    }

    /// [`q6k`]'s body on `S`'s integer steps (the caller enables AVX2, FMA, F16C and `S`'s
    /// instruction).
    #[inline(always)]
    pub(super) unsafe fn q6k_with<S: SubDot, const M: usize>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut Res,
    ) {
        let nb = w.k / QK;
        let ty = KType::Q6K;
        let tbb = ty.tile_block_bytes();
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        let top = [
            pattern(&S::TOP[0]),
            pattern(&S::TOP[1]),
            pattern(&S::TOP[2]),
            pattern(&S::TOP[3]),
        ];
        let mut acc = [[_mm256_setzero_ps(); M]; 2];
        for b in 0..nb {
            let block = w.data.as_ptr().add((t * nb + b) * tbb);
            let mut aq = [std::ptr::null::<i8>(); M];
            for (i, p) in aq.iter_mut().enumerate() {
                *p = a.qs.as_ptr().add((i0 + i) * a.k + b * QK);
            }
            for (half, acc) in acc.iter_mut().enumerate() {
                let base = block.add(32 * half);
                let ld = |at: usize| _mm256_loadu_si256(base.add(at) as *const __m256i);
                let scw = [ld(0), ld(64), ld(128), ld(192)];
                let mut dot = [_mm256_setzero_si256(); M];
                for h in 0..2 {
                    for q in 0..2 {
                        // As in the AVX-512 variant: sub-blocks 8h + 2r + q, r = 0..4.
                        let s: [__m256i; 4] = std::array::from_fn(|r| {
                            let word = scw[2 * h + r / 2];
                            S::signed(_mm256_shuffle_epi8(word, top[q + 2 * (r % 2)]))
                        });
                        let mut sums = [[_mm256_setzero_si256(); M]; 4];
                        for cc in 0..4 {
                            let c = 4 * q + cc;
                            let lo_c = ld(ty.at(Part::Nibbles, 16 * h + c));
                            let lo_c8 = ld(ty.at(Part::Nibbles, 16 * h + c + 8));
                            let bits = ld(ty.at(Part::High, 8 * h + c));
                            let ws = [
                                (lo_c, _mm256_slli_epi16(bits, 4), 0),
                                (lo_c8, _mm256_slli_epi16(bits, 2), 32),
                                (_mm256_srli_epi16(lo_c, 4), bits, 64),
                                (_mm256_srli_epi16(lo_c8, 4), _mm256_srli_epi16(bits, 2), 96),
                            ];
                            for (sum, &(nib, hb, off)) in sums.iter_mut().zip(&ws) {
                                let wv = _mm256_or_si256(
                                    _mm256_and_si256(nib, m4),
                                    _mm256_and_si256(hb, m30),
                                );
                                for i in 0..M {
                                    let ap = aq[i].add(128 * h + 4 * c + off);
                                    sum[i] = S::add(sum[i], wv, bcast(ap));
                                }
                            }
                            if cc % 2 == 1 {
                                for (sum, s) in sums.iter_mut().zip(&s) {
                                    for i in 0..M {
                                        dot[i] = _mm256_add_epi32(dot[i], S::scaled(sum[i], *s));
                                        sum[i] = _mm256_setzero_si256();
                                    }
                                }
                            }
                        }
                    }
                }
                let mut pairs = [_mm256_setzero_si256(); 8];
                for (q, &v) in scw.iter().enumerate() {
                    pairs[2 * q] = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8);
                    pairs[2 * q + 1] = _mm256_srai_epi16(v, 8);
                }
                let dw =
                    _mm256_cvtph_ps(_mm_loadu_si128(block.add(ty.d_at() + 16 * half) as *const _));
                for i in 0..M {
                    let blk = (i0 + i) * nb + b;
                    let wp = a.w6.as_ptr().add(blk * 8);
                    let mut off = _mm256_setzero_si256();
                    for (q, pv) in pairs.iter().enumerate() {
                        off = _mm256_add_epi32(
                            off,
                            _mm256_madd_epi16(*pv, _mm256_set1_epi32(*wp.add(q))),
                        );
                    }
                    let d = _mm256_sub_epi32(dot[i], _mm256_slli_epi32(off, 5));
                    let da = _mm256_set1_ps(*a.d.get_unchecked(blk));
                    let t1 = _mm256_mul_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(d));
                    acc[i] = _mm256_add_ps(acc[i], t1);
                }
            }
        }
        for (half, acc) in acc.iter().enumerate() {
            for (dst, v) in res.iter_mut().zip(acc) {
                _mm256_storeu_ps(dst.as_mut_ptr().add(8 * half), *v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni256 {
    use super::{KMatrix, QuantRowsK, Res, TOP32, ZX32};
    use crate::engine::simd::dot256::{AvxVnni, Evex, Vnni256};
    use std::arch::x86_64::*;

    /// One entry point per (instruction, K-quant type), each with its variant's features.
    macro_rules! entry {
        ($name:ident, $features:literal, $dot:ty, $body:ident $(, $five:literal)?) => {
            /// The tile of the type in its name, on the instruction of its name.
            ///
            /// # Safety
            /// The CPU must have the variant's features (AVX2, FMA, F16C, and AVX-VNNI or
            /// AVX-512 VNNI + VL); `t` must be a tile of `w` and `i0 + M` rows of `a` must exist.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const M: usize>(
                w: &KMatrix,
                t: usize,
                a: &QuantRowsK,
                i0: usize,
                res: &mut Res,
            ) {
                $body::<$dot, M $(, $five)?>(w, t, a, i0, res)
            }
        };
    }
    entry!(q4k_avxvnni, "avx2,fma,f16c,avxvnni", AvxVnni, q45k, false);
    entry!(q5k_avxvnni, "avx2,fma,f16c,avxvnni", AvxVnni, q45k, true);
    entry!(q6k_avxvnni, "avx2,fma,f16c,avxvnni", AvxVnni, q6k);
    // The EVEX instruction sits in an `asm!` block (`simd::dot256::Evex`), so these need no
    // AVX-512 feature of their own.
    entry!(q4k_evex, "avx2,fma,f16c", Evex, q45k, false);
    entry!(q5k_evex, "avx2,fma,f16c", Evex, q45k, true);
    entry!(q6k_evex, "avx2,fma,f16c", Evex, q6k);

    /// The AVX-512 variant's integer steps on 256 bits: one `vpdpbusd` into a 32-bit
    /// accumulator per sub-block (exact, no 16-bit step to flush), then one `vpmulld` by the
    /// zero-extended sub-block scales.
    struct Vnni<D>(std::marker::PhantomData<D>);

    impl<D: Vnni256> super::avx2::SubDot for Vnni<D> {
        const WIDEN: &'static [[u8; 16]; 4] = &ZX32;
        #[inline(always)]
        unsafe fn add(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
            D::dpbusd(acc, w, a)
        }
        #[inline(always)]
        unsafe fn scaled(acc: __m256i, s: __m256i) -> __m256i {
            _mm256_mullo_epi32(acc, s)
        }
        const TOP: &'static [[u8; 16]; 4] = &TOP32;
        #[inline(always)]
        unsafe fn signed(x: __m256i) -> __m256i {
            _mm256_srai_epi32(x, 24)
        }
    }

    /// Q4_K (`FIVE` false) or Q5_K: the AVX2 variant's body on [`Vnni`]'s integer steps.
    #[inline(always)]
    unsafe fn q45k<D: Vnni256, const M: usize, const FIVE: bool>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut Res,
    ) {
        super::avx2::q45k::<Vnni<D>, M, FIVE>(w, t, a, i0, res)
    }

    /// Q6_K: the AVX2 variant's body on [`Vnni`]'s integer steps.
    #[inline(always)]
    unsafe fn q6k<D: Vnni256, const M: usize>(
        w: &KMatrix,
        t: usize,
        a: &QuantRowsK,
        i0: usize,
        res: &mut Res,
    ) {
        super::avx2::q6k_with::<Vnni<D>, M>(w, t, a, i0, res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QStorage, QTensor};
    use candle_core::{Device, Module, Tensor};

    const ALL: [KType; 3] = [KType::Q4K, KType::Q5K, KType::Q6K];

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
        let k = 512;
        let types = [KType::Q4K, KType::Q6K, KType::Q5K, KType::Q4K];
        let ws: Vec<KMatrix> = types
            .iter()
            .enumerate()
            .map(|(j, &ty)| {
                let n = 17 + 5 * j;
                KMatrix::from_gguf_bytes(&random_gguf(ty, n, k, 40 + j as u64), ty, n, k).unwrap()
            })
            .collect();
        let xs: Vec<Vec<f32>> = (0..ws.len())
            .map(|j| {
                (0..k)
                    .map(|i| ((i * 7 + j * 13) as f32 * 0.37).sin())
                    .collect()
            })
            .collect();
        let refs: Vec<&KMatrix> = ws.iter().collect();
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
                KType::Q4K | KType::Q5K => {
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
    /// `_q5_K` / `_q6_K`), independently of the repacked layout.
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
                KType::Q5K => {
                    let (d, dmin) = (f(&blk[0..2]), f(&blk[2..4]));
                    let (scales, qh, qs) = (&blk[4..16], &blk[16..48], &blk[48..176]);
                    for j in 0..4 {
                        let (s1, m1) = scale_min_k4(2 * j, scales);
                        let (s2, m2) = scale_min_k4(2 * j + 1, scales);
                        let (d1, d2) = (d * s1 as f32, d * s2 as f32);
                        let (n1, n2) = (dmin * m1 as f32, dmin * m2 as f32);
                        for l in 0..32 {
                            let q = qs[32 * j + l];
                            let h1 = ((qh[l] >> (2 * j)) & 1) << 4;
                            let h2 = ((qh[l] >> (2 * j + 1)) & 1) << 4;
                            y[64 * j + l] = d1 * ((q & 15) | h1) as f32 - n1;
                            y[64 * j + 32 + l] = d2 * ((q >> 4) | h2) as f32 - n2;
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
            KType::Q5K => GgmlDType::Q5K,
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
        for ty in ALL {
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
        // Rows not a multiple of 16 leave padded edge tiles; 1 to 9 activation rows cover every
        // tile width and a remainder.
        for ty in ALL {
            for &(n, k, m) in &[
                (4, 256, 1),
                (7, 256, 1),
                (9, 512, 3),
                (13, 768, 5),
                (6, 1536, 9),
                (1, 256, 2),
                (16, 2304, 4),
                (17, 256, 2),
                (33, 512, 7),
                (48, 768, 1),
            ] {
                check(ty, n, k, m);
            }
        }
    }

    #[test]
    fn large_products_run_in_parallel_and_agree() {
        check(KType::Q4K, 300, 1536, 6);
        check(KType::Q5K, 130, 1280, 5);
        check(KType::Q6K, 258, 1024, 1);
    }

    /// The largest weights and scales against the largest activations of either sign: the
    /// 16-bit partial sums of the AVX2 variant (and every 32-bit one) must not overflow.
    #[test]
    fn extreme_values_give_exact_sums() {
        let (n, k) = (16, 512);
        // All ones and all minus ones quantize to -127 and 127; the mixed row to both.
        let mut x = vec![1.0f32; k];
        x.extend(vec![-1.0f32; k]);
        x.extend((0..k).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }));
        let m = 3;
        for ty in ALL {
            for fill in [0xFFu8, 0x80, 0x7F] {
                let mut bytes = vec![fill; n * k / QK * ty.block_bytes()];
                // Keep the f16 scales finite and small: 0x3C00 is 1.0.
                for blk in bytes.chunks_exact_mut(ty.block_bytes()) {
                    let at: &[usize] = match ty {
                        KType::Q6K => &[208],
                        _ => &[0, 2],
                    };
                    for &a in at {
                        blk[a..a + 2].copy_from_slice(&[0x00, 0x3C]);
                    }
                }
                let vals = dequant_gguf(ty, &bytes);
                let w = KMatrix::from_gguf_bytes(&bytes, ty, n, k).unwrap();
                let want = reference(&vals, &QuantRowsK::new(&x, m, k), n, k);
                let scalar = matmul_with(None, &[&w], &x, m).remove(0);
                let mags = magnitudes(&vals, &x, m, n, k);
                assert_close(
                    &format!("{} scalar {fill:#x}", ty.name()),
                    &scalar,
                    &want,
                    &mags,
                );
                for kern in kernels() {
                    let got = matmul_with(kern, &[&w], &x, m).remove(0);
                    assert_eq!(got, scalar, "{} {kern:?} fill {fill:#x}", ty.name());
                }
            }
        }
    }

    /// No second copy and no growth: the repacked matrix is as large as the file's blocks
    /// (rows padded to a multiple of 16 aside).
    #[test]
    fn repacked_size_is_the_gguf_size() {
        for ty in ALL {
            let (n, k) = (32, 768);
            let bytes = random_gguf(ty, n, k, 9);
            let w = KMatrix::from_gguf_bytes(&bytes, ty, n, k).unwrap();
            assert_eq!(w.data.len(), bytes.len(), "{}", ty.name());
        }
    }

    /// Row `i` of a call with `m` rows is bit-identical to a call with row `i` alone, on every
    /// variant: a sequence's tokens cannot depend on what it is batched with.
    #[test]
    fn rows_do_not_depend_on_the_other_rows() {
        let (n, k) = (37, 512);
        let x = random_acts(9, k, 21);
        for ty in ALL {
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
        let b3 = random_gguf(KType::Q5K, 19, k, 3);
        let w1 = KMatrix::from_gguf_bytes(&b1, KType::Q4K, 40, k).unwrap();
        let w2 = KMatrix::from_gguf_bytes(&b2, KType::Q6K, 22, k).unwrap();
        let w3 = KMatrix::from_gguf_bytes(&b3, KType::Q5K, 19, k).unwrap();
        let x = random_acts(m, k, 4);
        for kern in kernels() {
            let all = matmul_with(kern, &[&w1, &w2, &w3], &x, m);
            assert_eq!(all[0], matmul_with(kern, &[&w1], &x, m)[0], "{kern:?}");
            assert_eq!(all[1], matmul_with(kern, &[&w2], &x, m)[0], "{kern:?}");
            assert_eq!(all[2], matmul_with(kern, &[&w3], &x, m)[0], "{kern:?}");
        }
    }

    /// Against candle's f32 matmul on the dequantized weights: the only difference is the
    /// 8-bit activations, whose rounding error is at most half a step, `amax / 254` of each
    /// 256-value block, per value; so each output is off by at most Σ |w| · amax_block / 254.
    #[test]
    fn matches_candle_f32_within_activation_rounding() {
        let (n, k, m) = (24, 768, 3);
        for ty in ALL {
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

    /// Not a test: time per call and multiply-adds per second of Qwen2.5-1.5B's FFN shapes for
    /// 1 to 128 rows, own kernel (each variant) against candle's quantized matmul. Run with
    /// `cargo test --release --lib engine::kq::tests::bench_rows -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement that prints timings and asserts nothing; run it by hand"]
    fn bench_rows() {
        // Process CPU time, not wall time: on a shared machine other jobs take the cores, and
        // with `CANDLE_NUM_THREADS=1` the CPU time is the kernel's own.
        let cpu_us = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid timespec for the call to fill.
            unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
            ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
        };
        let time = |f: &mut dyn FnMut()| {
            f();
            let (mut best, reps) = (f64::MAX, 5);
            for _ in 0..5 {
                let t = cpu_us();
                for _ in 0..reps {
                    f();
                }
                best = best.min((cpu_us() - t) / reps as f64);
            }
            best
        };
        let types: Vec<KType> = match std::env::var("KQ_TYPE").as_deref() {
            Ok("q4k") => vec![KType::Q4K],
            Ok("q5k") => vec![KType::Q5K],
            Ok("q6k") => vec![KType::Q6K],
            _ => ALL.to_vec(),
        };
        for ty in types {
            let shapes: &[(usize, usize)] = if std::env::var("KQ_BIG").is_ok() {
                &[(151936, 1536), (8960, 8960)]
            } else {
                &[(8960, 1536), (1536, 8960)]
            };
            for &(n, k) in shapes {
                let bytes = random_gguf(ty, n, k, 1);
                let w = KMatrix::from_gguf_bytes(&bytes, ty, n, k).unwrap();
                let qm =
                    candle_core::quantized::QMatMul::from_qtensor(candle_tensor(ty, &bytes, n, k))
                        .unwrap();
                let ms: &[usize] = if std::env::var("KQ_BIG").is_ok() {
                    &[1]
                } else {
                    &[1, 4, 16, 64, 128]
                };
                for &m in ms {
                    let x = random_acts(m, k, 2);
                    let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                    let gmac = |us: f64| (n * k * m) as f64 / us / 1e3;
                    let mut line = format!("{} {n}x{k} m={m:3}:", ty.name());
                    for kern in kernels().into_iter().skip(1) {
                        let us = time(&mut || {
                            std::hint::black_box(matmul_with(kern, &[&w], &x, m));
                        });
                        line += &format!(" {kern:?} {us:9.1} µs {:5.1} GMAC/s", gmac(us));
                    }
                    let us = time(&mut || {
                        std::hint::black_box(qm.forward(&xt).unwrap());
                    });
                    line += &format!(" | candle {us:9.1} µs {:5.1} GMAC/s", gmac(us));
                    println!("{line}");
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
        assert!(KMatrix::from_gguf_bytes(&bytes, KType::Q5K, 2, 256).is_err());
    }
}
