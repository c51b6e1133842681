//! Q4_0, Q4_1, Q5_0 and Q5_1 matrix multiplication with AVX-512 VNNI, AVX-VNNI and AVX2 variants
//! (the last two one kernel, generic over the dot-product instruction).
//!
//! candle 0.11 multiplies these types one 32-value block per row at a time, and for Q4_1, Q5_0
//! and Q5_1 without SIMD at all: SmolLM2's Q4_1 file decoded at a fraction of its Q8_0 speed.
//! Here, as in `q8.rs` and `kq.rs`, weights are repacked at load into tiles of 4 rows read as
//! one sequential stream (the GGUF copy is dropped; the repacked form is the same size), and
//! tiles of 4 weight rows × up to 4 activation rows read each weight once per call, however many
//! rows a batched decode or a prompt brings. What differs is the lane layout:
//! - **one block per 32-bit lane.** A row's blocks go in groups of 16; within a group, 4-byte
//!   word `u` of block `j`'s GGUF nibbles is lane `j` of load `u` (each byte holds value `4u + p`
//!   in its low and value `16 + 4u + p` in its high nibble). Activations, quantized per call to
//!   8 bits per 32 values (ggml's Q8_0/Q8_1), are laid out the same way, so a chain of 8
//!   `vpdpbusd` leaves each of the 16 blocks' exact integer dot product in its own lane, and the
//!   scales apply once per block: one convert and one FMA per 16 blocks, no permutes or
//!   horizontal sums inside the loop;
//! - the weights stay unsigned (0..15, 0..31), which is what `vpdpbusd` / `vpmaddubsw` take;
//!   Q4_0's −8 and Q5_0's −16 offsets start each lane from `−offset · Σa` of its block, and
//!   Q4_1/Q5_1's minimums meet the block's activation sum (ggml's Q8_1 `s`);
//! - the fifth bits of Q5_0/Q5_1 are stored as one 64-bit byte mask per nibble vector, applied
//!   with one masked add (AVX-512) or expanded from 32 bits (AVX2);
//! - a row's last, partial group is stored compactly (nibbles and scales) and read with
//!   lane-masked loads, so rows are not padded (SmolLM2's 576-wide rows are 18 blocks: 16 + 2)
//!   and Q4_0/Q4_1 matrices are the GGUF data's size. The fifth bits of Q5_0/Q5_1 keep a whole
//!   group's 64 bytes of masks per row: stored compactly, read at a stride known only at run
//!   time and cleared past the group, they cost 20-28 % of those kernels' speed.
//!
//! **Numerics.** Every variant computes the same float operations in the same order, so results
//! are bit-identical across AVX-512, AVX2 and the scalar reference, and an activation row's
//! result never depends on the other rows of the call (the batching engine relies on that: a
//! seeded request gives the same tokens alone or batched). Block `b`'s exact integer dot
//! product goes into float lane `b % 16` as `fma(dot, d_w · d_a, lane)`, then (types with a
//! minimum) `fma(m_w, s_a, lane)`; the 16 lanes are summed by [`hsum16`]'s tree.

use half::f16;

use super::simd::Kernel;

/// Values per block.
pub const BLOCK: usize = 32;
/// Weight rows per tile (the kernels are written for 4).
const ROWS: usize = 4;
/// Most activation rows per tile call.
pub(super) const ACTS: usize = 4;
/// Blocks per group: one per 32-bit lane of a zmm.
pub(super) const GROUP: usize = 16;
/// Bytes of one group of one activation row: 8 slices of 4 values × 16 blocks.
pub(super) const ACT_GROUP: usize = 8 * 4 * GROUP;
/// Bytes of the fifth-bit masks of one group of one row: 4 loads × (low, high) × 8 bytes.
const QH_GROUP: usize = 64;
/// Zero scales after the last, so the AVX2 variant's whole-vector read at a partial group's
/// last row stays inside the allocation (it clears what lies past the group).
const SLACK: usize = 8;

/// The types these kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
}

impl LType {
    /// Bytes of one GGUF block of 32 values.
    const fn block_bytes(self) -> usize {
        match self {
            LType::Q4_0 => 18,
            LType::Q4_1 => 20,
            LType::Q5_0 => 22,
            LType::Q5_1 => 24,
        }
    }

    /// Whether the type has a per-block minimum (`w = d · q + m`) rather than an offset.
    const fn has_min(self) -> bool {
        matches!(self, LType::Q4_1 | LType::Q5_1)
    }

    /// Whether values have a fifth bit.
    const fn high_bit(self) -> bool {
        matches!(self, LType::Q5_0 | LType::Q5_1)
    }

    /// What is taken from the unsigned value: `w = d · (q − offset)`.
    const fn offset(self) -> i32 {
        match self {
            LType::Q4_0 => 8,
            LType::Q5_0 => 16,
            LType::Q4_1 | LType::Q5_1 => 0,
        }
    }

    /// Where the 16 bytes of nibbles start in a GGUF block.
    const fn qs_at(self) -> usize {
        match self {
            LType::Q4_0 => 2,
            LType::Q4_1 => 4,
            LType::Q5_0 => 6,
            LType::Q5_1 => 8,
        }
    }

    /// Where the 4 bytes of fifth bits start in a GGUF block (Q5 types).
    const fn qh_at(self) -> usize {
        match self {
            LType::Q5_1 => 4,
            _ => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LType::Q4_0 => "Q4_0",
            LType::Q4_1 => "Q4_1",
            LType::Q5_0 => "Q5_0",
            LType::Q5_1 => "Q5_1",
        }
    }
}

/// Groups per row of `kb` blocks (the last may be partial).
pub(super) fn groups(kb: usize) -> usize {
    kb.div_ceil(GROUP)
}

/// An `n × k` weight matrix of one of the [`LType`]s (rows are output features), repacked.
///
/// Per tile of 4 rows and group: the 4 rows' nibbles one after the other (256 bytes each, or
/// 16 per block in a partial group), each as 4 loads × the group's blocks × 4 bytes; the fifth
/// bits as 64 bytes of masks per row and group, also for a partial group (mask `i` at byte `8i`:
/// low mask of load `u` is mask `2u`, high mask `2u + 1`; bit `4j + p` belongs to byte `p` of
/// block `j`); block scales and minimums (f16 bits) as the group's count per row. Padding is
/// zero rows up to a multiple of 4, [`SLACK`] trailing zero scales and, for Q5_0/Q5_1, a
/// partial group's masks to 64 bytes (module docs).
pub struct LMatrix {
    ty: LType,
    n: usize,
    k: usize,
    qs: Vec<u8>,
    qh: Vec<u8>,
    d: Vec<u16>,
    mn: Vec<u16>,
}

impl LMatrix {
    /// Repacks raw GGUF data of an `n × k` matrix of type `ty`.
    pub fn from_gguf_bytes(data: &[u8], ty: LType, n: usize, k: usize) -> Result<Self, String> {
        if k == 0 || !k.is_multiple_of(BLOCK) {
            return Err(format!("row length {k} is not a multiple of {BLOCK}"));
        }
        let kb = k / BLOCK;
        let bb = ty.block_bytes();
        if n.checked_mul(kb * bb) != Some(data.len()) {
            return Err(format!(
                "{} bytes of {} data for a {n}×{k} matrix (expected {})",
                data.len(),
                ty.name(),
                n.saturating_mul(kb * bb)
            ));
        }
        let tiles = n.div_ceil(ROWS);
        let scales = tiles * ROWS * kb + SLACK;
        let mut m = Self {
            ty,
            n,
            k,
            qs: vec![0u8; tiles * ROWS * kb * 16],
            qh: if ty.high_bit() {
                vec![0u8; tiles * groups(kb) * ROWS * QH_GROUP]
            } else {
                Vec::new()
            },
            d: vec![0u16; scales],
            mn: if ty.has_min() {
                vec![0u16; scales]
            } else {
                Vec::new()
            },
        };
        for (r, row) in data.chunks_exact(kb * bb).enumerate() {
            let (t, rr) = (r / ROWS, r % ROWS);
            for (b, blk) in row.chunks_exact(bb).enumerate() {
                let s = m.scale_at(t, rr, b);
                m.d[s] = u16::from_le_bytes([blk[0], blk[1]]);
                if ty.has_min() {
                    m.mn[s] = u16::from_le_bytes([blk[2], blk[3]]);
                }
                // Word u of the block's nibbles is lane j of load u (see `byte_at`).
                let qs = &blk[ty.qs_at()..ty.qs_at() + 16];
                let (at, width) = (m.byte_at(t, rr, b, 0), m.width(b / GROUP));
                for (u, word) in qs.chunks_exact(4).enumerate() {
                    m.qs[at + u * width * 4..][..4].copy_from_slice(word);
                }
                if ty.high_bit() {
                    // Bits 4u..4u + 4 (low nibbles) and 16 + 4u.. (high) of the block's 32
                    // go to bits 4j..4j + 4 of load u's low and high masks (see `bit_at`).
                    let h = &blk[ty.qh_at()..ty.qh_at() + 4];
                    let qh = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                    let j = b % GROUP;
                    for u in 0..4 {
                        for (high, shift) in [(0, 4 * u), (1, 16 + 4 * u)] {
                            let nib = ((qh >> shift) & 0x0F) as u8;
                            let at = m.mask_at(t, b / GROUP, rr, 2 * u + high);
                            m.qh[at + j / 2] |= nib << (4 * (j % 2));
                        }
                    }
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

    /// Offset in `qs` of GGUF nibble byte `i` (0..16) of block `b` of row `rr` of tile `t`.
    fn byte_at(&self, t: usize, rr: usize, b: usize, i: usize) -> usize {
        let (g, j) = (b / GROUP, b % GROUP);
        self.group_at(t, g, rr) + ((i / 4) * self.width(g) + j) * 4 + i % 4
    }

    /// Offset in `qh` of fifth-bit mask `i` (load `i / 2`, high nibbles if odd) of group `g`
    /// of row `rr` of tile `t`.
    fn mask_at(&self, t: usize, g: usize, rr: usize, i: usize) -> usize {
        ((t * groups(self.kb()) + g) * ROWS + rr) * QH_GROUP + 8 * i
    }

    /// Where group `g` of tile `t` keeps its scales and fifth bits (the kernels work it out
    /// once per group, not per row and mask).
    #[inline(always)]
    fn group(&self, t: usize, g: usize) -> GroupAt {
        let width = self.width(g);
        GroupAt {
            scales: self.scales_at(t, g, 0),
            masks: self.mask_at(t, g, 0, 0),
            width,
        }
    }

    /// Bit index in `qh` of the fifth bit of value `v` of block `b` of row `rr` of tile `t`.
    fn bit_at(&self, t: usize, rr: usize, b: usize, v: usize) -> usize {
        let (g, j) = (b / GROUP, b % GROUP);
        let (u, p, high) = ((v % 16) / 4, v % 4, v >= 16);
        self.mask_at(t, g, rr, 2 * u + high as usize) * 8 + 4 * j + p
    }

    /// The unsigned quantized value `v` (0..32) of block `b` of row `rr` of tile `t`.
    fn value(&self, t: usize, rr: usize, b: usize, v: usize) -> u8 {
        let byte = self.qs[self.byte_at(t, rr, b, v % 16)];
        let lo = if v >= 16 { byte >> 4 } else { byte & 0x0F };
        if self.ty.high_bit() {
            let bit = self.bit_at(t, rr, b, v);
            lo | ((self.qh[bit / 8] >> (bit % 8)) & 1) << 4
        } else {
            lo
        }
    }

    /// Offset in `d` / `mn` of the scale of block `b` of row `rr` of tile `t`.
    fn scale_at(&self, t: usize, rr: usize, b: usize) -> usize {
        let g = b / GROUP;
        self.scales_at(t, g, rr) + b % GROUP
    }

    /// Offset in `d` / `mn` of the first scale of group `g` of row `rr` of tile `t`: whole
    /// groups before it, then the group's earlier rows.
    fn scales_at(&self, t: usize, g: usize, rr: usize) -> usize {
        t * ROWS * self.kb() + g * ROWS * GROUP + rr * self.width(g)
    }

    /// Block `b`'s scale and minimum (0 for types without one) of row `rr` of tile `t`; zeros
    /// for the lanes past a partial group's blocks, as the kernels load them.
    fn scales(&self, t: usize, rr: usize, b: usize) -> (f32, f32) {
        if b >= self.kb() {
            return (0.0, 0.0);
        }
        let at = self.scale_at(t, rr, b);
        let m = if self.ty.has_min() {
            f16::from_bits(self.mn[at]).to_f32()
        } else {
            0.0
        };
        (f16::from_bits(self.d[at]).to_f32(), m)
    }

    /// Dequantized row `r` (token-embedding lookups), as ggml dequantizes: `d · (q − offset)` or
    /// `d · q + m`.
    pub fn row(&self, r: usize) -> Vec<f32> {
        let (t, rr) = (r / ROWS, r % ROWS);
        let off = self.ty.offset();
        let mut out = Vec::with_capacity(self.k);
        for b in 0..self.kb() {
            let (d, m) = self.scales(t, rr, b);
            for v in 0..BLOCK {
                let q = self.value(t, rr, b, v) as i32;
                out.push(if self.ty.has_min() {
                    q as f32 * d + m
                } else {
                    (q - off) as f32 * d
                });
            }
        }
        out
    }

    /// The whole matrix dequantized, row-major `n × k`, rows split across the own pool (tests
    /// and the dense-path comparison of `bench_rows`; the decoder never needs it).
    #[cfg(test)]
    pub fn dequantize(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut out = vec![0f32; n * k];
        let dst = out.as_mut_ptr() as usize;
        super::pool::run_chunked(n, |rows| {
            for r in rows {
                let row = self.row(r);
                // SAFETY: each row index is handed to one call, rows are disjoint `k`-value
                // ranges of `out`, and `out` outlives the parallel region.
                unsafe {
                    std::ptr::copy_nonoverlapping(row.as_ptr(), (dst as *mut f32).add(r * k), k)
                };
            }
        });
        out
    }
}

/// Where one group of one tile of an [`LMatrix`] keeps its scales and fifth-bit masks.
#[derive(Clone, Copy)]
struct GroupAt {
    /// Offset in `d` / `mn` of row 0's first scale.
    scales: usize,
    /// Offset in `qh` of row 0's first mask.
    masks: usize,
    /// Blocks in the group.
    width: usize,
}

impl GroupAt {
    /// Offset in `d` / `mn` of the first scale of tile row `rr`.
    #[inline(always)]
    fn scales(&self, rr: usize) -> usize {
        self.scales + rr * self.width
    }

    /// Fifth-bit mask `i` of tile row `rr` as the 64 lanes' bits (4 per block; zeros past a
    /// partial group's blocks).
    ///
    /// # Safety
    /// `qh` must be the fifth bits of the matrix this group belongs to, and `rr` a tile row.
    #[inline(always)]
    unsafe fn mask(&self, qh: *const u8, rr: usize, i: usize) -> u64 {
        // SAFETY: each row's 8 masks of a group lie inside `qh`.
        unsafe { (qh.add(self.masks + rr * QH_GROUP + 8 * i) as *const u64).read_unaligned() }
    }
}

/// Activation rows quantized to 8 bits per 32 values, in the weights' lane layout: per row and
/// group, 8 slices (values `4s..4s + 4` of each block) × 16 blocks × 4 bytes. Partial groups
/// are padded with zeros.
pub struct QuantRows {
    pub(super) m: usize,
    /// Padded bytes per row.
    pub(super) kp: usize,
    /// Padded scales per row.
    pub(super) sp: usize,
    pub(super) qs: Vec<i8>,
    /// Block scales (values of f16s).
    pub(super) d: Vec<f32>,
    /// `d ·` the block's sum: what a block's weight minimum meets (ggml's Q8_1 `s`; an f16).
    s: Vec<f32>,
    /// `−8 ·` the block's sum: the start of Q4_0's lanes (twice that for Q5_0, 1.5 times that
    /// for MXFP4's offset of 12).
    pub(super) off8: Vec<i32>,
}

impl QuantRows {
    /// Quantizes `m` rows of `k` values (row-major `x`), as ggml's `quantize_row_q8_0` does;
    /// a prompt's rows on every thread (serially they were several per cent of a 2-thread
    /// prompt).
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        debug_assert_eq!(x.len(), m * k);
        debug_assert_eq!(k % BLOCK, 0);
        let ng = groups(k / BLOCK);
        let (kp, sp) = (ng * ACT_GROUP, ng * GROUP);
        let mut qs = vec![0i8; m * kp];
        let mut d = vec![0f32; m * sp];
        let mut s = vec![0f32; m * sp];
        let mut off8 = vec![0i32; m * sp];
        if m < 4 {
            // A decode step's row or a few: no parallel region (nor its bookkeeping).
            for i in 0..m {
                let (r, c) = (i * kp..(i + 1) * kp, i * sp..(i + 1) * sp);
                let (d, s, o) = (&mut d[c.clone()], &mut s[c.clone()], &mut off8[c]);
                Self::quantize_row(&x[i * k..(i + 1) * k], &mut qs[r], d, s, o);
            }
            return Self {
                m,
                kp,
                sp,
                qs,
                d,
                s,
                off8,
            };
        }
        type Row<'a> = (&'a mut [i8], &'a mut [f32], &'a mut [f32], &'a mut [i32]);
        let rows: Vec<std::sync::Mutex<Row>> = qs
            .chunks_mut(kp)
            .zip(d.chunks_mut(sp))
            .zip(s.chunks_mut(sp))
            .zip(off8.chunks_mut(sp))
            .map(|(((q, d), s), o)| std::sync::Mutex::new((q, d, s, o)))
            .collect();
        let run = |range: std::ops::Range<usize>| {
            for i in range {
                // Each row is handed out once: the lock is never contended.
                let mut row = rows[i].lock().unwrap_or_else(|e| e.into_inner());
                let (q, d, s, o) = &mut *row;
                Self::quantize_row(&x[i * k..(i + 1) * k], q, d, s, o);
            }
        };
        super::pool::run_chunked(m, run);
        drop(rows);
        Self {
            m,
            kp,
            sp,
            qs,
            d,
            s,
            off8,
        }
    }

    /// One row's blocks, scales, sums and offset starts.
    fn quantize_row(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], off8: &mut [i32]) {
        for (b, src) in x.chunks_exact(BLOCK).enumerate() {
            let amax = super::simd::abs_max(src);
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for (v, &x) in src.iter().enumerate() {
                let q = (x * inv).round() as i8;
                qs[Self::at(b, v)] = q;
                sum += q as i32;
            }
            // The scale and sum rounded to f16 as ggml's and candle's Q8_0/Q8_1 blocks store
            // them, so greedy outputs follow theirs (near-ties between tokens flip on less).
            let dh = f16::from_f32(scale);
            d[b] = dh.to_f32();
            s[b] = (f16::from_f32(sum as f32) * dh).to_f32();
            off8[b] = -8 * sum;
        }
    }

    /// Offset within a row of value `v` of block `b`.
    pub(super) fn at(b: usize, v: usize) -> usize {
        (b / GROUP) * ACT_GROUP + (v / 4) * 4 * GROUP + (b % GROUP) * 4 + v % 4
    }
}

/// The kernel variant this CPU runs (`simd::kernel`), if any.
pub fn kernel() -> Option<Kernel> {
    super::simd::kernel()
}

/// Whether a matrix of these types with rows of `k` values runs on these kernels here.
pub fn runs(k: usize) -> bool {
    kernel().is_some() && k > 0 && k.is_multiple_of(BLOCK)
}

/// `x @ wᵀ` for every matrix in `ws` (all with `k` columns, types may differ): one row-major
/// `m × n` output per matrix. `x` is `m` rows of `k` values.
pub fn matmul(ws: &[&LMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    matmul_with(kernel(), ws, x, m)
}

/// [`matmul`] on a chosen kernel (`None`: the scalar reference). The caller guarantees the CPU
/// runs it, as [`kernel`] does.
fn matmul_with(kern: Option<Kernel>, ws: &[&LMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let Some(first) = ws.first() else {
        return Vec::new();
    };
    let k = first.k;
    assert!(
        ws.iter().all(|w| w.k == k) && x.len() == m * k,
        "Q4_0/Q4_1/Q5_0/Q5_1 matmul: shape mismatch"
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
unsafe fn tile_all_acts(kern: Option<Kernel>, w: &LMatrix, t: usize, a: &QuantRows, out: *mut f32) {
    // AVX2 has 16 vector registers: 8 unpacked weight vectors and 4 × 2 accumulators fill them
    // (the 256-bit VNNI variants too).
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

/// The fixed summation tree of 16 lanes every variant uses: halves, then quarters, then pairs.
#[inline(always)]
pub(super) fn hsum16(l: &[f32; 16]) -> f32 {
    let mut t8 = [0f32; 8];
    for (j, v) in t8.iter_mut().enumerate() {
        *v = l[j] + l[j + 8];
    }
    let t4 = [t8[0] + t8[4], t8[1] + t8[5], t8[2] + t8[6], t8[3] + t8[7]];
    let t2 = [t4[0] + t4[2], t4[1] + t4[3]];
    t2[0] + t2[1]
}

/// Reference kernel: the lanes of the module docs, one value at a time.
fn tile_scalar(
    w: &LMatrix,
    t: usize,
    a: &QuantRows,
    i0: usize,
    acts: usize,
    res: &mut [[f32; ACTS]; ROWS],
) {
    let (kb, off) = (w.kb(), w.ty.offset());
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
                        dot += (w.value(t, rr, b, val) as i32 - off) * av;
                    }
                }
                let (dw, mw) = w.scales(t, rr, b);
                let lane = &mut lanes[b % GROUP];
                *lane = (dot as f32).mul_add(dw * a.d[ai * a.sp + b], *lane);
                if w.ty.has_min() {
                    *lane = mw.mul_add(a.s[ai * a.sp + b], *lane);
                }
            }
            *v = hsum16(&lanes);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{groups, LMatrix, LType, QuantRows, ACTS, ACT_GROUP, GROUP, ROWS};
    use std::arch::x86_64::*;

    /// The last three levels of [`hsum16`]'s tree on its first level's 8 sums: lanes `j` and
    /// `j + 4`, then `j` and `j + 2`, then the pair (with shuffles, not a store and reload: the
    /// compiler turned that into gathers).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn hsum8(t8: __m256) -> f32 {
        let t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
        let t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
        _mm_cvtss_f32(_mm_add_ss(t2, _mm_shuffle_ps(t2, t2, 1)))
    }

    /// Runs the tile for `w`'s type and `acts` activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL and VNNI; `t` must be a tile of `w` and `i0 + acts`
    /// rows of `a` must exist.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    pub(super) unsafe fn tile(
        w: &LMatrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        acts: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        macro_rules! by_acts {
            ($off:literal, $high:literal, $min:literal) => {
                match acts {
                    4 => tile_impl::<$off, $high, $min, 4>(w, t, a, i0, res),
                    3 => tile_impl::<$off, $high, $min, 3>(w, t, a, i0, res),
                    2 => tile_impl::<$off, $high, $min, 2>(w, t, a, i0, res),
                    _ => tile_impl::<$off, $high, $min, 1>(w, t, a, i0, res),
                }
            };
        }
        match w.ty {
            LType::Q4_0 => by_acts!(1, false, false),
            LType::Q4_1 => by_acts!(0, false, true),
            LType::Q5_0 => by_acts!(2, true, false),
            LType::Q5_1 => by_acts!(0, true, true),
        }
    }

    /// Weight tile `t` (4 rows) times `M` activation rows from `i0`. `OFF`: the offset in units
    /// of 8 (Q4_0: 1, Q5_0: 2); `HIGH`: fifth bits; `MIN`: per-block minimums.
    ///
    /// Per group and row: 4 loads split into 8 nibble vectors (plus masked adds of 16 for the
    /// fifth bits). Per group and (row, act): 8 `vpdpbusd` in two chains from the offset start,
    /// then one convert, one multiply of the scales and one FMA (two with minimums).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    #[inline]
    unsafe fn tile_impl<const OFF: i32, const HIGH: bool, const MIN: bool, const M: usize>(
        w: &LMatrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        let (ng, qh) = (groups(w.kb()), w.qh.as_ptr());
        let m4 = _mm512_set1_epi8(0x0F);
        let b16 = _mm512_set1_epi8(0x10);
        let mut acc = [[_mm512_setzero_ps(); M]; ROWS];
        for g in 0..ng {
            let width = w.width(g);
            if width <= 8 {
                // A partial last group of at most 8 blocks (SmolLM2's 576-wide rows end with
                // 2): the same lanes with 256-bit operations, half the work of 512-bit ones.
                narrow_group::<OFF, HIGH, MIN, M>(w, t, a, i0, g, &mut acc);
                continue;
            }
            let lanes: __mmask16 = if width == GROUP {
                0xFFFF
            } else {
                (1u16 << width) - 1
            };
            let gp = w.group(t, g);
            for (rr, row) in acc.iter_mut().enumerate() {
                let base = w.qs.as_ptr().add(w.group_at(t, g, rr));
                let mut lo = [_mm512_setzero_si512(); 4];
                let mut hi = [_mm512_setzero_si512(); 4];
                for u in 0..4 {
                    // Lanes past a partial group's blocks read as zeros (and are not touched
                    // in memory).
                    let raw = _mm512_maskz_loadu_epi32(lanes, base.add(u * width * 4) as *const _);
                    lo[u] = _mm512_and_si512(raw, m4);
                    hi[u] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
                    if HIGH {
                        let (lm, hm) = (gp.mask(qh, rr, 2 * u), gp.mask(qh, rr, 2 * u + 1));
                        lo[u] = _mm512_mask_add_epi8(lo[u], lm, lo[u], b16);
                        hi[u] = _mm512_mask_add_epi8(hi[u], hm, hi[u], b16);
                    }
                }
                // A partial group's scales are stored unpadded: the lanes past them load as
                // zeros, and memory past them is not touched.
                let at = gp.scales(rr);
                let dw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                    lanes,
                    w.d.as_ptr().add(at) as *const _,
                ));
                let mw = if MIN {
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                        lanes,
                        w.mn.as_ptr().add(at) as *const _,
                    ))
                } else {
                    _mm512_setzero_ps()
                };
                for (i, v) in row.iter_mut().enumerate() {
                    let ai = i0 + i;
                    let ap = a.qs.as_ptr().add(ai * a.kp + g * ACT_GROUP);
                    let sc = a.sp * ai + g * GROUP;
                    let mut d0 = if OFF == 0 {
                        _mm512_setzero_si512()
                    } else {
                        let o = _mm512_loadu_si512(a.off8.as_ptr().add(sc) as *const __m512i);
                        if OFF == 2 {
                            _mm512_slli_epi32(o, 1)
                        } else {
                            o
                        }
                    };
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
                    if MIN {
                        *v = _mm512_fmadd_ps(mw, _mm512_loadu_ps(a.s.as_ptr().add(sc)), *v);
                    }
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

    /// Group `g` (at most 8 blocks, the row's last) of weight tile `t` times `M` activation rows
    /// from `i0`, added to lanes 0–7 of `acc` exactly as [`tile_impl`] would (lanes 8–15 would
    /// only get `fma(0, 0, lane)`, which leaves them as they are).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    #[inline]
    unsafe fn narrow_group<const OFF: i32, const HIGH: bool, const MIN: bool, const M: usize>(
        w: &LMatrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        g: usize,
        acc: &mut [[__m512; M]; ROWS],
    ) {
        let width = w.width(g);
        let lanes: __mmask8 = ((1u16 << width) - 1) as __mmask8;
        let m4 = _mm256_set1_epi8(0x0F);
        let b16 = _mm256_set1_epi8(0x10);
        let (gp, qh) = (w.group(t, g), w.qh.as_ptr());
        for (rr, row) in acc.iter_mut().enumerate() {
            let base = w.qs.as_ptr().add(w.group_at(t, g, rr));
            let mut lo = [_mm256_setzero_si256(); 4];
            let mut hi = [_mm256_setzero_si256(); 4];
            for u in 0..4 {
                let raw = _mm256_maskz_loadu_epi32(lanes, base.add(u * width * 4) as *const _);
                lo[u] = _mm256_and_si256(raw, m4);
                hi[u] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                if HIGH {
                    // At most 8 blocks: the low 32 bits hold all of the group's.
                    let (lm, hm) = (gp.mask(qh, rr, 2 * u), gp.mask(qh, rr, 2 * u + 1));
                    lo[u] = _mm256_mask_add_epi8(lo[u], lm as u32, lo[u], b16);
                    hi[u] = _mm256_mask_add_epi8(hi[u], hm as u32, hi[u], b16);
                }
            }
            let at = gp.scales(rr);
            let dw = _mm256_cvtph_ps(_mm_maskz_loadu_epi16(
                lanes,
                w.d.as_ptr().add(at) as *const _,
            ));
            let mw = if MIN {
                _mm256_cvtph_ps(_mm_maskz_loadu_epi16(
                    lanes,
                    w.mn.as_ptr().add(at) as *const _,
                ))
            } else {
                _mm256_setzero_ps()
            };
            for (i, v) in row.iter_mut().enumerate() {
                let ai = i0 + i;
                let ap = a.qs.as_ptr().add(ai * a.kp + g * ACT_GROUP);
                let sc = a.sp * ai + g * GROUP;
                let mut d0 = if OFF == 0 {
                    _mm256_setzero_si256()
                } else {
                    let o = _mm256_loadu_si256(a.off8.as_ptr().add(sc) as *const __m256i);
                    if OFF == 2 {
                        _mm256_slli_epi32(o, 1)
                    } else {
                        o
                    }
                };
                let mut d1 = _mm256_setzero_si256();
                for u in 0..4 {
                    let alo = _mm256_loadu_si256(ap.add(64 * u) as *const __m256i);
                    let ahi = _mm256_loadu_si256(ap.add(64 * (4 + u)) as *const __m256i);
                    d0 = _mm256_dpbusd_epi32(d0, lo[u], alo);
                    d1 = _mm256_dpbusd_epi32(d1, hi[u], ahi);
                }
                let dot = _mm256_cvtepi32_ps(_mm256_add_epi32(d0, d1));
                let s = _mm256_mul_ps(dw, _mm256_loadu_ps(a.d.as_ptr().add(sc)));
                let mut low = _mm512_castps512_ps256(*v);
                low = _mm256_fmadd_ps(dot, s, low);
                if MIN {
                    low = _mm256_fmadd_ps(mw, _mm256_loadu_ps(a.s.as_ptr().add(sc)), low);
                }
                *v = _mm512_castpd_ps(_mm512_insertf64x4(
                    _mm512_castps_pd(*v),
                    _mm256_castps_pd(low),
                    0,
                ));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{groups, LMatrix, LType, QuantRows, ACTS, ACT_GROUP, GROUP, ROWS};
    use crate::engine::simd::dot256::{Avx2, AvxVnni, Dot256, Evex};
    use std::arch::x86_64::*;

    /// The last three levels of [`hsum16`]'s tree on its first level's 8 sums: lanes `j` and
    /// `j + 4`, then `j` and `j + 2`, then the pair (with shuffles, not a store and reload: the
    /// compiler turned that into gathers).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn hsum8(t8: __m256) -> f32 {
        let t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
        let t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
        _mm_cvtss_f32(_mm_add_ss(t2, _mm_shuffle_ps(t2, t2, 1)))
    }

    /// Runs the tile for `w`'s type and `acts` (1 or 2) activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `t` must be a tile of `w` and `i0 + acts` rows of
    /// `a` must exist.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile(
        w: &LMatrix,
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
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub(super) unsafe fn tile_avxvnni(
        w: &LMatrix,
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
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_vnni256(
        w: &LMatrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        acts: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        tile_with::<Evex>(w, t, a, i0, acts, res)
    }

    /// The tile for `w`'s type and `acts` rows, inlined into each variant's features.
    #[inline(always)]
    unsafe fn tile_with<D: Dot256>(
        w: &LMatrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        acts: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        macro_rules! by_acts {
            ($off:literal, $high:literal, $min:literal) => {
                match acts {
                    2 => tile_impl::<D, $off, $high, $min, 2>(w, t, a, i0, res),
                    _ => tile_impl::<D, $off, $high, $min, 1>(w, t, a, i0, res),
                }
            };
        }
        match w.ty {
            LType::Q4_0 => by_acts!(1, false, false),
            LType::Q4_1 => by_acts!(0, false, true),
            LType::Q5_0 => by_acts!(2, true, false),
            LType::Q5_1 => by_acts!(0, true, true),
        }
    }

    /// 32 fifth bits as bytes of 0x10 or 0 (ggml's `bytes_from_bits_32`, masked to bit 4).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn fifth_bits(bits: u32) -> __m256i {
        let shuf = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
        let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
        let set = _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    /// Weight tile `t` times `M` activation rows, each group as two halves of 8 blocks (lanes
    /// 0–7 and 8–15 of the AVX-512 variant), so each lane sees the same operations in the same
    /// order. The integer dot products are `D`'s: `vpdpbusd`, or `vpmaddubsw` (at most
    /// 2 · 2 · 31 · 128 for the two vectors' pairs: no saturation) and `vpmaddwd` by ones.
    #[inline(always)]
    unsafe fn tile_impl<
        D: Dot256,
        const OFF: i32,
        const HIGH: bool,
        const MIN: bool,
        const M: usize,
    >(
        w: &LMatrix,
        t: usize,
        a: &QuantRows,
        i0: usize,
        res: &mut [[f32; ACTS]; ROWS],
    ) {
        let ng = groups(w.kb());
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [[[_mm256_setzero_ps(); 2]; M]; ROWS];
        let qh = w.qh.as_ptr();
        for g in 0..ng {
            let width = w.width(g);
            let gp = w.group(t, g);
            for h in 0..2 {
                if 8 * h >= width {
                    continue;
                }
                // Which of this half's 8 lanes hold blocks.
                let valid = (width - 8 * h).min(8) as i32;
                let lanes = _mm256_cmpgt_epi32(
                    _mm256_set1_epi32(valid),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                );
                // The same for the 16-bit scales, stored unpadded: what a whole load reads past
                // a partial group (the next row's scales, or the slack) is cleared.
                let keep = _mm_cmpgt_epi16(
                    _mm_set1_epi16(valid as i16),
                    _mm_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7),
                );
                for (rr, row) in acc.iter_mut().enumerate() {
                    let base = w.qs.as_ptr().add(w.group_at(t, g, rr) + 32 * h);
                    let mut lo = [_mm256_setzero_si256(); 4];
                    let mut hi = [_mm256_setzero_si256(); 4];
                    for u in 0..4 {
                        // Masked-off lanes read as zeros and are not touched in memory.
                        let raw =
                            _mm256_maskload_epi32(base.add(u * width * 4) as *const i32, lanes);
                        lo[u] = _mm256_and_si256(raw, m4);
                        hi[u] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                        if HIGH {
                            // This half's 8 blocks are bits 32h.. of the group's masks.
                            let lm = (gp.mask(qh, rr, 2 * u) >> (32 * h)) as u32;
                            let hm = (gp.mask(qh, rr, 2 * u + 1) >> (32 * h)) as u32;
                            lo[u] = _mm256_or_si256(lo[u], fifth_bits(lm));
                            hi[u] = _mm256_or_si256(hi[u], fifth_bits(hm));
                        }
                    }
                    let at = gp.scales(rr) + 8 * h;
                    let dw = _mm256_cvtph_ps(_mm_and_si128(
                        _mm_loadu_si128(w.d.as_ptr().add(at) as *const __m128i),
                        keep,
                    ));
                    let mw = if MIN {
                        _mm256_cvtph_ps(_mm_and_si128(
                            _mm_loadu_si128(w.mn.as_ptr().add(at) as *const __m128i),
                            keep,
                        ))
                    } else {
                        _mm256_setzero_ps()
                    };
                    for (i, v) in row.iter_mut().enumerate() {
                        let ai = i0 + i;
                        let ap = a.qs.as_ptr().add(ai * a.kp + g * ACT_GROUP + 32 * h);
                        let sc = a.sp * ai + g * GROUP + 8 * h;
                        let start = if OFF == 0 {
                            _mm256_setzero_si256()
                        } else {
                            let o = _mm256_loadu_si256(a.off8.as_ptr().add(sc) as *const __m256i);
                            if OFF == 2 {
                                _mm256_slli_epi32(o, 1)
                            } else {
                                o
                            }
                        };
                        let mut dot = [start, _mm256_setzero_si256()];
                        for u in 0..4 {
                            let alo = _mm256_loadu_si256(ap.add(64 * u) as *const __m256i);
                            let ahi = _mm256_loadu_si256(ap.add(64 * (4 + u)) as *const __m256i);
                            D::dot2(&mut dot, lo[u], alo, hi[u], ahi);
                        }
                        let dot = _mm256_add_epi32(dot[0], dot[1]);
                        let s = _mm256_mul_ps(dw, _mm256_loadu_ps(a.d.as_ptr().add(sc)));
                        v[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, v[h]);
                        if MIN {
                            let sa = _mm256_loadu_ps(a.s.as_ptr().add(sc));
                            v[h] = _mm256_fmadd_ps(mw, sa, v[h]);
                        }
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
    use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
    use candle_core::{Device, Module, Tensor};

    const TYPES: [LType; 4] = [LType::Q4_0, LType::Q4_1, LType::Q5_0, LType::Q5_1];

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
    /// random, the scale small and positive and the minimum small of either sign, like real ones.
    fn random_gguf(ty: LType, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed);
        let mut out = Vec::new();
        for _ in 0..n * k / BLOCK {
            let mut blk: Vec<u8> = (0..ty.block_bytes()).map(|_| rng.next() as u8).collect();
            let d = f16::from_f32(1e-3 + (rng.next() % 1000) as f32 * 2e-5);
            blk[0..2].copy_from_slice(&d.to_le_bytes());
            if ty.has_min() {
                let m = f16::from_f32(((rng.next() % 2001) as f32 - 1000.0) * 2e-5);
                blk[2..4].copy_from_slice(&m.to_le_bytes());
            }
            out.extend(blk);
        }
        out
    }

    /// Dequantizes GGUF bytes straight from the block format (ggml's `dequantize_row_q4_0` and
    /// siblings), independently of the repacked layout.
    fn dequant_gguf(ty: LType, data: &[u8]) -> Vec<f32> {
        let f = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        let mut out = Vec::new();
        for blk in data.chunks_exact(ty.block_bytes()) {
            let d = f(&blk[0..2]);
            let (qs, qh) = match ty {
                LType::Q4_0 => (&blk[2..18], 0u32),
                LType::Q4_1 => (&blk[4..20], 0),
                LType::Q5_0 => (
                    &blk[6..22],
                    u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]),
                ),
                LType::Q5_1 => (
                    &blk[8..24],
                    u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]),
                ),
            };
            let mut y = [0f32; BLOCK];
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                let x0 = (qs[j] & 0x0F) as u32 | h0;
                let x1 = (qs[j] >> 4) as u32 | h1;
                let (v0, v1) = match ty {
                    LType::Q4_0 => ((x0 as i32 - 8) as f32 * d, (x1 as i32 - 8) as f32 * d),
                    LType::Q5_0 => ((x0 as i32 - 16) as f32 * d, (x1 as i32 - 16) as f32 * d),
                    LType::Q4_1 | LType::Q5_1 => {
                        let m = f(&blk[2..4]);
                        (x0 as f32 * d + m, x1 as f32 * d + m)
                    }
                };
                y[j] = v0;
                y[j + 16] = v1;
            }
            out.extend(y);
        }
        out
    }

    fn candle_dtype(ty: LType) -> GgmlDType {
        match ty {
            LType::Q4_0 => GgmlDType::Q4_0,
            LType::Q4_1 => GgmlDType::Q4_1,
            LType::Q5_0 => GgmlDType::Q5_0,
            LType::Q5_1 => GgmlDType::Q5_1,
        }
    }

    fn candle_tensor(ty: LType, data: &[u8], n: usize, k: usize) -> QTensor {
        let st = QStorage::from_data(
            std::borrow::Cow::Borrowed(data),
            &Device::Cpu,
            candle_dtype(ty),
        )
        .unwrap();
        QTensor::new(st, (n, k)).unwrap()
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

    fn check(ty: LType, n: usize, k: usize, m: usize) {
        let bytes = random_gguf(ty, n, k, (n * 31 + k * 7 + m) as u64);
        let vals = dequant_gguf(ty, &bytes);
        let w = LMatrix::from_gguf_bytes(&bytes, ty, n, k).unwrap();
        let x = random_acts(m, k, (n + m) as u64);
        let want = reference(&vals, &QuantRows::new(&x, m, k), n, k);
        let mags = magnitudes(&vals, &x, m, n, k);
        let scalar = matmul_with(None, &[&w], &x, m).remove(0);
        for kern in kernels() {
            let what = format!("{} {kern:?} n={n} k={k} m={m}", ty.name());
            let got = matmul_with(kern, &[&w], &x, m).remove(0);
            // Same float operations in the same order: bit-identical.
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                scalar.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{what}: differs from the scalar reference"
            );
            for (idx, ((g, e), s)) in got.iter().zip(&want).zip(&mags).enumerate() {
                let tol = 1e-5 * s + 1e-6;
                assert!(
                    (g - e).abs() <= tol,
                    "{what}: element {idx} is {g}, expected {e} (tolerance {tol})"
                );
            }
        }
    }

    #[test]
    fn dequantization_matches_candle() {
        for ty in TYPES {
            for &(n, k) in &[(5, 64), (6, 96), (3, 576), (4, 160)] {
                let bytes = random_gguf(ty, n, k, 3);
                let ours = dequant_gguf(ty, &bytes);
                let theirs: Vec<f32> = candle_tensor(ty, &bytes, n, k)
                    .dequantize(&Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(ours, theirs, "{} {n}×{k}", ty.name());
                let w = LMatrix::from_gguf_bytes(&bytes, ty, n, k).unwrap();
                for r in 0..n {
                    assert_eq!(w.row(r), ours[r * k..(r + 1) * k], "{} row {r}", ty.name());
                }
                assert_eq!(w.dequantize(), ours, "{} whole matrix", ty.name());
            }
        }
    }

    #[test]
    fn matches_reference_for_odd_shapes() {
        // Blocks per row 1, 3, 5 (one partial group), 18 (SmolLM2's 576: a full group and 2),
        // 48 and 64 (whole groups), 20, 31 and 9: partial groups of every AVX2 half split.
        // Rows not a multiple of 4 leave padded edge tiles; 1 to 9 activation rows cover every
        // tile width and remainders.
        for ty in TYPES {
            for &(n, k, m) in &[
                (4, 32, 1),
                (7, 96, 2),
                (9, 160, 3),
                (5, 576, 5),
                (16, 576, 4),
                (6, 1536, 9),
                (13, 2048, 1),
                (3, 640, 7),
                (5, 32 * 31, 3),
                (4, 32 * 9, 4),
            ] {
                check(ty, n, k, m);
            }
        }
    }

    #[test]
    fn large_products_run_in_parallel_and_agree() {
        check(LType::Q4_1, 300, 576, 6);
        check(LType::Q5_0, 258, 1536, 1);
    }

    /// Row `i` of a call with `m` rows is bit-identical to a call with row `i` alone, on every
    /// variant: a sequence's tokens cannot depend on what it is batched with.
    #[test]
    fn rows_do_not_depend_on_the_other_rows() {
        let (n, k) = (37, 576);
        let x = random_acts(9, k, 21);
        for ty in TYPES {
            let bytes = random_gguf(ty, n, k, 20);
            let w = LMatrix::from_gguf_bytes(&bytes, ty, n, k).unwrap();
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
        let (k, m) = (576, 5);
        let ws: Vec<LMatrix> = TYPES
            .iter()
            .enumerate()
            .map(|(j, &ty)| {
                let n = 20 + 3 * j;
                LMatrix::from_gguf_bytes(&random_gguf(ty, n, k, j as u64), ty, n, k).unwrap()
            })
            .collect();
        let refs: Vec<&LMatrix> = ws.iter().collect();
        let x = random_acts(m, k, 4);
        for kern in kernels() {
            let all = matmul_with(kern, &refs, &x, m);
            for (j, w) in ws.iter().enumerate() {
                assert_eq!(all[j], matmul_with(kern, &[w], &x, m)[0], "{kern:?} {j}");
            }
        }
    }

    /// Against candle's f32 matmul on the dequantized weights: the only difference is the
    /// 8-bit activations, whose rounding error is at most half a step, `amax / 254` of each
    /// 32-value block, per value; and against candle's own quantized kernel.
    #[test]
    fn matches_candle_within_activation_rounding() {
        let (n, k, m) = (24, 576, 3);
        for ty in TYPES {
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
            let qm = QMatMul::from_qtensor(candle_tensor(ty, &bytes, n, k)).unwrap();
            let theirs: Vec<f32> = qm
                .forward(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w = LMatrix::from_gguf_bytes(&bytes, ty, n, k).unwrap();
            for kern in kernels() {
                let got = &matmul_with(kern, &[&w], &x, m)[0];
                for i in 0..m {
                    for r in 0..n {
                        let bound: f32 = (0..k)
                            .map(|c| {
                                let blk = &x[i * k + c / BLOCK * BLOCK..][..BLOCK];
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

    /// Not a test: time per call of SmolLM2's FFN shapes for 1, 4, 8 and 16 rows, own kernel
    /// (each variant) against candle's quantized matmul and the dense path. Run with
    /// `cargo test --release --lib engine::legacy::tests::bench_rows -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement that prints timings and asserts nothing; run it by hand"]
    fn bench_rows() {
        use std::time::Instant;
        let time = |f: &mut dyn FnMut()| {
            f();
            let (mut best, reps) = (f64::MAX, 20);
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..reps {
                    f();
                }
                best = best.min(t.elapsed().as_secs_f64() * 1e6 / reps as f64);
            }
            best
        };
        for ty in [LType::Q4_1, LType::Q4_0, LType::Q5_0, LType::Q5_1] {
            for &(n, k) in &[(1536, 576), (576, 1536)] {
                let bytes = random_gguf(ty, n, k, 1);
                let w = LMatrix::from_gguf_bytes(&bytes, ty, n, k).unwrap();
                let qm = QMatMul::from_qtensor(candle_tensor(ty, &bytes, n, k)).unwrap();
                for m in [1usize, 4, 8, 16, 64] {
                    let x = random_acts(m, k, 2);
                    let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                    let mut line = format!("{} {n}x{k} m={m:2}:", ty.name());
                    for kern in kernels().into_iter().skip(1) {
                        let us = time(&mut || {
                            std::hint::black_box(matmul_with(kern, &[&w], &x, m));
                        });
                        line += &format!(" {kern:?} {us:8.1} µs");
                    }
                    let us = time(&mut || {
                        std::hint::black_box(qm.forward(&xt).unwrap());
                    });
                    line += &format!(" | candle {us:8.1} µs");
                    if m >= 16 {
                        let us = time(&mut || {
                            let wd =
                                Tensor::from_vec(w.dequantize(), (n, k), &Device::Cpu).unwrap();
                            std::hint::black_box(xt.matmul(&wd.t().unwrap()).unwrap());
                        });
                        line += &format!(" | dense {us:8.1} µs");
                    }
                    println!("{line}");
                }
            }
        }
    }

    /// No growth beyond the documented padding: the repacked matrix is the GGUF data's size
    /// plus zero rows up to a multiple of 4 and Q5's partial-group masks (a partial group's
    /// scales are not padded to a whole group).
    #[test]
    fn repacked_size_is_the_gguf_size_plus_row_padding() {
        // 576 wide: a 2-block partial group; 736: 23 blocks, an odd partial group of 7; 512:
        // whole groups only.
        for ty in TYPES {
            for &(n, k) in &[(8, 576), (7, 576), (12, 736), (4, 512), (5, 32)] {
                let bytes = random_gguf(ty, n, k, (n + k) as u64);
                let w = LMatrix::from_gguf_bytes(&bytes, ty, n, k).unwrap();
                let kb = k / BLOCK;
                let padded_rows = n.next_multiple_of(ROWS);
                // Zero rows up to a multiple of 4, the slack after the scales and, with fifth
                // bits, a partial group's masks up to a whole group's.
                let masks = if ty.high_bit() {
                    padded_rows * (groups(kb) * QH_GROUP - kb * 4)
                } else {
                    0
                };
                let slack = SLACK * 2 * (1 + ty.has_min() as usize);
                let pad = (padded_rows - n) * kb * ty.block_bytes() + masks + slack;
                let repacked = w.qs.len()
                    + w.qh.len()
                    + std::mem::size_of_val(w.d.as_slice())
                    + std::mem::size_of_val(w.mn.as_slice());
                assert_eq!(repacked, bytes.len() + pad, "{} n={n} k={k}", ty.name());
                // The unpadded layout still gives every row back.
                let want = dequant_gguf(ty, &bytes);
                for r in 0..n {
                    assert_eq!(
                        w.row(r),
                        want[r * k..(r + 1) * k],
                        "{} n={n} k={k} row {r}",
                        ty.name()
                    );
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        let bytes = random_gguf(LType::Q4_1, 2, 64, 1);
        assert!(LMatrix::from_gguf_bytes(&bytes, LType::Q4_1, 2, 64).is_ok());
        assert!(LMatrix::from_gguf_bytes(&bytes, LType::Q4_1, 1, 128).is_ok());
        assert!(LMatrix::from_gguf_bytes(&bytes[1..], LType::Q4_1, 2, 64).is_err());
        assert!(LMatrix::from_gguf_bytes(&bytes, LType::Q4_1, 4, 16).is_err());
        assert!(LMatrix::from_gguf_bytes(&bytes, LType::Q4_0, 2, 64).is_err());
    }
}
