//! Seeded random-weight GGUF files shaped like real models, for tests and for machines that
//! carry no model files (`scripts/gpu-check.sh`). Shared by `tests/synth.rs` and
//! `examples/gen_gguf.rs`; it is dev tooling and never part of the product binary.
//!
//! A file is a pure function of its [`Spec`]: the same seed, family, shape and quant mix give
//! the same bytes on any machine, however many threads write it. Every row of every tensor
//! draws from its own stream (seeded by the tensor's name and the row), so rows are written in
//! parallel and any row can be regenerated on its own.
//!
//! Quantized blocks are random bits with chosen scales: finite f16 scales, offsets that centre
//! each block, and element magnitudes such that every projection maps a unit-RMS input to a
//! unit-RMS output. Such a network has no preferred tokens, so its greedy choice would hang on
//! float rounding; [`Plan`] builds the logits with a margin instead (see [`Scales`]).

#![allow(dead_code)]

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use half::f16;

// ---------------------------------------------------------------------------------------------
// Random numbers

/// SplitMix64's finaliser: turns seeds and counters into well-mixed stream seeds.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of stream (`a`, `b`) under the file's seed.
pub fn stream_seed(seed: u64, a: u64, b: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ a).wrapping_add(b))
}

/// FNV-1a: a tensor's stream family comes from its name, so adding a tensor to a family never
/// changes the bytes of the others.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// wyrand: about one multiply per 8 bytes, which keeps a 5 GB file's bits cheap.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = (self.0 as u128).wrapping_mul((self.0 ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) as u64) ^ (t as u64)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&v[..rest.len()]);
        }
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [-1, 1): variance 1/3.
    pub fn sym(&mut self) -> f32 {
        2.0 * self.unit() - 1.0
    }

    /// Uniform in 0..n (n ≤ 2^32; the bias of the multiply-shift is below 2^-32).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * n as u64) >> 32) as u32
    }
}

const SQRT3: f32 = 1.732_050_8;

// ---------------------------------------------------------------------------------------------
// Tensor types and their blocks

/// The ggml tensor types the generator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    /// gpt-oss's experts: 32 E2M1 values and one power-of-two scale per block.
    Mxfp4,
}

impl QType {
    pub const ALL: [QType; 11] = [
        QType::F32,
        QType::F16,
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q5_1,
        QType::Q8_0,
        QType::Q4K,
        QType::Q5K,
        QType::Q6K,
        QType::Mxfp4,
    ];

    /// `ggml_type` as written in a GGUF tensor info.
    pub fn ggml_id(self) -> u32 {
        match self {
            QType::F32 => 0,
            QType::F16 => 1,
            QType::Q4_0 => 2,
            QType::Q4_1 => 3,
            QType::Q5_0 => 6,
            QType::Q5_1 => 7,
            QType::Q8_0 => 8,
            QType::Q4K => 12,
            QType::Q5K => 13,
            QType::Q6K => 14,
            QType::Mxfp4 => 39,
        }
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            QType::F32 | QType::F16 => 1,
            QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 | QType::Q8_0 | QType::Mxfp4 => {
                32
            }
            QType::Q4K | QType::Q5K | QType::Q6K => 256,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            QType::F32 => 4,
            QType::F16 => 2,
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q5_0 => 22,
            QType::Q5_1 => 24,
            QType::Q8_0 => 34,
            QType::Q4K => 144,
            QType::Q5K => 176,
            QType::Q6K => 210,
            QType::Mxfp4 => 17,
        }
    }

    /// Bytes of a row of `n` values (`n` a multiple of the block length).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_len() * self.block_bytes()
    }

    pub fn name(self) -> &'static str {
        match self {
            QType::F32 => "F32",
            QType::F16 => "F16",
            QType::Q4_0 => "Q4_0",
            QType::Q4_1 => "Q4_1",
            QType::Q5_0 => "Q5_0",
            QType::Q5_1 => "Q5_1",
            QType::Q8_0 => "Q8_0",
            QType::Q4K => "Q4_K",
            QType::Q5K => "Q5_K",
            QType::Q6K => "Q6_K",
            QType::Mxfp4 => "MXFP4",
        }
    }
}

impl fmt::Display for QType {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn put_f16(b: &mut [u8], x: f32) -> f32 {
    let h = f16::from_f32(x);
    b[..2].copy_from_slice(&h.to_le_bytes());
    h.to_f32()
}

fn get_f16(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// RMS of the integer levels of each format with uniformly random bits, including the offset
/// the format subtracts (so `d = sigma / LEVEL_RMS` gives elements of RMS `sigma`).
const Q8_0_LEVEL_RMS: f32 = 73.6; // -127..=127
const Q4_0_LEVEL_RMS: f32 = 4.637; // q - 8, q in 0..16
const Q4_1_LEVEL_RMS: f32 = 4.610; // q - 7.5 after the centring offset
const Q5_0_LEVEL_RMS: f32 = 9.247; // q - 16, q in 0..32
const Q5_1_LEVEL_RMS: f32 = 9.233; // q - 15.5
const Q6K_LEVEL_RMS: f32 = 18.47; // q - 32, q in 0..64
const MXFP4_LEVEL_RMS: f32 = 5.852; // ggml's doubled E2M1 table, every code alike
/// K-quant sub-block scales: Q4_K/Q5_K draw them from 32..64, Q6_K's magnitudes from 64..128.
const K_SCALE_RMS: f32 = 48.39;
const Q6K_SCALE_RMS: f32 = 97.27;

/// Each block's scale varies by ±30% around the row's, as real quantized weights do, so a
/// kernel that applies the wrong block's scale gives wrong numbers.
fn jitter(rng: &mut Rng) -> f32 {
    0.7 + 0.6 * rng.unit()
}

/// Packs eight 6-bit (scale, min) pairs the way `get_scale_min_k4` reads them.
fn pack_k_scales(sc: &[u8; 8], m: &[u8; 8], out: &mut [u8]) {
    for j in 0..4 {
        out[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
}

fn unpack_k_scale(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Fills `out` with one row of random valid blocks whose values have RMS ≈ `sigma`: quant
/// bits uniformly random, scales finite and offsets centring each block on zero.
pub fn random_row(q: QType, rng: &mut Rng, sigma: f32, out: &mut [u8]) {
    let bb = q.block_bytes();
    assert_eq!(out.len() % bb, 0, "a row is whole blocks");
    match q {
        QType::F32 => {
            for c in out.chunks_exact_mut(4) {
                c.copy_from_slice(&(rng.sym() * SQRT3 * sigma).to_le_bytes());
            }
        }
        QType::F16 => {
            for c in out.chunks_exact_mut(2) {
                put_f16(c, rng.sym() * SQRT3 * sigma);
            }
        }
        _ => {
            // The row's RMS stays `sigma` exactly: an embedding's magnitude sets its token's
            // logit margin (see `Scales`), and a row of one block would otherwise swing ±30%.
            let jit: Vec<f32> = (0..out.len() / bb).map(|_| jitter(rng)).collect();
            let norm = (jit.iter().map(|j| j * j).sum::<f32>() / jit.len() as f32).sqrt();
            if q != QType::Q8_0 {
                rng.fill(out);
            }
            for (b, j) in out.chunks_exact_mut(bb).zip(jit) {
                fix_block(q, b, sigma * j / norm, rng);
            }
        }
    }
}

/// Turns every 0x80 byte of `w` into 0x81.
fn no_minus_128(w: u64) -> u64 {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let t = w ^ 0x8080_8080_8080_8080;
    // 0x80 exactly where a byte of `t` is zero (no borrow between bytes).
    let zero = !(((t & LOW7) + LOW7) | t | LOW7);
    w | (zero >> 7)
}

/// Overwrites the scale fields of a block of random bits so its values have RMS ≈ `s` (a
/// Q8_0 block gets its bits here too).
fn fix_block(q: QType, b: &mut [u8], s: f32, rng: &mut Rng) {
    match q {
        QType::Q8_0 => {
            put_f16(b, s / Q8_0_LEVEL_RMS);
            // Quantizers emit -127..=127; -128 trips sign tricks in some SIMD dot products.
            // Fresh words, not the row's bits re-read: a byte loop over just-written memory
            // stalls on store forwarding and ran at a third of a GB/s.
            for q in b[2..].chunks_exact_mut(8) {
                q.copy_from_slice(&no_minus_128(rng.next_u64()).to_le_bytes());
            }
        }
        QType::Q4_0 => {
            put_f16(b, s / Q4_0_LEVEL_RMS);
        }
        QType::Q4_1 => {
            let d = put_f16(b, s / Q4_1_LEVEL_RMS);
            put_f16(&mut b[2..], -7.5 * d);
        }
        QType::Q5_0 => {
            put_f16(b, s / Q5_0_LEVEL_RMS);
        }
        QType::Q5_1 => {
            let d = put_f16(b, s / Q5_1_LEVEL_RMS);
            put_f16(&mut b[2..], -15.5 * d);
        }
        QType::Q4K | QType::Q5K => {
            // value = d·sc·q − dmin·m; m is chosen so each sub-block's mean is ~0.
            let (centre, dmin_ratio, levels) = if q == QType::Q4K {
                (7.5, 8.0, Q4_1_LEVEL_RMS)
            } else {
                (15.5, 16.0, Q5_1_LEVEL_RMS)
            };
            let d = put_f16(b, s / (K_SCALE_RMS * levels));
            let dmin = put_f16(&mut b[2..], d * dmin_ratio);
            let mut sc = [0u8; 8];
            let mut m = [0u8; 8];
            for j in 0..8 {
                sc[j] = 32 + rng.below(32) as u8;
                let mj = if dmin > 0.0 {
                    (centre * sc[j] as f32 * d / dmin).round()
                } else {
                    0.0
                };
                m[j] = mj.clamp(0.0, 63.0) as u8;
            }
            pack_k_scales(&sc, &m, &mut b[4..16]);
        }
        QType::Q6K => {
            for sc in &mut b[192..208] {
                let mag = 64 + rng.below(64) as i32;
                let v = if rng.next_u64() & 1 == 0 { mag } else { -mag };
                *sc = v as i8 as u8;
            }
            put_f16(&mut b[208..], s / (Q6K_SCALE_RMS * Q6K_LEVEL_RMS));
        }
        QType::Mxfp4 => {
            // A power of two as near as it gets to the RMS asked for: random codes have RMS
            // `MXFP4_LEVEL_RMS` times the scale.
            let e = ((s / MXFP4_LEVEL_RMS).log2().round() + 128.0).clamp(2.0, 254.0);
            b[0] = e as u8;
        }
        QType::F32 | QType::F16 => unreachable!("float rows are not blocks"),
    }
}

/// Decodes one row (as ggml's `dequantize_row_*` do).
pub fn dequantize_row(q: QType, src: &[u8], out: &mut [f32]) {
    let bb = q.block_bytes();
    let bl = q.block_len();
    assert_eq!(src.len() / bb * bl, out.len(), "row length");
    match q {
        QType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            return;
        }
        QType::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = get_f16(c);
            }
            return;
        }
        _ => {}
    }
    for (b, y) in src.chunks_exact(bb).zip(out.chunks_exact_mut(bl)) {
        match q {
            QType::Q8_0 => {
                let d = get_f16(b);
                for (o, &x) in y.iter_mut().zip(&b[2..34]) {
                    *o = d * x as i8 as f32;
                }
            }
            QType::Q4_0 | QType::Q4_1 => {
                let d = get_f16(b);
                let (m, qs) = if q == QType::Q4_1 {
                    (get_f16(&b[2..]), &b[4..20])
                } else {
                    (-8.0 * d, &b[2..18])
                };
                for j in 0..16 {
                    y[j] = d * (qs[j] & 0xF) as f32 + m;
                    y[j + 16] = d * (qs[j] >> 4) as f32 + m;
                }
            }
            QType::Q5_0 | QType::Q5_1 => {
                let d = get_f16(b);
                let (m, rest) = if q == QType::Q5_1 {
                    (get_f16(&b[2..]), &b[4..])
                } else {
                    (-16.0 * d, &b[2..])
                };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..20];
                for j in 0..16 {
                    let h0 = ((qh >> j) & 1) << 4;
                    let h1 = ((qh >> (j + 16)) & 1) << 4;
                    y[j] = d * ((qs[j] & 0xF) as u32 | h0) as f32 + m;
                    y[j + 16] = d * ((qs[j] >> 4) as u32 | h1) as f32 + m;
                }
            }
            QType::Q4K => {
                let d = get_f16(b);
                let dmin = get_f16(&b[2..]);
                let scales = &b[4..16];
                let qs = &b[16..144];
                for g in 0..4 {
                    let (s1, m1) = unpack_k_scale(2 * g, scales);
                    let (s2, m2) = unpack_k_scale(2 * g + 1, scales);
                    let q = &qs[32 * g..32 * g + 32];
                    for l in 0..32 {
                        y[64 * g + l] = d * s1 as f32 * (q[l] & 0xF) as f32 - dmin * m1 as f32;
                        y[64 * g + 32 + l] = d * s2 as f32 * (q[l] >> 4) as f32 - dmin * m2 as f32;
                    }
                }
            }
            QType::Q5K => {
                let d = get_f16(b);
                let dmin = get_f16(&b[2..]);
                let scales = &b[4..16];
                let qh = &b[16..48];
                let qs = &b[48..176];
                for g in 0..4 {
                    let (s1, m1) = unpack_k_scale(2 * g, scales);
                    let (s2, m2) = unpack_k_scale(2 * g + 1, scales);
                    let q = &qs[32 * g..32 * g + 32];
                    for l in 0..32 {
                        let h1 = ((qh[l] >> (2 * g)) & 1) << 4;
                        let h2 = ((qh[l] >> (2 * g + 1)) & 1) << 4;
                        y[64 * g + l] =
                            d * s1 as f32 * ((q[l] & 0xF) | h1) as f32 - dmin * m1 as f32;
                        y[64 * g + 32 + l] =
                            d * s2 as f32 * ((q[l] >> 4) | h2) as f32 - dmin * m2 as f32;
                    }
                }
            }
            QType::Q6K => {
                let ql = &b[..128];
                let qh = &b[128..192];
                let sc = &b[192..208];
                let d = get_f16(&b[208..]);
                for half in 0..2 {
                    let ql = &ql[64 * half..];
                    let qh = &qh[32 * half..];
                    let y = &mut y[128 * half..];
                    let sc = &sc[8 * half..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8 as f32) * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8 as f32) * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8 as f32) * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8 as f32) * q4 as f32;
                    }
                }
            }
            QType::Mxfp4 => {
                let d = mxfp4_scale(b[0]);
                for j in 0..16 {
                    y[j] = MXFP4_VALUES[(b[1 + j] & 0x0F) as usize] as f32 * d;
                    y[j + 16] = MXFP4_VALUES[(b[1 + j] >> 4) as usize] as f32 * d;
                }
            }
            QType::F32 | QType::F16 => unreachable!(),
        }
    }
}

/// ggml's `kvalues_mxfp4`: E2M1 values, doubled, by code.
const MXFP4_VALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// ggml's `e8m0_to_fp32_half`: `2^(e - 128)`.
fn mxfp4_scale(e: u8) -> f32 {
    f32::from_bits(if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    })
}

fn nearest(x: f32, lo: i32, hi: i32) -> i32 {
    (x.round() as i32).clamp(lo, hi)
}

/// Encodes one row with plain round-to-nearest scales (llama.cpp's reference quantizers
/// without their error search): good enough for weights that are random anyway.
pub fn quantize_row(q: QType, x: &[f32], out: &mut [u8]) {
    let bb = q.block_bytes();
    let bl = q.block_len();
    assert_eq!(x.len() / bl * bb, out.len(), "row length");
    match q {
        QType::F32 => {
            for (c, v) in out.chunks_exact_mut(4).zip(x) {
                c.copy_from_slice(&v.to_le_bytes());
            }
            return;
        }
        QType::F16 => {
            for (c, &v) in out.chunks_exact_mut(2).zip(x) {
                put_f16(c, v);
            }
            return;
        }
        _ => {}
    }
    let inv = |d: f32| if d != 0.0 { 1.0 / d } else { 0.0 };
    // The value of largest magnitude, with its sign.
    let signed_max = |v: &[f32]| {
        v.iter()
            .fold(0f32, |a, &b| if b.abs() > a.abs() { b } else { a })
    };
    for (y, b) in x.chunks_exact(bl).zip(out.chunks_exact_mut(bb)) {
        match q {
            QType::Q8_0 => {
                let amax = y.iter().fold(0f32, |a, v| a.max(v.abs()));
                let id = inv(put_f16(b, amax / 127.0));
                for (o, v) in b[2..].iter_mut().zip(y) {
                    *o = nearest(v * id, -127, 127) as i8 as u8;
                }
            }
            QType::Q4_0 | QType::Q5_0 => {
                let (half, top, qs_at) = if q == QType::Q4_0 {
                    (8.0, 15, 2)
                } else {
                    (16.0, 31, 6)
                };
                let id = inv(put_f16(b, signed_max(y) / -half));
                let l: Vec<i32> = y.iter().map(|v| nearest(v * id + half, 0, top)).collect();
                pack_low_32(&l, &mut b[qs_at..qs_at + 16]);
                if q == QType::Q5_0 {
                    b[2..6].copy_from_slice(&high_bits_32(&l).to_le_bytes());
                }
            }
            QType::Q4_1 | QType::Q5_1 => {
                let (top, qs_at) = if q == QType::Q4_1 { (15, 4) } else { (31, 8) };
                let lo = y.iter().fold(f32::INFINITY, |a, &v| a.min(v));
                let hi = y.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let id = inv(put_f16(b, (hi - lo) / top as f32));
                let m = put_f16(&mut b[2..], lo);
                let l: Vec<i32> = y.iter().map(|v| nearest((v - m) * id, 0, top)).collect();
                pack_low_32(&l, &mut b[qs_at..qs_at + 16]);
                if q == QType::Q5_1 {
                    b[4..8].copy_from_slice(&high_bits_32(&l).to_le_bytes());
                }
            }
            QType::Q4K | QType::Q5K => quantize_k(q, y, b),
            QType::Q6K => {
                let mut scales = [0f32; 16];
                for (s, sub) in scales.iter_mut().zip(y.chunks_exact(16)) {
                    *s = signed_max(sub) / -32.0;
                }
                let smax = scales.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = put_f16(&mut b[208..], smax / 127.0);
                let id = inv(d);
                let mut l = [0i32; 256];
                for (j, sub) in y.chunks_exact(16).enumerate() {
                    let sc = nearest(scales[j] * id, -127, 127);
                    b[192 + j] = sc as i8 as u8;
                    let idl = inv(d * sc as f32);
                    for (k, v) in sub.iter().enumerate() {
                        l[16 * j + k] = nearest(v * idl + 32.0, 0, 63);
                    }
                }
                for half in 0..2 {
                    let l = &l[128 * half..];
                    for i in 0..32 {
                        let q = |k: usize| l[i + 32 * k] as u8;
                        b[64 * half + i] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
                        b[64 * half + i + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
                        b[128 + 32 * half + i] = (q(0) >> 4)
                            | ((q(1) >> 4) << 2)
                            | ((q(2) >> 4) << 4)
                            | ((q(3) >> 4) << 6);
                    }
                }
            }
            QType::Mxfp4 => {
                // ggml's quantize_row_mxfp4_ref: the exponent from the block's maximum, each
                // value to its nearest code.
                let amax = y.iter().fold(0f32, |a, v| a.max(v.abs()));
                let e = if amax > 0.0 {
                    (amax.log2().floor() - 2.0 + 127.0) as u8
                } else {
                    0
                };
                b[0] = e;
                let d = mxfp4_scale(e);
                let best = |v: f32| {
                    (0..16)
                        .min_by(|&i, &j| {
                            let ei = (MXFP4_VALUES[i] as f32 * d - v).abs();
                            let ej = (MXFP4_VALUES[j] as f32 * d - v).abs();
                            ei.total_cmp(&ej)
                        })
                        .unwrap_or(0) as u8
                };
                for j in 0..16 {
                    b[1 + j] = best(y[j]) | (best(y[j + 16]) << 4);
                }
            }
            QType::F32 | QType::F16 => unreachable!(),
        }
    }
}

/// Low nibbles of 32 levels: element j and j + 16 share byte j.
fn pack_low_32(l: &[i32], out: &mut [u8]) {
    for j in 0..16 {
        out[j] = (l[j] as u8 & 0xF) | ((l[j + 16] as u8 & 0xF) << 4);
    }
}

/// Bit 4 of each of 32 levels, element i in bit i.
fn high_bits_32(l: &[i32]) -> u32 {
    l.iter()
        .enumerate()
        .fold(0u32, |h, (i, &v)| h | ((((v >> 4) & 1) as u32) << i))
}

fn quantize_k(q: QType, y: &[f32], b: &mut [u8]) {
    let top = if q == QType::Q4K { 15 } else { 31 };
    let mut scale = [0f32; 8];
    let mut minv = [0f32; 8];
    for (j, sub) in y.chunks_exact(32).enumerate() {
        let lo = sub.iter().fold(0f32, |a, &v| a.min(v));
        let hi = sub.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        scale[j] = (hi - lo) / top as f32;
        minv[j] = -lo;
    }
    let smax = scale.iter().fold(0f32, |a, &v| a.max(v));
    let mmax = minv.iter().fold(0f32, |a, &v| a.max(v));
    let d = put_f16(b, smax / 63.0);
    let dmin = put_f16(&mut b[2..], mmax / 63.0);
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        sc[j] = if d > 0.0 {
            nearest(scale[j] / d, 0, 63) as u8
        } else {
            0
        };
        m[j] = if dmin > 0.0 {
            nearest(minv[j] / dmin, 0, 63) as u8
        } else {
            0
        };
    }
    pack_k_scales(&sc, &m, &mut b[4..16]);
    let mut l = [0u8; 256];
    for (j, sub) in y.chunks_exact(32).enumerate() {
        let dl = d * sc[j] as f32;
        let ml = dmin * m[j] as f32;
        for (k, v) in sub.iter().enumerate() {
            l[32 * j + k] = if dl > 0.0 {
                nearest((v + ml) / dl, 0, top) as u8
            } else {
                0
            };
        }
    }
    let qs_at = if q == QType::Q4K { 16 } else { 48 };
    if q == QType::Q5K {
        b[16..48].fill(0);
    }
    for g in 0..4 {
        for i in 0..32 {
            let lo = l[64 * g + i];
            let hi = l[64 * g + 32 + i];
            b[qs_at + 32 * g + i] = (lo & 0xF) | ((hi & 0xF) << 4);
            if q == QType::Q5K {
                b[16 + i] |= ((lo >> 4) << (2 * g)) | ((hi >> 4) << (2 * g + 1));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF metadata values and the writer

/// A GGUF metadata value. Arrays carry their element type so an empty one is still typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(u32, Vec<Meta>),
}

const GGUF_STRING: u32 = 8;
const GGUF_BOOL: u32 = 7;
const GGUF_INT32: u32 = 5;

impl Meta {
    pub fn type_id(&self) -> u32 {
        match self {
            Meta::U8(_) => 0,
            Meta::I8(_) => 1,
            Meta::U16(_) => 2,
            Meta::I16(_) => 3,
            Meta::U32(_) => 4,
            Meta::I32(_) => GGUF_INT32,
            Meta::F32(_) => 6,
            Meta::Bool(_) => 7,
            Meta::Str(_) => GGUF_STRING,
            Meta::Array(..) => 9,
            Meta::U64(_) => 10,
            Meta::I64(_) => 11,
            Meta::F64(_) => 12,
        }
    }

    pub fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Meta {
        Meta::Array(
            GGUF_STRING,
            items.into_iter().map(|s| Meta::Str(s.into())).collect(),
        )
    }

    pub fn i32s(items: impl IntoIterator<Item = i32>) -> Meta {
        Meta::Array(GGUF_INT32, items.into_iter().map(Meta::I32).collect())
    }

    pub fn str(s: impl Into<String>) -> Meta {
        Meta::Str(s.into())
    }

    fn write_value(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            Meta::U8(v) => w.write_all(&[*v]),
            Meta::I8(v) => w.write_all(&v.to_le_bytes()),
            Meta::U16(v) => w.write_all(&v.to_le_bytes()),
            Meta::I16(v) => w.write_all(&v.to_le_bytes()),
            Meta::U32(v) => w.write_all(&v.to_le_bytes()),
            Meta::I32(v) => w.write_all(&v.to_le_bytes()),
            Meta::U64(v) => w.write_all(&v.to_le_bytes()),
            Meta::I64(v) => w.write_all(&v.to_le_bytes()),
            Meta::F32(v) => w.write_all(&v.to_le_bytes()),
            Meta::F64(v) => w.write_all(&v.to_le_bytes()),
            Meta::Bool(v) => w.write_all(&[*v as u8]),
            Meta::Str(s) => write_str(w, s),
            Meta::Array(ty, items) => {
                w.write_all(&ty.to_le_bytes())?;
                w.write_all(&(items.len() as u64).to_le_bytes())?;
                for it in items {
                    if it.type_id() != *ty {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("GGUF array of type {ty} holds a {:?}", it),
                        ));
                    }
                    it.write_value(w)?;
                }
                Ok(())
            }
        }
    }

    /// From candle's reader, for `--tokenizer-from`.
    pub fn from_candle(v: &candle_core::quantized::gguf_file::Value) -> Meta {
        use candle_core::quantized::gguf_file::Value as V;
        match v {
            V::U8(x) => Meta::U8(*x),
            V::I8(x) => Meta::I8(*x),
            V::U16(x) => Meta::U16(*x),
            V::I16(x) => Meta::I16(*x),
            V::U32(x) => Meta::U32(*x),
            V::I32(x) => Meta::I32(*x),
            V::U64(x) => Meta::U64(*x),
            V::I64(x) => Meta::I64(*x),
            V::F32(x) => Meta::F32(*x),
            V::F64(x) => Meta::F64(*x),
            V::Bool(x) => Meta::Bool(*x),
            V::String(x) => Meta::Str(x.clone()),
            V::Array(items) => {
                let items: Vec<Meta> = items.iter().map(Meta::from_candle).collect();
                // candle drops the element type of an empty array; any type reads back empty.
                let ty = items.first().map_or(GGUF_INT32, Meta::type_id);
                Meta::Array(ty, items)
            }
        }
    }
}

fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// GGUF's default `general.alignment`.
pub const ALIGN: u64 = 32;

fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

/// Writes the GGUF v3 header: metadata, tensor infos (offsets packed in order, each aligned)
/// and the padding up to the data section. Returns the bytes written.
pub fn write_header(
    w: &mut impl Write,
    metadata: &[(String, Meta)],
    tensors: &[PlannedTensor],
) -> io::Result<u64> {
    let mut c = CountingWriter { inner: w, n: 0 };
    c.write_all(b"GGUF")?;
    c.write_all(&3u32.to_le_bytes())?;
    c.write_all(&(tensors.len() as u64).to_le_bytes())?;
    c.write_all(&(metadata.len() as u64).to_le_bytes())?;
    for (k, v) in metadata {
        write_str(&mut c, k)?;
        c.write_all(&v.type_id().to_le_bytes())?;
        v.write_value(&mut c)?;
    }
    for t in tensors {
        write_str(&mut c, &t.name)?;
        c.write_all(&(t.dims.len() as u32).to_le_bytes())?;
        for d in &t.dims {
            c.write_all(&(*d as u64).to_le_bytes())?;
        }
        c.write_all(&t.qtype.ggml_id().to_le_bytes())?;
        c.write_all(&t.offset.to_le_bytes())?;
    }
    let pad = align_up(c.n) - c.n;
    c.write_all(&vec![0u8; pad as usize])?;
    Ok(c.n)
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// Families as data

/// A tensor dimension, in terms of the shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Hidden,
    /// Query heads × head dimension.
    QueryWidth,
    /// KV heads × head dimension.
    KvWidth,
    /// The head dimension.
    Head,
    Ffn,
    Vocab,
    /// Experts of a mixture-of-experts layer.
    Experts,
    /// Each expert's FFN inner size, and twice it (Gemma 4 stacks each expert's gate and up
    /// rows in one tensor, `ffn_gate_up_exps`).
    FfnExp,
    FfnExpPair,
    /// The number of query heads (gpt-oss's attention sinks: one per head).
    Heads,
    /// Gemma 4: one layer's per-layer embedding width, all layers' together, and the pairs of
    /// a full layer's head (`rope_freqs`).
    PerLayer,
    PerLayerAll,
    RopePairs,
    /// Fused projections: queries, keys and values (phi3), gate and up (phi3).
    QkvWidth,
    FfnPair,
    /// State-space layers: the inner width, the convolution width, the state size, the heads
    /// (Mamba-2) or Δ rank (Mamba), the groups, and each group's share of the inner width.
    SsmInner,
    SsmConv,
    SsmState,
    SsmRank,
    SsmGroups,
    SsmGroupWidth,
    /// Mamba's `x, z` projection (2 × inner) and its `Δ, B, C` projection (rank + 2 × state).
    Mamba1InProj,
    Mamba1Xdb,
    /// Mamba-2's convolution channels (x, B, C) and its input projection (z, x, B, C, Δ).
    Mamba2ConvChannels,
    Mamba2InProj,
    /// A dimension of one (Mamba-2's per-head A and D are stored as 1 × heads).
    One,
    /// Qwen3.5: the query projection's queries and output-gate logits (2 × heads × head
    /// dimension), and a Gated DeltaNet layer's q/k/v channels (2 × key heads × state + inner).
    QueryGateWidth,
    DeltaQkv,
}

/// Which matrix a projection is: picks its quant type in a mix (as llama.cpp's
/// `tensor_category`) and its scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cat {
    AttnQ,
    AttnK,
    AttnV,
    AttnOut,
    /// Fused query/key/value projection (phi3).
    AttnQkv,
    FfnGate,
    FfnUp,
    FfnDown,
    /// Gemma 4's per-layer input gate (hidden → width) and projection back.
    PerLayerGate,
    PerLayerProj,
    /// State-space projections: input, output, Mamba's `x → Δ, B, C` and `Δ` up-projection.
    SsmIn,
    SsmOut,
    /// Mamba's output projection: its input is not normed (see [`MAMBA_GATED_RMS`]).
    SsmOutUnnormed,
    SsmX,
    SsmDt,
}

impl Cat {
    /// Whether the matrix writes into the residual stream (its output scale sets how much the
    /// layers move the hidden state; see [`Scales`]).
    fn writes_residual(self) -> bool {
        matches!(
            self,
            Cat::AttnOut | Cat::FfnDown | Cat::SsmOut | Cat::SsmOutUnnormed
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    TokenEmbd,
    /// The LM head (absent when embeddings are tied).
    Output,
    OutputNorm,
    /// An RMSNorm weight inside a layer (attention, FFN, per-head Q/K norms).
    Norm,
    /// A projection bias (qwen2).
    Bias,
    /// A mixture-of-experts router (`ffn_gate_inp`), kept in F32 as llama-quantize does.
    Router,
    /// gpt-oss's attention sinks: a learned logit per head, kept in F32.
    Sink,
    Proj(Cat),
    /// A norm on a branch's output before the residual add (Gemma 4): its weight sets how
    /// much the branch moves the stream.
    PostNorm,
    /// Gemma 4's per-layer output multiplier, one value.
    LayerScale,
    /// Gemma 4's per-expert output multiplier (`ffn_down_exps.scale`): spread widely, so each
    /// chosen expert's share of the block moves with it.
    ExpertScale,
    /// Gemma 4's router input scale (`ffn_gate_inp.scale`), one per hidden value. Its input is
    /// RMS-normed and divided by sqrt(hidden); a scale near 3·sqrt(hidden) spreads the logits
    /// by about 3, so a token's second expert usually weighs clearly less than its first and a
    /// near-tie with the third (which float noise may flip) moves the block little.
    RouterScale,
    /// `rope_freqs`: 1 for rotated pairs, 1e30 for the others.
    RopeFreqs,
    /// Phi's `rope_factors_long` (true) and `rope_factors_short`.
    RopeFactors(bool),
    /// Gemma 4's per-layer token embeddings.
    PerLayerEmbd,
    /// A matrix llama-quantize leaves in float (`per_layer_model_proj`).
    PlainProj,
    /// A state-space layer's small parameter, kept in F32 (llama-quantize leaves `ssm_conv1d`
    /// and the 1-D ones unquantized).
    Ssm(SsmPart),
}

/// Which layers have a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// Layers that own a KV cache (not Gemma 4's shared-KV ones).
    OwnsKv,
    /// Layers with a value projection of their own.
    OwnsValue,
    /// Shapes with per-layer embeddings.
    PerLayer,
    /// Shapes with Llama 3.1 RoPE scaling.
    RopeScaled,
    /// Shapes with Phi's long-context RoPE factors.
    LongRope,
    /// Layers with a dense FFN, and with a mixture of experts.
    Dense,
    Moe,
    /// A hybrid's state-space layers, and its attention layers (every layer of a file that is
    /// not a hybrid).
    Recurrent,
    Attention,
}

/// The values a state-space parameter is drawn from (as the Mamba initialisers draw them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SsmPart {
    /// Convolution taps: unit-RMS output for a unit-RMS input.
    Conv,
    ConvBias,
    /// Mamba-2's decay per head, `-U(1, 16)`.
    A2,
    /// Mamba's decay per state element, `-(n + 1)`.
    A1,
    /// The skip, near 1.
    D,
    /// The Δ bias: softplus⁻¹ of a Δ log-uniform in [0.001, 0.1].
    DtBias,
    /// A Gated DeltaNet head's decay rate `-exp(A_log)`, `-U(0.1, 1)`: with the softplus of
    /// the projected α near 0.7 each token keeps about 60% of the state, so the state carries
    /// the prompt (Qwen3.5's own `-U(0, 16)` would forget it within a token or two).
    DeltaA,
    /// A Gated DeltaNet layer's `dt_bias`, near 0.
    DeltaDtBias,
}

/// One tensor of a family; `{i}` in the name is the layer index.
#[derive(Debug, Clone, Copy)]
pub struct TensorTemplate {
    pub name: &'static str,
    /// ggml order: the row length first.
    pub dims: &'static [Dim],
    pub role: Role,
    pub when: When,
}

const fn t(name: &'static str, dims: &'static [Dim], role: Role) -> TensorTemplate {
    TensorTemplate {
        name,
        dims,
        role,
        when: When::Always,
    }
}

const fn t_when(
    name: &'static str,
    dims: &'static [Dim],
    role: Role,
    when: When,
) -> TensorTemplate {
    TensorTemplate {
        name,
        dims,
        role,
        when,
    }
}

/// A shape field a metadata key reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Context,
    Hidden,
    Layers,
    Ffn,
    /// The experts' width in a mixture of experts, else the dense FFN's (Granite hybrids'
    /// `feed_forward_length`).
    FfnOrExp,
    /// The shared expert's width beside routed experts (the shape's `ffn`), 0 without experts.
    SharedFfn,
    Heads,
    KvHeads,
    HeadDim,
    Vocab,
    RmsEps,
    RopeBase,
    Experts,
    ExpertsUsed,
    FfnExp,
    /// The rotated width of a head.
    RopeDim,
    /// Gemma 4: per-layer arrays and the sliding layers' head width.
    FfnByLayer,
    KvHeadsByLayer,
    SwaPattern,
    HeadDimSwa,
    SharedKv,
    PerLayerWidth,
    SsmConv,
    SsmInner,
    SsmState,
    SsmRank,
    SsmGroups,
    /// Qwen3.5: M-RoPE sections over the rotated pairs (time, height, width, 0), split as
    /// Qwen3.5's `[11, 11, 10]` splits 32 pairs; the layer period of full attention.
    RopeSections,
    FullAttnInterval,
    /// A field written only for shapes with experts (Gemma 4's dense and MoE presets share a
    /// family).
    IfExperts(&'static Field),
}

/// A metadata value a family writes whatever the shape (Granite's multipliers, Gemma 2's
/// soft-caps).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Const {
    F32(f32),
    U32(u32),
    Str(&'static str),
    Bool(bool),
}

/// A family's vocabulary conventions for the synthetic tokenizer.
#[derive(Debug, Clone, Copy)]
pub struct TokStyle {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `gemma4` (BPE over UTF-8 with `▁`
    /// for spaces and byte-fallback tokens).
    pub model: &'static str,
    /// `tokenizer.ggml.pre`: the pre-tokenizer both Influence and llama.cpp know by this name.
    pub pre: &'static str,
    /// Control tokens, placed at the end of the vocabulary (as Llama 3 does).
    pub specials: &'static [&'static str],
    pub bos: &'static str,
    pub eos: &'static str,
    pub add_bos: bool,
    pub chat_template: &'static str,
}

/// A model family: everything the generator needs to write its files.
///
/// Adding one is data: its tensors (qwen2 adds `attn_{q,k,v}.bias` as [`Role::Bias`], qwen3
/// `attn_{q,k}_norm` of [`Dim::Head`] as [`Role::Norm`]), the shape keys its loader reads, its
/// vocabulary style and presets, then an entry in [`FAMILIES`]. A family whose forward pass
/// rescales the residual stream (Gemma multiplies embeddings by sqrt(hidden), soft-caps
/// logits) needs [`Scales`] to account for it, or its greedy margins shrink; a mixture of
/// experts adds 3-D expert tensors (a third [`Dim`]) with the router as a projection.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// `general.architecture`, the prefix of the shape keys.
    pub arch: &'static str,
    /// Tensors before the layers, of each layer (in file order), and after the layers.
    pub head: &'static [TensorTemplate],
    pub layer: &'static [TensorTemplate],
    pub tail: &'static [TensorTemplate],
    /// `{arch}.{key}` → shape field. `attention.key_length`/`value_length` are added for every
    /// family when the head dimension is not hidden / heads.
    pub meta: &'static [(&'static str, Field)],
    /// `{arch}.{key}` → a fixed value.
    pub consts: &'static [(&'static str, Const)],
    /// The decoder multiplies token embeddings by sqrt(hidden) (Gemma).
    pub embeddings_scaled: bool,
    pub tok: TokStyle,
    pub presets: &'static [(&'static str, Shape)],
}

/// The dimensions and numerics of one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// Output projection shares `token_embd` (no `output.weight`).
    pub tied: bool,
    /// Mixture of experts: experts per layer (0: a dense FFN), experts per token, and each
    /// expert's inner size.
    pub experts: usize,
    pub experts_used: usize,
    pub ffn_exp: usize,
    /// Gemma 4: layers of two kinds (None: every layer alike).
    pub kinds: Option<LayerKinds>,
    /// Llama 3.1-style RoPE scaling, written as `rope_freqs` (None: plain RoPE).
    pub llama3_rope: Option<Llama3Rope>,
    /// Rotated width of a head, where only part of it turns (Phi-4-mini: three quarters).
    pub rope_dim: Option<usize>,
    /// Phi-3.5/Phi-4-mini "longrope": per-frequency divisors for short and long contexts
    /// (`rope_factors_short`, `rope_factors_long`) and a magnitude factor on the rotation.
    pub longrope: Option<LongRope>,
    /// State-space layers (Mamba families; zero elsewhere).
    pub ssm: Ssm,
}

/// Phi's long-context RoPE: the short factors rise from 1 to `short_max` across the
/// frequencies, the long ones are twice those; `attn_factor` scales cos and sin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LongRope {
    pub short_max: f32,
    pub attn_factor: f32,
}

/// Llama 3.1's "llama3" RoPE scaling: frequencies whose wavelength exceeds the original context
/// over `low_freq_factor` are divided by `factor`, those below it over `high_freq_factor` kept,
/// the band between blended (the converter's `rope_freqs` values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Rope {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_context: usize,
}

impl Llama3Rope {
    /// The divisor of each of a head's `pairs` frequencies.
    pub fn factors(&self, base: f32, pairs: usize) -> Vec<f32> {
        let ctx = self.original_context as f64;
        let (lo, hi) = (self.low_freq_factor as f64, self.high_freq_factor as f64);
        (0..pairs)
            .map(|i| {
                let freq = 1.0 / (base as f64).powf(2.0 * i as f64 / (2 * pairs) as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                if wavelen < ctx / hi {
                    1.0
                } else if wavelen > ctx / lo {
                    self.factor
                } else {
                    let smooth = (ctx / wavelen - lo) / (hi - lo);
                    (1.0 / ((1.0 - smooth) / self.factor as f64 + smooth)) as f32
                }
            })
            .collect()
    }
}

/// Gemma 4's two kinds of layer and what differs between them. Full layers have the shape's
/// head width and KV heads; sliding-window layers these.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerKinds {
    /// Every `full_every`-th layer (1-based) attends to every position, the others through the
    /// sliding window.
    pub full_every: usize,
    pub swa_head_dim: usize,
    pub swa_kv_heads: usize,
    /// Layers at the end that read the KV cache of the last cache-owning layer of their kind;
    /// they have no K/V projections.
    pub shared_kv: usize,
    /// Shared-KV layers' FFN is this many times wider (Gemma 4's double-wide MLP).
    pub shared_ffn_mult: usize,
    /// Full layers have no `attn_v`: their values are their keys (Gemma 4's attention_k_eq_v).
    pub full_k_is_v: bool,
    /// Width of each layer's per-layer token embedding (0: none).
    pub per_layer: usize,
    /// Head pairs a full layer rotates, over all its pairs; `rope_freqs` gives the rest a
    /// factor of 1e30 (Gemma 4's proportional RoPE).
    pub full_rope_fraction: f32,
}

/// The shape of a Mamba layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ssm {
    pub inner: usize,
    pub state: usize,
    pub conv: usize,
    /// Mamba-2: heads (`time_step_rank`); Mamba: the rank of Δ.
    pub rank: usize,
    pub groups: usize,
    /// A hybrid (Granite 4.0 H): every `attn_every`-th layer (1-based) is attention, the
    /// others state-space. 0: every layer is what the family's template says.
    pub attn_every: usize,
}

/// No state-space layers.
pub const NO_SSM: Ssm = Ssm {
    inner: 0,
    state: 0,
    conv: 0,
    rank: 0,
    groups: 0,
    attn_every: 0,
};

impl Shape {
    /// Dimension `d` of a tensor of `layer`.
    fn dim(&self, d: Dim, layer: usize) -> usize {
        let k = self.kinds;
        match d {
            Dim::Hidden => self.hidden,
            Dim::QueryWidth => self.heads * self.head_dim_at(layer),
            Dim::KvWidth => self.kv_heads_at(layer) * self.head_dim_at(layer),
            Dim::Head => self.head_dim_at(layer),
            Dim::Ffn => self.ffn_at(layer),
            Dim::Vocab => self.vocab,
            Dim::Experts => self.experts,
            Dim::FfnExp => self.ffn_exp,
            Dim::FfnExpPair => 2 * self.ffn_exp,
            Dim::SsmInner => self.ssm.inner,
            Dim::SsmConv => self.ssm.conv,
            Dim::SsmState => self.ssm.state,
            Dim::SsmRank => self.ssm.rank,
            Dim::SsmGroups => self.ssm.groups,
            Dim::SsmGroupWidth => self.ssm.inner / self.ssm.groups.max(1),
            Dim::Mamba1InProj => 2 * self.ssm.inner,
            Dim::Mamba1Xdb => self.ssm.rank + 2 * self.ssm.state,
            Dim::Mamba2ConvChannels => self.ssm.inner + 2 * self.ssm.groups * self.ssm.state,
            Dim::Mamba2InProj => {
                2 * self.ssm.inner + 2 * self.ssm.groups * self.ssm.state + self.ssm.rank
            }
            Dim::Heads => self.heads,
            Dim::PerLayer => k.map_or(0, |k| k.per_layer),
            Dim::PerLayerAll => k.map_or(0, |k| k.per_layer) * self.layers,
            Dim::RopePairs => self.rope_dim.unwrap_or(self.head_dim) / 2,
            Dim::QkvWidth => (self.heads + 2 * self.kv_heads) * self.head_dim,
            Dim::FfnPair => 2 * self.ffn,
            Dim::One => 1,
            Dim::QueryGateWidth => 2 * self.heads * self.head_dim_at(layer),
            Dim::DeltaQkv => 2 * self.ssm.groups * self.ssm.state + self.ssm.inner,
        }
    }

    pub fn is_swa(&self, layer: usize) -> bool {
        self.kinds
            .is_some_and(|k| !(layer + 1).is_multiple_of(k.full_every))
    }

    pub fn head_dim_at(&self, layer: usize) -> usize {
        match self.kinds {
            Some(k) if self.is_swa(layer) => k.swa_head_dim,
            _ => self.head_dim,
        }
    }

    /// A hybrid's state-space layer.
    pub fn is_recurrent(&self, layer: usize) -> bool {
        self.ssm.attn_every > 0 && !(layer + 1).is_multiple_of(self.ssm.attn_every)
    }

    pub fn kv_heads_at(&self, layer: usize) -> usize {
        if self.is_recurrent(layer) {
            // llama.cpp's hybrids mark a recurrent layer by its zero KV heads.
            return 0;
        }
        match self.kinds {
            Some(k) if self.is_swa(layer) => k.swa_kv_heads,
            _ => self.kv_heads,
        }
    }

    /// Layers that own a KV cache: all but Gemma 4's shared-KV ones at the end.
    pub fn kv_layers(&self) -> usize {
        self.layers - self.kinds.map_or(0, |k| k.shared_kv)
    }

    pub fn ffn_at(&self, layer: usize) -> usize {
        match self.kinds {
            Some(k) if layer >= self.kv_layers() => self.ffn * k.shared_ffn_mult,
            _ => self.ffn,
        }
    }

    fn has(&self, when: When, layer: usize) -> bool {
        let k = self.kinds;
        match when {
            When::Always => true,
            When::OwnsKv => layer < self.kv_layers(),
            When::OwnsValue => {
                // Full layers of a file with `full_k_is_v` take their keys as values.
                let keys_are_values = k.is_some_and(|k| k.full_k_is_v) && !self.is_swa(layer);
                layer < self.kv_layers() && !keys_are_values
            }
            When::PerLayer => k.is_some_and(|k| k.per_layer > 0),
            When::RopeScaled => self.llama3_rope.is_some(),
            When::LongRope => self.longrope.is_some(),
            When::Dense => self.experts == 0,
            When::Moe => self.experts > 0,
            When::Recurrent => self.is_recurrent(layer),
            When::Attention => !self.is_recurrent(layer),
        }
    }

    fn field(&self, f: Field) -> Meta {
        match f {
            Field::Context => Meta::U32(self.context as u32),
            Field::Hidden => Meta::U32(self.hidden as u32),
            Field::Layers => Meta::U32(self.layers as u32),
            Field::Ffn => Meta::U32(self.ffn as u32),
            Field::Heads => Meta::U32(self.heads as u32),
            Field::KvHeads => Meta::U32(self.kv_heads as u32),
            Field::HeadDim => Meta::U32(self.head_dim as u32),
            Field::Vocab => Meta::U32(self.vocab as u32),
            Field::RmsEps => Meta::F32(self.rms_eps),
            Field::RopeBase => Meta::F32(self.rope_base),
            Field::Experts => Meta::U32(self.experts as u32),
            Field::ExpertsUsed => Meta::U32(self.experts_used as u32),
            Field::FfnExp => Meta::U32(self.ffn_exp as u32),
            Field::FfnOrExp => Meta::U32(if self.experts > 0 {
                self.ffn_exp
            } else {
                self.ffn
            } as u32),
            Field::SharedFfn => Meta::U32(if self.experts > 0 { self.ffn } else { 0 } as u32),
            Field::RopeDim => Meta::U32(self.rope_dim.unwrap_or(self.head_dim) as u32),
            Field::FfnByLayer => Meta::i32s((0..self.layers).map(|i| self.ffn_at(i) as i32)),
            Field::KvHeadsByLayer => {
                Meta::i32s((0..self.layers).map(|i| self.kv_heads_at(i) as i32))
            }
            Field::SwaPattern => Meta::Array(
                GGUF_BOOL,
                (0..self.layers)
                    .map(|i| Meta::Bool(self.is_swa(i)))
                    .collect(),
            ),
            Field::HeadDimSwa => {
                Meta::U32(self.kinds.map_or(self.head_dim, |k| k.swa_head_dim) as u32)
            }
            Field::SharedKv => Meta::U32(self.kinds.map_or(0, |k| k.shared_kv) as u32),
            Field::PerLayerWidth => Meta::U32(self.kinds.map_or(0, |k| k.per_layer) as u32),
            Field::SsmConv => Meta::U32(self.ssm.conv as u32),
            Field::SsmInner => Meta::U32(self.ssm.inner as u32),
            Field::SsmState => Meta::U32(self.ssm.state as u32),
            Field::SsmRank => Meta::U32(self.ssm.rank as u32),
            Field::SsmGroups => Meta::U32(self.ssm.groups as u32),
            Field::RopeSections => {
                let pairs = self.rope_dim.unwrap_or(self.head_dim) / 2;
                Meta::i32s([pairs.div_ceil(3), (pairs + 1) / 3, pairs / 3, 0].map(|x| x as i32))
            }
            Field::FullAttnInterval => Meta::U32(self.ssm.attn_every as u32),
            Field::IfExperts(f) => self.field(*f),
        }
    }

    /// Checks what any decoder needs of a shape; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("heads", self.heads),
            ("kv-heads", self.kv_heads),
            ("head-dim", self.head_dim),
            ("ffn", self.ffn),
            ("vocab", self.vocab),
            ("context", self.context),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("--{name} must be at least 1"));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "--heads {} is not a multiple of --kv-heads {}",
                self.heads, self.kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "--head-dim {} must be even (RoPE rotates pairs)",
                self.head_dim
            ));
        }
        if self.hidden > u32::MAX as usize
            || self.vocab > u32::MAX as usize
            || self.ffn > u32::MAX as usize
        {
            return Err("dimensions must fit in 32 bits".into());
        }
        if self.experts_used > self.experts {
            return Err(format!(
                "--experts-used {} is more than --experts {}",
                self.experts_used, self.experts
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return Err(format!("--rope-base {} must be positive", self.rope_base));
        }
        if let Some(k) = self.kinds {
            if k.full_every < 2 || k.swa_kv_heads == 0 || !self.heads.is_multiple_of(k.swa_kv_heads)
            {
                return Err("layer kinds: a full layer every 2+ and whole KV head groups".into());
            }
            if !k.swa_head_dim.is_multiple_of(2) {
                return Err(format!(
                    "sliding head width {} must be even",
                    k.swa_head_dim
                ));
            }
            let kv = self.kv_layers();
            if k.shared_kv >= self.layers || (k.shared_kv > 0 && kv < 2) {
                return Err(format!(
                    "{} shared-KV layers of {}: at least two must own a cache",
                    k.shared_kv, self.layers
                ));
            }
            // llama.cpp: a shared layer reads the last owning layer if full, the one before
            // it if sliding.
            for i in kv..self.layers {
                let src = kv - if self.is_swa(i) { 2 } else { 1 };
                if self.is_swa(src) != self.is_swa(i) {
                    return Err(format!(
                        "shared-KV layer {i} would read layer {src}, of the other kind"
                    ));
                }
            }
        }
        Ok(())
    }
}

use Dim::*;

const LLAMA_HEAD: &[TensorTemplate] = &[
    t_when(
        "rope_freqs.weight",
        &[RopePairs],
        Role::RopeFreqs,
        When::RopeScaled,
    ),
    t("token_embd.weight", &[Hidden, Vocab], Role::TokenEmbd),
];
const LLAMA_LAYER: &[TensorTemplate] = &[
    t("blk.{i}.attn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.attn_q.weight",
        &[Hidden, QueryWidth],
        Role::Proj(Cat::AttnQ),
    ),
    t(
        "blk.{i}.attn_k.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnK),
    ),
    t(
        "blk.{i}.attn_v.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnV),
    ),
    t(
        "blk.{i}.attn_output.weight",
        &[QueryWidth, Hidden],
        Role::Proj(Cat::AttnOut),
    ),
    t("blk.{i}.ffn_norm.weight", &[Hidden], Role::Norm),
    t_when(
        "blk.{i}.ffn_gate.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnGate),
        When::Dense,
    ),
    t_when(
        "blk.{i}.ffn_up.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnUp),
        When::Dense,
    ),
    t_when(
        "blk.{i}.ffn_down.weight",
        &[Ffn, Hidden],
        Role::Proj(Cat::FfnDown),
        When::Dense,
    ),
    // Mixtral-style experts.
    t_when(
        "blk.{i}.ffn_gate_inp.weight",
        &[Hidden, Experts],
        Role::Router,
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_gate_exps.weight",
        &[Hidden, FfnExp, Experts],
        Role::Proj(Cat::FfnGate),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_up_exps.weight",
        &[Hidden, FfnExp, Experts],
        Role::Proj(Cat::FfnUp),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_down_exps.weight",
        &[FfnExp, Hidden, Experts],
        Role::Proj(Cat::FfnDown),
        When::Moe,
    ),
];
const LLAMA_TAIL: &[TensorTemplate] = &[
    t("output_norm.weight", &[Hidden], Role::OutputNorm),
    t("output.weight", &[Hidden, Vocab], Role::Output),
];

/// The shape keys llama.cpp's loader reads for llama-style decoders.
const LLAMA_META: &[(&str, Field)] = &[
    ("vocab_size", Field::Vocab),
    ("context_length", Field::Context),
    ("embedding_length", Field::Hidden),
    ("block_count", Field::Layers),
    ("feed_forward_length", Field::Ffn),
    ("rope.dimension_count", Field::HeadDim),
    ("attention.head_count", Field::Heads),
    ("attention.head_count_kv", Field::KvHeads),
    ("rope.freq_base", Field::RopeBase),
    ("attention.layer_norm_rms_epsilon", Field::RmsEps),
];

/// Llama 3's chat format (the template its instruct GGUFs carry, minus tool calling).
const LLAMA3_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const LLAMA3_TOK: TokStyle = TokStyle {
    model: "gpt2",
    pre: "llama-bpe",
    specials: &[
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
    ],
    bos: "<|begin_of_text|>",
    eos: "<|eot_id|>",
    add_bos: true,
    chat_template: LLAMA3_TEMPLATE,
};

/// Llama 3 shapes. Context is Llama 3's 8192: the 3.1/3.2 files' 128k context needs
/// `rope_freqs` scaling, which the generator does not write.
const LLAMA_TINY: Shape = Shape {
    hidden: 256,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    head_dim: 64,
    ffn: 512,
    vocab: 1024,
    context: 2048,
    rope_base: 500_000.0,
    rms_eps: 1e-5,
    tied: false,
    experts: 0,
    experts_used: 0,
    ffn_exp: 0,
    kinds: None,
    llama3_rope: None,
    rope_dim: None,
    longrope: None,
    ssm: NO_SSM,
};

/// Llama 3.1's RoPE scaling at a tiny original context (64), so that the scaled frequencies
/// turn by whole radians within a short prompt and a decoder that ignored `rope_freqs` shows.
const TINY_LLAMA31_ROPE: Llama3Rope = Llama3Rope {
    factor: 8.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_context: 64,
};

const LLAMA_PRESETS: &[(&str, Shape)] = &[
    ("tiny", LLAMA_TINY),
    (
        "tiny-rope-freqs",
        Shape {
            llama3_rope: Some(TINY_LLAMA31_ROPE),
            ..LLAMA_TINY
        },
    ),
    (
        "tiny-moe",
        Shape {
            // llama.cpp sizes a llama file's experts by `feed_forward_length`.
            ffn: 256,
            experts: 8,
            experts_used: 2,
            ffn_exp: 256,
            ..LLAMA_TINY
        },
    ),
    (
        "1b",
        Shape {
            hidden: 2048,
            layers: 16,
            heads: 32,
            kv_heads: 8,
            head_dim: 64,
            ffn: 8192,
            vocab: 128_256,
            context: 8192,
            rope_base: 500_000.0,
            rms_eps: 1e-5,
            tied: true,
            experts: 0,
            experts_used: 0,
            ffn_exp: 0,
            kinds: None,
            llama3_rope: None,
            rope_dim: None,
            longrope: None,
            ssm: NO_SSM,
        },
    ),
    (
        "8b",
        Shape {
            hidden: 4096,
            layers: 32,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            ffn: 14_336,
            vocab: 128_256,
            context: 8192,
            rope_base: 500_000.0,
            rms_eps: 1e-5,
            tied: false,
            experts: 0,
            experts_used: 0,
            ffn_exp: 0,
            kinds: None,
            llama3_rope: None,
            rope_dim: None,
            longrope: None,
            ssm: NO_SSM,
        },
    ),
];

pub const LLAMA: Family = Family {
    arch: "llama",
    head: LLAMA_HEAD,
    layer: LLAMA_LAYER,
    tail: LLAMA_TAIL,
    meta: LLAMA_META,
    consts: &[],
    embeddings_scaled: false,
    tok: LLAMA3_TOK,
    presets: LLAMA_PRESETS,
};

/// The tiny shape every family below is checked at, with `tied` and experts as given.
const fn tiny_shape(tied: bool, experts: usize, experts_used: usize) -> Shape {
    Shape {
        hidden: 256,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        ffn: 512,
        vocab: 1024,
        context: 2048,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        tied,
        experts,
        experts_used,
        ffn_exp: 256,
        kinds: None,
        llama3_rope: None,
        rope_dim: None,
        longrope: None,
        ssm: NO_SSM,
    }
}

const NORM_Q: TensorTemplate = t("blk.{i}.attn_q_norm.weight", &[Head], Role::Norm);
const NORM_K: TensorTemplate = t("blk.{i}.attn_k_norm.weight", &[Head], Role::Norm);

/// Granite: llama's tensors with multipliers on the embeddings, residual branches, attention
/// scores and logits (values near 1, so the logits keep their margin while each one shows).
pub const GRANITE: Family = Family {
    arch: "granite",
    head: LLAMA_HEAD,
    layer: LLAMA_LAYER,
    tail: LLAMA_TAIL,
    meta: LLAMA_META,
    consts: &[
        ("embedding_scale", Const::F32(2.0)),
        ("residual_scale", Const::F32(0.7)),
        ("attention.scale", Const::F32(0.1)),
        ("logit_scale", Const::F32(1.25)),
    ],
    embeddings_scaled: false,
    tok: LLAMA3_TOK,
    presets: &[("tiny", tiny_shape(false, 0, 0))],
};

/// SmolLM3: llama's tensors; every fourth layer has no RoPE (four layers, so one shows).
pub const SMOLLM3: Family = Family {
    arch: "smollm3",
    head: LLAMA_HEAD,
    layer: LLAMA_LAYER,
    tail: LLAMA_TAIL,
    meta: LLAMA_META,
    consts: &[],
    embeddings_scaled: false,
    tok: LLAMA3_TOK,
    presets: &[(
        "tiny",
        Shape {
            layers: 4,
            ..tiny_shape(false, 0, 0)
        },
    )],
};

const GEMMA2_LAYER: &[TensorTemplate] = &[
    t("blk.{i}.attn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.attn_q.weight",
        &[Hidden, QueryWidth],
        Role::Proj(Cat::AttnQ),
    ),
    t(
        "blk.{i}.attn_k.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnK),
    ),
    t(
        "blk.{i}.attn_v.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnV),
    ),
    t(
        "blk.{i}.attn_output.weight",
        &[QueryWidth, Hidden],
        Role::Proj(Cat::AttnOut),
    ),
    t("blk.{i}.post_attention_norm.weight", &[Hidden], Role::Norm),
    t("blk.{i}.ffn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.ffn_gate.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnGate),
    ),
    t(
        "blk.{i}.ffn_up.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnUp),
    ),
    t(
        "blk.{i}.ffn_down.weight",
        &[Ffn, Hidden],
        Role::Proj(Cat::FfnDown),
    ),
    t("blk.{i}.post_ffw_norm.weight", &[Hidden], Role::Norm),
];

/// Gemma 2: post-norms, GELU, tied embeddings scaled by sqrt(hidden), local layers with an
/// 8-position window (every other one) and soft-capped attention scores and logits (caps small
/// enough to change the numbers).
pub const GEMMA2: Family = Family {
    arch: "gemma2",
    head: LLAMA_HEAD,
    layer: GEMMA2_LAYER,
    tail: &[t("output_norm.weight", &[Hidden], Role::OutputNorm)],
    meta: LLAMA_META,
    consts: &[
        ("attn_logit_softcapping", Const::F32(0.3)),
        ("final_logit_softcapping", Const::F32(10.0)),
        ("attention.sliding_window", Const::U32(8)),
    ],
    embeddings_scaled: true,
    tok: LLAMA3_TOK,
    presets: &[("tiny", tiny_shape(true, 0, 0))],
};

const OLMO2_LAYER: &[TensorTemplate] = &[
    t(
        "blk.{i}.attn_q.weight",
        &[Hidden, QueryWidth],
        Role::Proj(Cat::AttnQ),
    ),
    t(
        "blk.{i}.attn_k.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnK),
    ),
    t(
        "blk.{i}.attn_v.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnV),
    ),
    t("blk.{i}.attn_q_norm.weight", &[QueryWidth], Role::Norm),
    t("blk.{i}.attn_k_norm.weight", &[KvWidth], Role::Norm),
    t(
        "blk.{i}.attn_output.weight",
        &[QueryWidth, Hidden],
        Role::Proj(Cat::AttnOut),
    ),
    t("blk.{i}.post_attention_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.ffn_gate.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnGate),
    ),
    t(
        "blk.{i}.ffn_up.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnUp),
    ),
    t(
        "blk.{i}.ffn_down.weight",
        &[Ffn, Hidden],
        Role::Proj(Cat::FfnDown),
    ),
    t("blk.{i}.post_ffw_norm.weight", &[Hidden], Role::Norm),
];

/// OLMo 2: no pre-norms, norms on each branch's output, and q/k norms over all heads at once.
pub const OLMO2: Family = Family {
    arch: "olmo2",
    head: LLAMA_HEAD,
    layer: OLMO2_LAYER,
    tail: LLAMA_TAIL,
    meta: LLAMA_META,
    consts: &[],
    embeddings_scaled: false,
    tok: LLAMA3_TOK,
    presets: &[("tiny", tiny_shape(false, 0, 0))],
};

const QWEN3MOE_LAYER: &[TensorTemplate] = &[
    t("blk.{i}.attn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.attn_q.weight",
        &[Hidden, QueryWidth],
        Role::Proj(Cat::AttnQ),
    ),
    t(
        "blk.{i}.attn_k.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnK),
    ),
    t(
        "blk.{i}.attn_v.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnV),
    ),
    NORM_Q,
    NORM_K,
    t(
        "blk.{i}.attn_output.weight",
        &[QueryWidth, Hidden],
        Role::Proj(Cat::AttnOut),
    ),
    t("blk.{i}.ffn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.ffn_gate_inp.weight",
        &[Hidden, Experts],
        Role::Router,
    ),
    t(
        "blk.{i}.ffn_gate_exps.weight",
        &[Hidden, FfnExp, Experts],
        Role::Proj(Cat::FfnGate),
    ),
    t(
        "blk.{i}.ffn_up_exps.weight",
        &[Hidden, FfnExp, Experts],
        Role::Proj(Cat::FfnUp),
    ),
    t(
        "blk.{i}.ffn_down_exps.weight",
        &[FfnExp, Hidden, Experts],
        Role::Proj(Cat::FfnDown),
    ),
];

/// Qwen3 MoE: qwen3's per-head q/k norms and a softmax top-k router over stacked experts.
/// `30b-a3b-narrow` keeps Qwen3-30B-A3B's 48 layers, 128 experts with 8 active, at a width
/// this machine holds.
pub const QWEN3MOE: Family = Family {
    arch: "qwen3moe",
    head: LLAMA_HEAD,
    layer: QWEN3MOE_LAYER,
    tail: LLAMA_TAIL,
    meta: &[
        ("vocab_size", Field::Vocab),
        ("context_length", Field::Context),
        ("embedding_length", Field::Hidden),
        ("block_count", Field::Layers),
        ("feed_forward_length", Field::Ffn),
        ("rope.dimension_count", Field::HeadDim),
        ("attention.head_count", Field::Heads),
        ("attention.head_count_kv", Field::KvHeads),
        ("rope.freq_base", Field::RopeBase),
        ("attention.layer_norm_rms_epsilon", Field::RmsEps),
        ("expert_count", Field::Experts),
        ("expert_used_count", Field::ExpertsUsed),
        ("expert_feed_forward_length", Field::FfnExp),
    ],
    consts: &[],
    embeddings_scaled: false,
    tok: LLAMA3_TOK,
    presets: &[
        ("tiny", tiny_shape(false, 8, 2)),
        (
            "30b-a3b-narrow",
            Shape {
                hidden: 1024,
                layers: 48,
                heads: 16,
                kv_heads: 4,
                head_dim: 64,
                ffn: 3072,
                vocab: 32_768,
                context: 4096,
                rope_base: 1_000_000.0,
                rms_eps: 1e-6,
                tied: false,
                experts: 128,
                experts_used: 8,
                ffn_exp: 256,
                kinds: None,
                llama3_rope: None,
                rope_dim: None,
                longrope: None,
                ssm: NO_SSM,
            },
        ),
    ],
};

const GRANITEMOE_LAYER: &[TensorTemplate] = &[
    t("blk.{i}.attn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.attn_q.weight",
        &[Hidden, QueryWidth],
        Role::Proj(Cat::AttnQ),
    ),
    t(
        "blk.{i}.attn_k.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnK),
    ),
    t(
        "blk.{i}.attn_v.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnV),
    ),
    t(
        "blk.{i}.attn_output.weight",
        &[QueryWidth, Hidden],
        Role::Proj(Cat::AttnOut),
    ),
    t("blk.{i}.ffn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.ffn_gate_inp.weight",
        &[Hidden, Experts],
        Role::Router,
    ),
    t(
        "blk.{i}.ffn_gate_exps.weight",
        &[Hidden, FfnExp, Experts],
        Role::Proj(Cat::FfnGate),
    ),
    t(
        "blk.{i}.ffn_up_exps.weight",
        &[Hidden, FfnExp, Experts],
        Role::Proj(Cat::FfnUp),
    ),
    t(
        "blk.{i}.ffn_down_exps.weight",
        &[FfnExp, Hidden, Experts],
        Role::Proj(Cat::FfnDown),
    ),
];

/// Granite MoE: Granite's multipliers over a mixture of experts (its loader reads the experts'
/// width from `feed_forward_length`).
pub const GRANITEMOE: Family = Family {
    arch: "granitemoe",
    head: LLAMA_HEAD,
    layer: GRANITEMOE_LAYER,
    tail: LLAMA_TAIL,
    meta: &[
        ("vocab_size", Field::Vocab),
        ("context_length", Field::Context),
        ("embedding_length", Field::Hidden),
        ("block_count", Field::Layers),
        ("feed_forward_length", Field::FfnExp),
        ("rope.dimension_count", Field::HeadDim),
        ("attention.head_count", Field::Heads),
        ("attention.head_count_kv", Field::KvHeads),
        ("rope.freq_base", Field::RopeBase),
        ("attention.layer_norm_rms_epsilon", Field::RmsEps),
        ("expert_count", Field::Experts),
        ("expert_used_count", Field::ExpertsUsed),
    ],
    consts: &[
        ("embedding_scale", Const::F32(2.0)),
        ("residual_scale", Const::F32(0.7)),
        ("attention.scale", Const::F32(0.1)),
        ("logit_scale", Const::F32(1.25)),
    ],
    embeddings_scaled: false,
    tok: LLAMA3_TOK,
    presets: &[("tiny", tiny_shape(false, 8, 2))],
};

const GPT_OSS_LAYER: &[TensorTemplate] = &[
    t("blk.{i}.attn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.attn_q.weight",
        &[Hidden, QueryWidth],
        Role::Proj(Cat::AttnQ),
    ),
    t("blk.{i}.attn_q.bias", &[QueryWidth], Role::Bias),
    t(
        "blk.{i}.attn_k.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnK),
    ),
    t("blk.{i}.attn_k.bias", &[KvWidth], Role::Bias),
    t(
        "blk.{i}.attn_v.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnV),
    ),
    t("blk.{i}.attn_v.bias", &[KvWidth], Role::Bias),
    t(
        "blk.{i}.attn_output.weight",
        &[QueryWidth, Hidden],
        Role::Proj(Cat::AttnOut),
    ),
    t("blk.{i}.attn_output.bias", &[Hidden], Role::Bias),
    t("blk.{i}.attn_sinks.weight", &[Heads], Role::Sink),
    t("blk.{i}.post_attention_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.ffn_gate_inp.weight",
        &[Hidden, Experts],
        Role::Router,
    ),
    t("blk.{i}.ffn_gate_inp.bias", &[Experts], Role::Bias),
    t(
        "blk.{i}.ffn_gate_exps.weight",
        &[Hidden, FfnExp, Experts],
        Role::Proj(Cat::FfnGate),
    ),
    t("blk.{i}.ffn_gate_exps.bias", &[FfnExp, Experts], Role::Bias),
    t(
        "blk.{i}.ffn_up_exps.weight",
        &[Hidden, FfnExp, Experts],
        Role::Proj(Cat::FfnUp),
    ),
    t("blk.{i}.ffn_up_exps.bias", &[FfnExp, Experts], Role::Bias),
    t(
        "blk.{i}.ffn_down_exps.weight",
        &[FfnExp, Hidden, Experts],
        Role::Proj(Cat::FfnDown),
    ),
    t("blk.{i}.ffn_down_exps.bias", &[Hidden, Experts], Role::Bias),
];

/// gpt-oss's harmony control tokens (o200k_harmony's names).
const GPT_OSS_TOK: TokStyle = TokStyle {
    model: "gpt2",
    pre: "gpt-4o",
    specials: &[
        "<|startoftext|>",
        "<|endoftext|>",
        "<|return|>",
        "<|constrain|>",
        "<|channel|>",
        "<|start|>",
        "<|end|>",
        "<|message|>",
        "<|call|>",
    ],
    bos: "<|startoftext|>",
    eos: "<|return|>",
    add_bos: false,
    chat_template: GPT_OSS_TEMPLATE,
};

/// The core of gpt-oss's harmony chat template: a system message, each turn as
/// `<|start|>{role}<|message|>…<|end|>`, past assistant answers in the `final` channel, and
/// the generation prompt `<|start|>assistant`.
const GPT_OSS_TEMPLATE: &str = "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nReasoning: medium\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>{% for message in messages %}{% if message['role'] == 'assistant' %}<|start|>assistant<|channel|>final<|message|>{{ message['content'] }}<|end|>{% elif message['role'] == 'system' %}<|start|>developer<|message|># Instructions\n\n{{ message['content'] }}<|end|>{% else %}<|start|>{{ message['role'] }}<|message|>{{ message['content'] }}<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %}<|start|>assistant{% endif %}";

/// gpt-oss: biases on q/k/v/o, the router and the experts, learned attention sinks, every
/// other layer a sliding window (the tiny preset's window of 8 shows within a golden's 20
/// positions; real files use 128), YaRN rope as gpt-oss-20b declares it, experts in MXFP4.
/// `20b-narrow` keeps gpt-oss-20b's 24 layers, 32 experts with 4 active, 64 query and 8 KV
/// heads of 64, at a width this machine holds.
pub const GPT_OSS: Family = Family {
    arch: "gpt-oss",
    head: LLAMA_HEAD,
    layer: GPT_OSS_LAYER,
    tail: LLAMA_TAIL,
    meta: &[
        ("context_length", Field::Context),
        ("embedding_length", Field::Hidden),
        ("block_count", Field::Layers),
        ("feed_forward_length", Field::FfnExp),
        ("rope.dimension_count", Field::HeadDim),
        ("attention.head_count", Field::Heads),
        ("attention.head_count_kv", Field::KvHeads),
        ("rope.freq_base", Field::RopeBase),
        ("attention.layer_norm_rms_epsilon", Field::RmsEps),
        ("expert_count", Field::Experts),
        ("expert_used_count", Field::ExpertsUsed),
        ("expert_feed_forward_length", Field::FfnExp),
    ],
    consts: &[
        ("attention.sliding_window", Const::U32(8)),
        ("rope.scaling.type", Const::Str("yarn")),
        ("rope.scaling.factor", Const::F32(32.0)),
        ("rope.scaling.original_context_length", Const::U32(4096)),
    ],
    embeddings_scaled: false,
    tok: GPT_OSS_TOK,
    presets: &[
        (
            "tiny",
            Shape {
                rope_base: 150_000.0,
                ..tiny_shape(false, 8, 2)
            },
        ),
        (
            "20b-narrow",
            Shape {
                hidden: 1024,
                layers: 24,
                heads: 64,
                kv_heads: 8,
                head_dim: 64,
                ffn: 1024,
                vocab: 32_768,
                context: 4096,
                rope_base: 150_000.0,
                rms_eps: 1e-5,
                tied: false,
                experts: 32,
                experts_used: 4,
                ffn_exp: 1024,
                kinds: None,
                llama3_rope: None,
                rope_dim: None,
                longrope: None,
                ssm: NO_SSM,
            },
        ),
    ],
};

const GEMMA4_HEAD: &[TensorTemplate] = &[
    t("token_embd.weight", &[Hidden, Vocab], Role::TokenEmbd),
    t("rope_freqs.weight", &[RopePairs], Role::RopeFreqs),
    t_when(
        "per_layer_token_embd.weight",
        &[PerLayerAll, Vocab],
        Role::PerLayerEmbd,
        When::PerLayer,
    ),
    t_when(
        "per_layer_model_proj.weight",
        &[Hidden, PerLayerAll],
        Role::PlainProj,
        When::PerLayer,
    ),
    t_when(
        "per_layer_proj_norm.weight",
        &[PerLayer],
        Role::Norm,
        When::PerLayer,
    ),
];

const GEMMA4_LAYER: &[TensorTemplate] = &[
    t("blk.{i}.attn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.attn_q.weight",
        &[Hidden, QueryWidth],
        Role::Proj(Cat::AttnQ),
    ),
    t_when(
        "blk.{i}.attn_k.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnK),
        When::OwnsKv,
    ),
    t_when(
        "blk.{i}.attn_v.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnV),
        When::OwnsValue,
    ),
    NORM_Q,
    t_when(
        "blk.{i}.attn_k_norm.weight",
        &[Head],
        Role::Norm,
        When::OwnsKv,
    ),
    t(
        "blk.{i}.attn_output.weight",
        &[QueryWidth, Hidden],
        Role::Proj(Cat::AttnOut),
    ),
    t(
        "blk.{i}.post_attention_norm.weight",
        &[Hidden],
        Role::PostNorm,
    ),
    t("blk.{i}.ffn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.ffn_gate.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnGate),
    ),
    t(
        "blk.{i}.ffn_up.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnUp),
    ),
    t(
        "blk.{i}.ffn_down.weight",
        &[Ffn, Hidden],
        Role::Proj(Cat::FfnDown),
    ),
    // Gemma 4 26B-A4B: routed experts beside the MLP above (its shared expert), each branch
    // with its own norms (llama.cpp's tensor order).
    t_when(
        "blk.{i}.ffn_gate_inp.weight",
        &[Hidden, Experts],
        Role::Router,
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_gate_inp.scale",
        &[Hidden],
        Role::RouterScale,
        When::Moe,
    ),
    t_when(
        "blk.{i}.pre_ffw_norm_2.weight",
        &[Hidden],
        Role::Norm,
        When::Moe,
    ),
    t_when(
        "blk.{i}.post_ffw_norm_1.weight",
        &[Hidden],
        Role::Norm,
        When::Moe,
    ),
    t_when(
        "blk.{i}.post_ffw_norm_2.weight",
        &[Hidden],
        Role::Norm,
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_gate_up_exps.weight",
        &[Hidden, FfnExpPair, Experts],
        Role::Proj(Cat::FfnUp),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_down_exps.weight",
        &[FfnExp, Hidden, Experts],
        Role::Proj(Cat::FfnDown),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_down_exps.scale",
        &[Experts],
        Role::ExpertScale,
        When::Moe,
    ),
    t("blk.{i}.post_ffw_norm.weight", &[Hidden], Role::PostNorm),
    t_when(
        "blk.{i}.inp_gate.weight",
        &[Hidden, PerLayer],
        Role::Proj(Cat::PerLayerGate),
        When::PerLayer,
    ),
    t_when(
        "blk.{i}.proj.weight",
        &[PerLayer, Hidden],
        Role::Proj(Cat::PerLayerProj),
        When::PerLayer,
    ),
    t_when(
        "blk.{i}.post_norm.weight",
        &[Hidden],
        Role::PostNorm,
        When::PerLayer,
    ),
    t(
        "blk.{i}.layer_output_scale.weight",
        &[One],
        Role::LayerScale,
    ),
];

/// Gemma 4's turn markers (the template its GGUFs carry adds tools, thinking and media).
const GEMMA4_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{{ '<|turn>' + role + '\n' + message['content'] | trim + '<turn|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|turn>model\n' }}{% endif %}";

/// Gemma 4 (E2B/E4B-style): sliding-window and full layers with their own head widths and KV
/// heads, full layers with proportional RoPE (`rope_freqs`) and values equal to their keys,
/// the last layers reading earlier layers' KV caches with double-wide FFNs, per-layer token
/// embeddings, q/k/v norms, post-norms, per-layer output scales and soft-capped logits. The tiny
/// preset has every one of these so each shows in the golden. `tiny-moe` is 26B-A4B-shaped:
/// each layer's MLP runs beside routed GELU experts (gate and up stacked in one tensor) with
/// per-expert output scales, a router reading its own scaled norm of the input, and a norm
/// on each branch before they are added.
pub const GEMMA4: Family = Family {
    arch: "gemma4",
    head: GEMMA4_HEAD,
    layer: GEMMA4_LAYER,
    tail: &[t("output_norm.weight", &[Hidden], Role::OutputNorm)],
    meta: &[
        ("vocab_size", Field::Vocab),
        ("context_length", Field::Context),
        ("embedding_length", Field::Hidden),
        ("block_count", Field::Layers),
        ("feed_forward_length", Field::FfnByLayer),
        ("rope.dimension_count", Field::HeadDim),
        ("rope.dimension_count_swa", Field::HeadDimSwa),
        ("attention.key_length_swa", Field::HeadDimSwa),
        ("attention.value_length_swa", Field::HeadDimSwa),
        ("attention.head_count", Field::Heads),
        ("attention.head_count_kv", Field::KvHeadsByLayer),
        ("attention.sliding_window_pattern", Field::SwaPattern),
        ("attention.shared_kv_layers", Field::SharedKv),
        ("embedding_length_per_layer_input", Field::PerLayerWidth),
        ("rope.freq_base", Field::RopeBase),
        ("attention.layer_norm_rms_epsilon", Field::RmsEps),
        ("expert_count", Field::IfExperts(&Field::Experts)),
        ("expert_used_count", Field::IfExperts(&Field::ExpertsUsed)),
        (
            "expert_feed_forward_length",
            Field::IfExperts(&Field::FfnExp),
        ),
    ],
    consts: &[
        ("rope.freq_base_swa", Const::F32(10_000.0)),
        ("attention.sliding_window", Const::U32(8)),
        ("final_logit_softcapping", Const::F32(15.0)),
    ],
    embeddings_scaled: true,
    tok: TokStyle {
        model: "gemma4",
        pre: "gemma4",
        specials: &["<bos>", "<eos>", "<|turn>", "<turn|>"],
        bos: "<bos>",
        eos: "<turn|>",
        add_bos: true,
        chat_template: GEMMA4_TEMPLATE,
    },
    presets: &[
        (
            "tiny",
            Shape {
                hidden: 256,
                layers: 6,
                heads: 4,
                kv_heads: 1,
                head_dim: 128,
                ffn: 512,
                vocab: 1024,
                context: 2048,
                rope_base: 1_000_000.0,
                rms_eps: 1e-6,
                tied: true,
                experts: 0,
                experts_used: 0,
                ffn_exp: 0,
                kinds: Some(LayerKinds {
                    full_every: 3,
                    swa_head_dim: 64,
                    swa_kv_heads: 2,
                    shared_kv: 3,
                    shared_ffn_mult: 2,
                    full_k_is_v: true,
                    per_layer: 128,
                    full_rope_fraction: 0.25,
                }),
                llama3_rope: None,
                rope_dim: None,
                longrope: None,
                ssm: NO_SSM,
            },
        ),
        (
            // 26B-A4B-style: every layer's MLP beside 8 routed experts (2 per token), no
            // per-layer embeddings, every layer with a KV cache of its own.
            "tiny-moe",
            Shape {
                hidden: 256,
                layers: 6,
                heads: 4,
                kv_heads: 1,
                head_dim: 128,
                ffn: 512,
                vocab: 1024,
                context: 2048,
                rope_base: 1_000_000.0,
                rms_eps: 1e-6,
                tied: true,
                experts: 8,
                experts_used: 2,
                ffn_exp: 256,
                kinds: Some(LayerKinds {
                    full_every: 3,
                    swa_head_dim: 64,
                    swa_kv_heads: 2,
                    shared_kv: 0,
                    shared_ffn_mult: 1,
                    full_k_is_v: true,
                    per_layer: 0,
                    full_rope_fraction: 0.25,
                }),
                llama3_rope: None,
                rope_dim: None,
                longrope: None,
                ssm: NO_SSM,
            },
        ),
    ],
};

/// The keys llama.cpp's Mamba loaders read. Their converters write zero attention heads and
/// FFN width, which the loaders accept.
const MAMBA_META_COMMON: [(&str, Field); 8] = [
    ("vocab_size", Field::Vocab),
    ("context_length", Field::Context),
    ("embedding_length", Field::Hidden),
    ("block_count", Field::Layers),
    ("ssm.conv_kernel", Field::SsmConv),
    ("ssm.inner_size", Field::SsmInner),
    ("ssm.state_size", Field::SsmState),
    ("ssm.time_step_rank", Field::SsmRank),
];
const MAMBA_CONSTS: &[(&str, Const)] = &[
    ("feed_forward_length", Const::U32(0)),
    ("attention.head_count", Const::U32(0)),
    ("attention.head_count_kv", Const::U32(0)),
];

const MAMBA_LAYER: &[TensorTemplate] = &[
    t("blk.{i}.attn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.ssm_in.weight",
        &[Hidden, Mamba1InProj],
        Role::Proj(Cat::SsmIn),
    ),
    t(
        "blk.{i}.ssm_conv1d.weight",
        &[SsmConv, SsmInner],
        Role::Ssm(SsmPart::Conv),
    ),
    t(
        "blk.{i}.ssm_conv1d.bias",
        &[SsmInner],
        Role::Ssm(SsmPart::ConvBias),
    ),
    t(
        "blk.{i}.ssm_x.weight",
        &[SsmInner, Mamba1Xdb],
        Role::Proj(Cat::SsmX),
    ),
    t(
        "blk.{i}.ssm_dt.weight",
        &[SsmRank, SsmInner],
        Role::Proj(Cat::SsmDt),
    ),
    t(
        "blk.{i}.ssm_dt.bias",
        &[SsmInner],
        Role::Ssm(SsmPart::DtBias),
    ),
    t(
        "blk.{i}.ssm_a",
        &[SsmState, SsmInner],
        Role::Ssm(SsmPart::A1),
    ),
    t("blk.{i}.ssm_d", &[SsmInner], Role::Ssm(SsmPart::D)),
    t(
        "blk.{i}.ssm_out.weight",
        &[SsmInner, Hidden],
        Role::Proj(Cat::SsmOutUnnormed),
    ),
];

/// Mamba (v1): llama.cpp supports only an inner width of twice the hidden size.
pub const MAMBA: Family = Family {
    arch: "mamba",
    head: LLAMA_HEAD,
    layer: MAMBA_LAYER,
    tail: LLAMA_TAIL,
    meta: &[
        MAMBA_META_COMMON[0],
        MAMBA_META_COMMON[1],
        MAMBA_META_COMMON[2],
        MAMBA_META_COMMON[3],
        MAMBA_META_COMMON[4],
        MAMBA_META_COMMON[5],
        MAMBA_META_COMMON[6],
        MAMBA_META_COMMON[7],
        ("attention.layer_norm_rms_epsilon", Field::RmsEps),
    ],
    consts: MAMBA_CONSTS,
    embeddings_scaled: false,
    tok: LLAMA3_TOK,
    presets: &[(
        "tiny",
        Shape {
            ssm: Ssm {
                inner: 512,
                state: 16,
                conv: 4,
                rank: 16,
                groups: 1,
                attn_every: 0,
            },
            ..tiny_shape(false, 0, 0)
        },
    )],
};

const PHI3_LAYER: &[TensorTemplate] = &[
    t("blk.{i}.attn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.attn_qkv.weight",
        &[Hidden, QkvWidth],
        Role::Proj(Cat::AttnQkv),
    ),
    t(
        "blk.{i}.attn_output.weight",
        &[QueryWidth, Hidden],
        Role::Proj(Cat::AttnOut),
    ),
    t("blk.{i}.ffn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.ffn_up.weight",
        &[Hidden, FfnPair],
        Role::Proj(Cat::FfnUp),
    ),
    t(
        "blk.{i}.ffn_down.weight",
        &[Ffn, Hidden],
        Role::Proj(Cat::FfnDown),
    ),
];

/// Phi-4's chat format.
const PHI4_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}";

/// Phi-4 (the phi3 layout): fused query/key/value and gate/up projections, a separate LM
/// head, no sliding window (`attention.sliding_window` 0 marks Phi-4 among phi3 files) and no
/// long-context RoPE factors.
const PHI3_HEAD: &[TensorTemplate] = &[
    t("token_embd.weight", &[Hidden, Vocab], Role::TokenEmbd),
    t_when(
        "rope_factors_long.weight",
        &[RopePairs],
        Role::RopeFactors(true),
        When::LongRope,
    ),
    t_when(
        "rope_factors_short.weight",
        &[RopePairs],
        Role::RopeFactors(false),
        When::LongRope,
    ),
];

pub const PHI3: Family = Family {
    arch: "phi3",
    head: PHI3_HEAD,
    layer: PHI3_LAYER,
    tail: LLAMA_TAIL,
    meta: &[
        ("vocab_size", Field::Vocab),
        ("context_length", Field::Context),
        ("embedding_length", Field::Hidden),
        ("block_count", Field::Layers),
        ("feed_forward_length", Field::Ffn),
        ("rope.dimension_count", Field::RopeDim),
        ("attention.head_count", Field::Heads),
        ("attention.head_count_kv", Field::KvHeads),
        ("rope.freq_base", Field::RopeBase),
        ("attention.layer_norm_rms_epsilon", Field::RmsEps),
    ],
    consts: &[
        ("attention.sliding_window", Const::U32(0)),
        ("rope.scaling.original_context_length", Const::U32(16_384)),
    ],
    embeddings_scaled: false,
    tok: TokStyle {
        model: "gpt2",
        pre: "llama-bpe",
        // llama.cpp marks `<unk>`, `<s>` and `</s>` in every file whose name says phi3, so
        // the vocabulary has them (Phi-3's do).
        specials: &[
            "<unk>",
            "<s>",
            "</s>",
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_sep|>",
            "<|im_end|>",
        ],
        bos: "<|endoftext|>",
        eos: "<|im_end|>",
        add_bos: false,
        chat_template: PHI4_TEMPLATE,
    },
    presets: &[
        (
            "tiny",
            Shape {
                rope_base: 250_000.0,
                ..tiny_shape(false, 0, 0)
            },
        ),
        // Phi-4-mini: tied embeddings, three quarters of each head rotated, longrope factors
        // (the context is below the original 16,384, so the short ones apply).
        (
            "tiny-mini",
            Shape {
                tied: true,
                rope_dim: Some(48),
                longrope: Some(LongRope {
                    short_max: 4.0,
                    attn_factor: 1.19,
                }),
                ..tiny_shape(true, 0, 0)
            },
        ),
    ],
};

const MAMBA2_LAYER: &[TensorTemplate] = &[
    t("blk.{i}.attn_norm.weight", &[Hidden], Role::Norm),
    t(
        "blk.{i}.ssm_in.weight",
        &[Hidden, Mamba2InProj],
        Role::Proj(Cat::SsmIn),
    ),
    t(
        "blk.{i}.ssm_conv1d.weight",
        &[SsmConv, Mamba2ConvChannels],
        Role::Ssm(SsmPart::Conv),
    ),
    t(
        "blk.{i}.ssm_conv1d.bias",
        &[Mamba2ConvChannels],
        Role::Ssm(SsmPart::ConvBias),
    ),
    t(
        "blk.{i}.ssm_dt.bias",
        &[SsmRank],
        Role::Ssm(SsmPart::DtBias),
    ),
    t("blk.{i}.ssm_a", &[One, SsmRank], Role::Ssm(SsmPart::A2)),
    t("blk.{i}.ssm_d", &[One, SsmRank], Role::Ssm(SsmPart::D)),
    t(
        "blk.{i}.ssm_norm.weight",
        &[SsmGroupWidth, SsmGroups],
        Role::Norm,
    ),
    t(
        "blk.{i}.ssm_out.weight",
        &[SsmInner, Hidden],
        Role::Proj(Cat::SsmOut),
    ),
];

/// Mamba-2: scalar decay per head, two groups of B/C (so the grouping shows) and the gated
/// group norm. `1.3b` is Mamba2-1.3B's shape (tied embeddings, GPT-NeoX's vocabulary size).
pub const MAMBA2: Family = Family {
    arch: "mamba2",
    head: LLAMA_HEAD,
    layer: MAMBA2_LAYER,
    tail: LLAMA_TAIL,
    meta: &[
        MAMBA_META_COMMON[0],
        MAMBA_META_COMMON[1],
        MAMBA_META_COMMON[2],
        MAMBA_META_COMMON[3],
        MAMBA_META_COMMON[4],
        MAMBA_META_COMMON[5],
        MAMBA_META_COMMON[6],
        MAMBA_META_COMMON[7],
        ("ssm.group_count", Field::SsmGroups),
        ("attention.layer_norm_rms_epsilon", Field::RmsEps),
    ],
    consts: MAMBA_CONSTS,
    embeddings_scaled: false,
    tok: LLAMA3_TOK,
    presets: &[
        (
            "tiny",
            Shape {
                ssm: Ssm {
                    inner: 512,
                    state: 64,
                    conv: 4,
                    rank: 8,
                    groups: 2,
                    attn_every: 0,
                },
                ..tiny_shape(false, 0, 0)
            },
        ),
        (
            "1.3b",
            Shape {
                hidden: 2048,
                layers: 48,
                heads: 32,
                kv_heads: 32,
                head_dim: 64,
                ffn: 1,
                vocab: 50288,
                context: 4096,
                rope_base: 10_000.0,
                rms_eps: 1e-5,
                tied: true,
                experts: 0,
                experts_used: 0,
                ffn_exp: 0,
                ssm: Ssm {
                    inner: 4096,
                    state: 128,
                    conv: 4,
                    rank: 64,
                    groups: 1,
                    attn_every: 0,
                },
                kinds: None,
                llama3_rope: None,
                rope_dim: None,
                longrope: None,
            },
        ),
    ],
};

const GRANITEHYBRID_LAYER: &[TensorTemplate] = &[
    t("blk.{i}.attn_norm.weight", &[Hidden], Role::Norm),
    t_when(
        "blk.{i}.ssm_in.weight",
        &[Hidden, Mamba2InProj],
        Role::Proj(Cat::SsmIn),
        When::Recurrent,
    ),
    t_when(
        "blk.{i}.ssm_conv1d.weight",
        &[SsmConv, Mamba2ConvChannels],
        Role::Ssm(SsmPart::Conv),
        When::Recurrent,
    ),
    t_when(
        "blk.{i}.ssm_conv1d.bias",
        &[Mamba2ConvChannels],
        Role::Ssm(SsmPart::ConvBias),
        When::Recurrent,
    ),
    t_when(
        "blk.{i}.ssm_dt.bias",
        &[SsmRank],
        Role::Ssm(SsmPart::DtBias),
        When::Recurrent,
    ),
    t_when(
        "blk.{i}.ssm_a",
        &[One, SsmRank],
        Role::Ssm(SsmPart::A2),
        When::Recurrent,
    ),
    t_when(
        "blk.{i}.ssm_d",
        &[One, SsmRank],
        Role::Ssm(SsmPart::D),
        When::Recurrent,
    ),
    t_when(
        "blk.{i}.ssm_norm.weight",
        &[SsmGroupWidth, SsmGroups],
        Role::Norm,
        When::Recurrent,
    ),
    t_when(
        "blk.{i}.ssm_out.weight",
        &[SsmInner, Hidden],
        Role::Proj(Cat::SsmOut),
        When::Recurrent,
    ),
    t_when(
        "blk.{i}.attn_q.weight",
        &[Hidden, QueryWidth],
        Role::Proj(Cat::AttnQ),
        When::Attention,
    ),
    t_when(
        "blk.{i}.attn_k.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnK),
        When::Attention,
    ),
    t_when(
        "blk.{i}.attn_v.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnV),
        When::Attention,
    ),
    t_when(
        "blk.{i}.attn_output.weight",
        &[QueryWidth, Hidden],
        Role::Proj(Cat::AttnOut),
        When::Attention,
    ),
    t("blk.{i}.ffn_norm.weight", &[Hidden], Role::Norm),
    t_when(
        "blk.{i}.ffn_gate.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnGate),
        When::Dense,
    ),
    t_when(
        "blk.{i}.ffn_up.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnUp),
        When::Dense,
    ),
    t_when(
        "blk.{i}.ffn_down.weight",
        &[Ffn, Hidden],
        Role::Proj(Cat::FfnDown),
        When::Dense,
    ),
    t_when(
        "blk.{i}.ffn_gate_inp.weight",
        &[Hidden, Experts],
        Role::Router,
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_gate_exps.weight",
        &[Hidden, FfnExp, Experts],
        Role::Proj(Cat::FfnGate),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_up_exps.weight",
        &[Hidden, FfnExp, Experts],
        Role::Proj(Cat::FfnUp),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_down_exps.weight",
        &[FfnExp, Hidden, Experts],
        Role::Proj(Cat::FfnDown),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_gate_shexp.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnGate),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_up_shexp.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnUp),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_down_shexp.weight",
        &[Ffn, Hidden],
        Role::Proj(Cat::FfnDown),
        When::Moe,
    ),
];

/// The tiny hybrid's Mamba-2 layers: mamba2's tiny mixer (llama.cpp allows only an inner width
/// of twice the hidden size) with attention as every second layer.
const GRANITEHYBRID_SSM: Ssm = Ssm {
    inner: 512,
    state: 64,
    conv: 4,
    rank: 8,
    groups: 2,
    attn_every: 2,
};

/// Granite 4.0 hybrid: Mamba-2 layers interleaved with attention layers (which a file marks by
/// their non-zero `head_count_kv`), each followed by an FFN, under Granite's multipliers; no
/// RoPE (`rope.scaling.finetuned` false, as the converter writes for Granite 4.0 H). `tiny`
/// has a dense FFN (Granite 4.0 H 350M/1B/Micro); `tiny-moe` routed experts and a shared one
/// (H Tiny/Small: 64/72 experts, 6/10 used, a shared expert).
pub const GRANITEHYBRID: Family = Family {
    arch: "granitehybrid",
    head: LLAMA_HEAD,
    layer: GRANITEHYBRID_LAYER,
    tail: LLAMA_TAIL,
    meta: &[
        ("vocab_size", Field::Vocab),
        ("context_length", Field::Context),
        ("embedding_length", Field::Hidden),
        ("block_count", Field::Layers),
        ("feed_forward_length", Field::FfnOrExp),
        ("expert_shared_feed_forward_length", Field::SharedFfn),
        ("attention.head_count", Field::Heads),
        ("attention.head_count_kv", Field::KvHeadsByLayer),
        ("rope.freq_base", Field::RopeBase),
        ("attention.layer_norm_rms_epsilon", Field::RmsEps),
        ("expert_count", Field::Experts),
        ("expert_used_count", Field::ExpertsUsed),
        MAMBA_META_COMMON[4],
        MAMBA_META_COMMON[5],
        MAMBA_META_COMMON[6],
        MAMBA_META_COMMON[7],
        ("ssm.group_count", Field::SsmGroups),
    ],
    consts: &[
        ("embedding_scale", Const::F32(2.0)),
        ("residual_scale", Const::F32(0.7)),
        ("attention.scale", Const::F32(0.1)),
        ("logit_scale", Const::F32(1.25)),
        ("rope.scaling.finetuned", Const::Bool(false)),
    ],
    embeddings_scaled: false,
    tok: LLAMA3_TOK,
    presets: &[
        (
            "tiny",
            Shape {
                layers: 4,
                ssm: GRANITEHYBRID_SSM,
                ..tiny_shape(false, 0, 0)
            },
        ),
        (
            "tiny-moe",
            Shape {
                layers: 4,
                ssm: GRANITEHYBRID_SSM,
                ..tiny_shape(false, 8, 2)
            },
        ),
        // Granite 4.0 H 1B's shape: 40 layers at hidden 1536, every tenth attention (12 query
        // and 4 KV heads of 128), a 4096-wide FFN, Mamba-2 mixers of 48 heads × 64 with state
        // 128 and one group, a 100,352-token vocabulary; the benchmark file.
        (
            "h-1b",
            Shape {
                hidden: 1536,
                layers: 40,
                heads: 12,
                kv_heads: 4,
                head_dim: 128,
                ffn: 4096,
                vocab: 100_352,
                context: 4096,
                ssm: Ssm {
                    inner: 3072,
                    state: 128,
                    conv: 4,
                    rank: 48,
                    groups: 1,
                    attn_every: 10,
                },
                ..tiny_shape(false, 0, 0)
            },
        ),
    ],
};

const fn recurrent(name: &'static str, dims: &'static [Dim], role: Role) -> TensorTemplate {
    t_when(name, dims, role, When::Recurrent)
}

const fn attention(name: &'static str, dims: &'static [Dim], role: Role) -> TensorTemplate {
    t_when(name, dims, role, When::Attention)
}

/// Qwen3.5's layers as llama.cpp's `qwen35`/`qwen35moe` loaders name and size them: a Gated
/// DeltaNet mixer (fused q/k/v, the output gate `z`, β and α per value head, the convolution,
/// `dt_bias`, `A`, the gated norm's weight per head) or gated attention (queries and gate
/// logits from one projection, per-head q/k norms), then `post_attention_norm` before the
/// FFN: a dense one, or routed experts with a shared expert behind a sigmoid gate.
const QWEN35_LAYER: &[TensorTemplate] = &[
    t("blk.{i}.attn_norm.weight", &[Hidden], Role::Norm),
    recurrent(
        "blk.{i}.attn_qkv.weight",
        &[Hidden, DeltaQkv],
        Role::Proj(Cat::AttnQkv),
    ),
    recurrent(
        "blk.{i}.attn_gate.weight",
        &[Hidden, SsmInner],
        Role::Proj(Cat::SsmIn),
    ),
    recurrent(
        "blk.{i}.ssm_conv1d.weight",
        &[SsmConv, DeltaQkv],
        Role::Ssm(SsmPart::Conv),
    ),
    recurrent(
        "blk.{i}.ssm_dt.bias",
        &[SsmRank],
        Role::Ssm(SsmPart::DeltaDtBias),
    ),
    recurrent("blk.{i}.ssm_a", &[SsmRank], Role::Ssm(SsmPart::DeltaA)),
    recurrent(
        "blk.{i}.ssm_beta.weight",
        &[Hidden, SsmRank],
        Role::Proj(Cat::SsmIn),
    ),
    recurrent(
        "blk.{i}.ssm_alpha.weight",
        &[Hidden, SsmRank],
        Role::Proj(Cat::SsmIn),
    ),
    recurrent("blk.{i}.ssm_norm.weight", &[SsmState], Role::Norm),
    recurrent(
        "blk.{i}.ssm_out.weight",
        &[SsmInner, Hidden],
        Role::Proj(Cat::SsmOut),
    ),
    attention(
        "blk.{i}.attn_q.weight",
        &[Hidden, QueryGateWidth],
        Role::Proj(Cat::AttnQ),
    ),
    attention(
        "blk.{i}.attn_k.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnK),
    ),
    attention(
        "blk.{i}.attn_v.weight",
        &[Hidden, KvWidth],
        Role::Proj(Cat::AttnV),
    ),
    attention("blk.{i}.attn_q_norm.weight", &[Head], Role::Norm),
    attention("blk.{i}.attn_k_norm.weight", &[Head], Role::Norm),
    attention(
        "blk.{i}.attn_output.weight",
        &[QueryWidth, Hidden],
        Role::Proj(Cat::AttnOut),
    ),
    t("blk.{i}.post_attention_norm.weight", &[Hidden], Role::Norm),
    t_when(
        "blk.{i}.ffn_gate.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnGate),
        When::Dense,
    ),
    t_when(
        "blk.{i}.ffn_up.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnUp),
        When::Dense,
    ),
    t_when(
        "blk.{i}.ffn_down.weight",
        &[Ffn, Hidden],
        Role::Proj(Cat::FfnDown),
        When::Dense,
    ),
    t_when(
        "blk.{i}.ffn_gate_inp.weight",
        &[Hidden, Experts],
        Role::Router,
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_gate_exps.weight",
        &[Hidden, FfnExp, Experts],
        Role::Proj(Cat::FfnGate),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_up_exps.weight",
        &[Hidden, FfnExp, Experts],
        Role::Proj(Cat::FfnUp),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_down_exps.weight",
        &[FfnExp, Hidden, Experts],
        Role::Proj(Cat::FfnDown),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_gate_inp_shexp.weight",
        &[Hidden],
        Role::Router,
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_gate_shexp.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnGate),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_up_shexp.weight",
        &[Hidden, Ffn],
        Role::Proj(Cat::FfnUp),
        When::Moe,
    ),
    t_when(
        "blk.{i}.ffn_down_shexp.weight",
        &[Ffn, Hidden],
        Role::Proj(Cat::FfnDown),
        When::Moe,
    ),
];

/// The shape keys llama.cpp's `qwen35` loader reads (and `qwen35moe`'s, with the experts').
const QWEN35_META: &[(&str, Field)] = &[
    ("vocab_size", Field::Vocab),
    ("context_length", Field::Context),
    ("embedding_length", Field::Hidden),
    ("block_count", Field::Layers),
    ("feed_forward_length", Field::Ffn),
    ("attention.head_count", Field::Heads),
    ("attention.head_count_kv", Field::KvHeads),
    ("rope.freq_base", Field::RopeBase),
    ("rope.dimension_count", Field::RopeDim),
    ("rope.dimension_sections", Field::RopeSections),
    ("attention.layer_norm_rms_epsilon", Field::RmsEps),
    ("full_attention_interval", Field::FullAttnInterval),
    ("ssm.conv_kernel", Field::SsmConv),
    ("ssm.inner_size", Field::SsmInner),
    ("ssm.state_size", Field::SsmState),
    ("ssm.time_step_rank", Field::SsmRank),
    ("ssm.group_count", Field::SsmGroups),
];

/// The tiny Gated DeltaNet layers: 4 value heads over 2 key heads (so a wrong head grouping
/// shows), heads of 32, full attention every fourth layer.
const QWEN35_TINY_SSM: Ssm = Ssm {
    inner: 128,
    state: 32,
    conv: 4,
    rank: 4,
    groups: 2,
    attn_every: 4,
};

/// Qwen3.5 tiny: layers 0-2 Gated DeltaNet, layer 3 gated attention with a quarter of each
/// head rotated (Qwen3.5 turns 64 of 256) under interleaved M-RoPE sections.
const QWEN35_TINY: Shape = Shape {
    layers: 4,
    rope_dim: Some(16),
    rms_eps: 1e-6,
    ssm: QWEN35_TINY_SSM,
    ..tiny_shape(false, 0, 0)
};

/// Qwen3.5: hybrid Gated DeltaNet + gated attention (`2b`: the assumed shape of Qwen3.5-2B:
/// hidden 2048, 24 layers, 8 query and 2 KV heads of 256 with 64 rotated, FFN 6144, 16 key
/// and 16 value DeltaNet heads of 128, tied embeddings, a vocabulary of 248,320).
pub const QWEN35: Family = Family {
    arch: "qwen35",
    head: LLAMA_HEAD,
    layer: QWEN35_LAYER,
    tail: LLAMA_TAIL,
    meta: QWEN35_META,
    consts: &[],
    embeddings_scaled: false,
    tok: LLAMA3_TOK,
    presets: &[
        ("tiny", QWEN35_TINY),
        (
            "2b",
            Shape {
                hidden: 2048,
                layers: 24,
                heads: 8,
                kv_heads: 2,
                head_dim: 256,
                ffn: 6144,
                vocab: 248_320,
                context: 8192,
                rope_base: 10_000_000.0,
                rms_eps: 1e-6,
                tied: true,
                experts: 0,
                experts_used: 0,
                ffn_exp: 0,
                kinds: None,
                llama3_rope: None,
                rope_dim: Some(64),
                longrope: None,
                ssm: Ssm {
                    inner: 2048,
                    state: 128,
                    conv: 4,
                    rank: 16,
                    groups: 16,
                    attn_every: 4,
                },
            },
        ),
    ],
};

/// Qwen3.5 MoE: Qwen3.5's layers with routed experts and a sigmoid-gated shared expert
/// (Qwen3.5-35B-A3B: 256 experts, 8 used, one shared).
pub const QWEN35MOE: Family = Family {
    arch: "qwen35moe",
    head: LLAMA_HEAD,
    layer: QWEN35_LAYER,
    tail: LLAMA_TAIL,
    meta: &[
        ("vocab_size", Field::Vocab),
        ("context_length", Field::Context),
        ("embedding_length", Field::Hidden),
        ("block_count", Field::Layers),
        ("feed_forward_length", Field::Ffn),
        ("attention.head_count", Field::Heads),
        ("attention.head_count_kv", Field::KvHeads),
        ("rope.freq_base", Field::RopeBase),
        ("rope.dimension_count", Field::RopeDim),
        ("rope.dimension_sections", Field::RopeSections),
        ("attention.layer_norm_rms_epsilon", Field::RmsEps),
        ("full_attention_interval", Field::FullAttnInterval),
        ("ssm.conv_kernel", Field::SsmConv),
        ("ssm.inner_size", Field::SsmInner),
        ("ssm.state_size", Field::SsmState),
        ("ssm.time_step_rank", Field::SsmRank),
        ("ssm.group_count", Field::SsmGroups),
        ("expert_count", Field::Experts),
        ("expert_used_count", Field::ExpertsUsed),
        ("expert_feed_forward_length", Field::FfnExp),
        ("expert_shared_feed_forward_length", Field::SharedFfn),
    ],
    consts: &[],
    embeddings_scaled: false,
    tok: LLAMA3_TOK,
    presets: &[(
        "tiny",
        Shape {
            experts: 8,
            experts_used: 2,
            ffn_exp: 256,
            ..QWEN35_TINY
        },
    )],
};

pub const FAMILIES: &[&Family] = &[
    &LLAMA,
    &GRANITE,
    &SMOLLM3,
    &GEMMA2,
    &OLMO2,
    &QWEN3MOE,
    &GRANITEMOE,
    &GPT_OSS,
    &GEMMA4,
    &PHI3,
    &MAMBA,
    &MAMBA2,
    &GRANITEHYBRID,
    &QWEN35,
    &QWEN35MOE,
];

pub fn family(name: &str) -> Result<&'static Family, String> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.arch == name)
        .ok_or_else(|| {
            format!(
                "unknown family `{name}`; known: {}",
                FAMILIES
                    .iter()
                    .map(|f| f.arch)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

impl Family {
    pub fn preset(&self, name: &str) -> Result<Shape, String> {
        self.presets
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .ok_or_else(|| {
                format!(
                    "family {} has no preset `{name}`; presets: {}",
                    self.arch,
                    self.presets
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Quant mixes

/// A file's quantization as llama-quantize names it (`general.file_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4KS,
    Q4KM,
    Q5KM,
    Q6K,
    /// gpt-oss's files: expert stacks in MXFP4, every other matrix Q8_0.
    Mxfp4Moe,
}

impl Mix {
    pub const ALL: [Mix; 12] = [
        Mix::F32,
        Mix::F16,
        Mix::Q4_0,
        Mix::Q4_1,
        Mix::Q5_0,
        Mix::Q5_1,
        Mix::Q8_0,
        Mix::Q4KS,
        Mix::Q4KM,
        Mix::Q5KM,
        Mix::Q6K,
        Mix::Mxfp4Moe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mix::F32 => "F32",
            Mix::F16 => "F16",
            Mix::Q4_0 => "Q4_0",
            Mix::Q4_1 => "Q4_1",
            Mix::Q5_0 => "Q5_0",
            Mix::Q5_1 => "Q5_1",
            Mix::Q8_0 => "Q8_0",
            Mix::Q4KS => "Q4_K_S",
            Mix::Q4KM => "Q4_K_M",
            Mix::Q5KM => "Q5_K_M",
            Mix::Q6K => "Q6_K",
            Mix::Mxfp4Moe => "MXFP4_MOE",
        }
    }

    pub fn parse(s: &str) -> Result<Mix, String> {
        Mix::ALL
            .iter()
            .copied()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown quant `{s}`; known: {}",
                    Mix::ALL.map(Mix::name).join(", ")
                )
            })
    }

    /// `llama_ftype`.
    pub fn file_type(self) -> u32 {
        match self {
            Mix::F32 => 0,
            Mix::F16 => 1,
            Mix::Q4_0 => 2,
            Mix::Q4_1 => 3,
            Mix::Q8_0 => 7,
            Mix::Q5_0 => 8,
            Mix::Q5_1 => 9,
            Mix::Q4KS => 14,
            Mix::Q4KM => 15,
            Mix::Q5KM => 17,
            Mix::Q6K => 18,
            Mix::Mxfp4Moe => 38,
        }
    }

    fn base(self) -> QType {
        match self {
            Mix::F32 => QType::F32,
            Mix::F16 => QType::F16,
            Mix::Q4_0 => QType::Q4_0,
            Mix::Q4_1 => QType::Q4_1,
            Mix::Q5_0 => QType::Q5_0,
            Mix::Q5_1 => QType::Q5_1,
            Mix::Q8_0 | Mix::Mxfp4Moe => QType::Q8_0,
            Mix::Q4KS | Mix::Q4KM => QType::Q4K,
            Mix::Q5KM => QType::Q5K,
            Mix::Q6K => QType::Q6K,
        }
    }

    /// The type llama.cpp's `llama_tensor_get_type` gives a matrix (llama-quant.cpp, for
    /// dense models without an importance matrix), including its fallback for rows that are
    /// not whole blocks.
    pub fn matrix_type(
        self,
        role: Role,
        layer: usize,
        n_layer: usize,
        ncols: usize,
        tied: bool,
    ) -> QType {
        let base = self.base();
        if matches!(base, QType::F32 | QType::F16) {
            return base;
        }
        // llama.cpp's use_more_bits: the first and last eighth of the layers and every third
        // one between them.
        let more_bits = |i: usize, n: usize| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
        let ty = match role {
            Role::Output | Role::TokenEmbd if role == Role::Output || tied => {
                if !ncols.is_multiple_of(base.block_len()) || base == QType::Q8_0 {
                    QType::Q8_0
                } else {
                    QType::Q6K
                }
            }
            Role::Proj(Cat::AttnV) => match self {
                Mix::Q4KM | Mix::Q5KM if more_bits(layer, n_layer) => QType::Q6K,
                Mix::Q4KS if layer < 4 => QType::Q5K,
                _ => base,
            },
            Role::Proj(Cat::AttnQkv) => match self {
                Mix::Q4KM => QType::Q5K,
                Mix::Q5KM => QType::Q6K,
                _ => base,
            },
            Role::Proj(Cat::FfnDown) => match self {
                Mix::Q4KM | Mix::Q5KM if more_bits(layer, n_layer) => QType::Q6K,
                Mix::Q4KS if layer < n_layer / 8 => QType::Q5K,
                _ => base,
            },
            _ => base,
        };
        if ncols.is_multiple_of(ty.block_len()) {
            return ty;
        }
        let fallback = match ty {
            QType::Q4K => QType::Q5_0,
            QType::Q5K => QType::Q5_1,
            QType::Q6K => QType::Q8_0,
            other => other,
        };
        if ncols.is_multiple_of(fallback.block_len()) {
            fallback
        } else {
            QType::F16
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizers

/// Merges that cross the places where o200k's split differs from GPT-2's and Llama 3's, so a
/// tokenizer that splits text another way gives other ids: digit runs longer than three, a
/// space before digits, a case change inside a letter run (`helloWorld`), a contraction on a
/// one-letter word (`I'm`), a tab before a word, punctuation and spaces before a newline, and
/// the UTF-8 bytes of `é` and `ü`.
fn o200k_merges() -> Vec<(String, String)> {
    const PAIRS: &[(&[u8], &[u8])] = &[
        (b"1", b"2"),
        (b"3", b"4"),
        (b"2", b"3"),
        (b"4", b"5"),
        (b"5", b"6"),
        (b"6", b"7"),
        (b" ", b"1"),
        (b"o", b"W"),
        (b"e", b"W"),
        (b"d", b"T"),
        (b"I", b"'"),
        (b"\t", b"h"),
        (b"!", b"\n"),
        (b".", b"\n"),
        (b" ", b"\n"),
        (b"\n", b" "),
        (b";", b";"),
        (b"/", b"/"),
        (b"\xc3", b"\xa9"),
        (b"\xc3", b"\xbc"),
    ];
    let chars = byte_chars();
    let level = |bytes: &[u8]| -> String {
        bytes
            .iter()
            .map(|b| chars.iter().find(|(x, _)| x == b).expect("every byte").1)
            .collect()
    };
    PAIRS.iter().map(|(a, b)| (level(a), level(b))).collect()
}

/// GPT-2's byte → printable character map, in its order (printable bytes first).
pub fn byte_chars() -> Vec<(u8, char)> {
    let mut printable: Vec<u8> = (b'!'..=b'~').collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut out: Vec<(u8, char)> = printable.iter().map(|&b| (b, b as char)).collect();
    let mut n = 0u32;
    for b in 0..=255u8 {
        if !printable.contains(&b) {
            out.push((b, char::from_u32(256 + n).expect("valid char")));
            n += 1;
        }
    }
    out
}

/// Tokenizer metadata and which token ids may be predicted (normal tokens).
#[derive(Debug, Clone)]
pub struct Vocabulary {
    pub metadata: Vec<(String, Meta)>,
    pub normal: Vec<bool>,
}

/// A gpt2-style byte-level BPE: the 256 byte tokens, merges for a space before a letter and
/// for letter pairs, filler words up to `vocab`, then the family's control tokens. Gemma 4's
/// style starts with 256 byte-fallback tokens, `▁`, the letters and the digits instead, and
/// writes `▁` where gpt2 writes `Ġ`.
///
/// Filler words are a space, three or more letters and a digit: any id decodes to readable
/// text, no merge produces one, and no pre-tokenizer ever yields one as a whole word (they all
/// split letters from digits). That last point keeps llama.cpp's tokens equal to Influence's:
/// for `llama-bpe` llama.cpp takes a word that is in the vocabulary whole, before merging.
pub fn synthetic_vocabulary(style: &TokStyle, vocab: usize) -> Result<Vocabulary, String> {
    let n_spec = style.specials.len();
    if vocab < 256 + n_spec {
        return Err(format!(
            "--vocab {vocab} is too small: the synthetic tokenizer needs 256 byte tokens and {n_spec} control tokens"
        ));
    }
    let letters: Vec<char> = ('a'..='z').collect();
    // Gemma 4's vocabulary is SentencePiece-like: byte-fallback tokens, then characters.
    let gemma4 = style.model == "gemma4";
    let space = if gemma4 { '\u{2581}' } else { 'Ġ' };
    let mut tokens: Vec<String> = if gemma4 {
        let mut t: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        t.push(space.to_string());
        t.extend(letters.iter().map(|c| c.to_string()));
        t.extend(('0'..='9').map(|c| c.to_string()));
        t
    } else {
        byte_chars()
            .into_iter()
            .map(|(_, c)| c.to_string())
            .collect()
    };
    let chars = tokens.len();
    if vocab < chars + n_spec {
        return Err(format!(
            "--vocab {vocab} is too small: the synthetic tokenizer needs {chars} byte and character tokens and {n_spec} control tokens"
        ));
    }
    let mut merges: Vec<String> = Vec::new();
    let room = vocab - chars - n_spec;
    let candidates = letters
        .iter()
        .map(|&a| (String::from(space), a.to_string()))
        .chain(
            letters
                .iter()
                .flat_map(|&a| letters.iter().map(move |&b| (a.to_string(), b.to_string()))),
        )
        .chain(if style.pre == "gpt-4o" && !gemma4 {
            o200k_merges()
        } else {
            Vec::new()
        });
    for (a, b) in candidates.take(room) {
        merges.push(format!("{a} {b}"));
        tokens.push(format!("{a}{b}"));
    }
    let fillers = vocab - n_spec - tokens.len();
    let mut len = 3u32;
    while 26u64.pow(len) * 10 < fillers as u64 {
        len += 1;
    }
    let words = 26u64.pow(len) * 10;
    for i in 0..fillers as u64 {
        // A multiplier coprime with 260 scatters consecutive ids over the words.
        let mut k = (i * 7919) % words;
        let mut w = String::from(space);
        for _ in 0..len {
            w.push(letters[(k % 26) as usize]);
            k /= 26;
        }
        w.push(char::from(b'0' + k as u8));
        tokens.push(w);
    }
    let first_special = tokens.len();
    tokens.extend(style.specials.iter().map(|s| s.to_string()));
    let id_of = |s: &str| -> u32 {
        (first_special
            + style
                .specials
                .iter()
                .position(|x| *x == s)
                .expect("listed special")) as u32
    };
    let mut types = vec![1i32; first_special];
    if gemma4 {
        // Byte-fallback tokens are of type 6 (BYTE).
        types[..256].fill(6);
    }
    types.extend(std::iter::repeat_n(3, n_spec));
    let normal = types.iter().map(|&t| t == 1).collect();
    let mut metadata = vec![
        ("tokenizer.ggml.model".into(), Meta::str(style.model)),
        ("tokenizer.ggml.pre".into(), Meta::str(style.pre)),
        ("tokenizer.ggml.tokens".into(), Meta::strings(tokens)),
        ("tokenizer.ggml.token_type".into(), Meta::i32s(types)),
        ("tokenizer.ggml.merges".into(), Meta::strings(merges)),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Meta::U32(id_of(style.bos)),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Meta::U32(id_of(style.eos)),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Meta::Bool(style.add_bos),
        ),
        (
            "tokenizer.chat_template".into(),
            Meta::str(style.chat_template),
        ),
    ];
    if gemma4 {
        metadata.push(("tokenizer.ggml.add_space_prefix".into(), Meta::Bool(false)));
    }
    Ok(Vocabulary { metadata, normal })
}

/// Every `tokenizer.*` key of a real GGUF file, in name order; normal tokens are those of
/// type 1 (all but BOS/EOS when the file has no types).
pub fn vocabulary_from_gguf(path: &Path) -> Result<Vocabulary, String> {
    use candle_core::quantized::gguf_file::{Content, Value};
    let mut f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let content = Content::read(&mut f)
        .map_err(|e| format!("cannot read {} as GGUF: {e}", path.display()))?;
    let mut keys: Vec<&String> = content
        .metadata
        .keys()
        .filter(|k| k.starts_with("tokenizer."))
        .collect();
    keys.sort();
    let n = match content.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) if !a.is_empty() => a.len(),
        _ => {
            return Err(format!(
                "{} has no tokenizer.ggml.tokens to copy",
                path.display()
            ))
        }
    };
    let as_u32 = |k: &str| match content.metadata.get(k) {
        Some(v) => v.to_u32().ok(),
        None => None,
    };
    let normal = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) if a.len() == n => a
            .iter()
            .map(|v| matches!(v, Value::I32(1) | Value::U32(1)))
            .collect(),
        _ => {
            let special: Vec<u32> = ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"]
                .iter()
                .filter_map(|k| as_u32(k))
                .collect();
            (0..n as u32).map(|i| !special.contains(&i)).collect()
        }
    };
    let metadata = keys
        .into_iter()
        .map(|k| (k.clone(), Meta::from_candle(&content.metadata[k])))
        .collect();
    Ok(Vocabulary { metadata, normal })
}

pub fn vocabulary_len(v: &Vocabulary) -> usize {
    v.normal.len()
}

// ---------------------------------------------------------------------------------------------
// Plans

/// Everything that determines a file.
#[derive(Debug, Clone)]
pub struct Spec {
    pub family: &'static Family,
    pub preset: String,
    pub shape: Shape,
    pub mix: Mix,
    pub seed: u64,
    /// How far the greedy token stands above the rest; see [`Scales`].
    pub margin: f32,
    /// `None`: the synthetic vocabulary; otherwise one copied from a real file.
    pub vocabulary: Option<Vocabulary>,
}

pub const DEFAULT_MARGIN: f32 = 2.0;

impl Spec {
    pub fn preset(
        family: &'static Family,
        preset: &str,
        mix: Mix,
        seed: u64,
    ) -> Result<Spec, String> {
        Ok(Spec {
            family,
            preset: preset.to_string(),
            shape: family.preset(preset)?,
            mix,
            seed,
            margin: DEFAULT_MARGIN,
            vocabulary: None,
        })
    }
}

/// A tensor as it will be written.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    pub name: String,
    pub dims: Vec<usize>,
    pub qtype: QType,
    pub role: Role,
    pub layer: usize,
    /// RMS of its values (projections and embeddings); norms and biases ignore it.
    pub sigma: f32,
    /// Offset in the data section.
    pub offset: u64,
    pub bytes: u64,
    stream: u64,
}

impl PlannedTensor {
    pub fn row_len(&self) -> usize {
        self.dims[0]
    }
    pub fn rows(&self) -> usize {
        self.dims[1..].iter().product()
    }
    pub fn row_bytes(&self) -> usize {
        self.qtype.row_bytes(self.row_len())
    }
}

/// The numbers that shape the network's outputs.
///
/// A network of random projections has no preferred token: its logits are a Gaussian cloud and
/// the top two are close (for 128k tokens the expected gap is about a fifth of the logits'
/// spread), so a 1% difference in the hidden state between two implementations flips the
/// greedy choice every few steps. Scaling the output matrix does not help: it scales the gap
/// and the error alike. So the logits are given structure instead:
///
/// - The embedding of the current token `x` flows through the residual stream, and the LM head
///   row of one token `next(x)` is that embedding (plus noise, `OUT_NOISE`). With tied
///   embeddings `next(x) = x`; otherwise `next` is a seeded permutation of the normal tokens,
///   so greedy text walks through the vocabulary instead of repeating itself.
/// - The layers add a random part of RMS `rho` relative to the embedding. It moves every
///   other logit (so the layers' arithmetic shows in every log-probability) but the
///   structured token keeps an expected logit `margin` times the expected maximum of the
///   others: the winning logit is about `sqrt(hidden) / sqrt(1 + rho²)` standard deviations
///   up, the best of `vocab` random ones about `sqrt(2 ln vocab)`, and `rho` is solved from
///   that. With the default margin of 2 the top-2 gap is about `sqrt(2 ln vocab)` standard
///   deviations, 7 nats for Llama 3 shapes, against float differences of a few hundredths.
/// - `output_norm`'s weight sets the logits' spread (`LOGIT_STD`), so log-probabilities look
///   like a real model's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scales {
    /// Hidden-state RMS the layers add, relative to the embedding's.
    pub rho: f32,
    /// RMS each residual-writing matrix's output gets (attention output, FFN down).
    pub branch: f32,
    pub output_norm: f32,
    /// Whether `margin` could be met at this width and vocabulary.
    pub margin_met: bool,
}

/// Standard deviation of the logits of the tokens that do not win.
pub const LOGIT_STD: f32 = 1.5;
/// Noise added to each LM-head row, relative to the embedding it copies.
pub const OUT_NOISE: f32 = 0.5;
/// Token embeddings' RMS.
pub const EMBD_STD: f32 = 1.0;
/// RMS of `silu(gate) * up` for unit-normal gate and up: the FFN's inner activations.
const SWIGLU_RMS: f32 = 0.6;
/// RMS of a Mamba layer's gated output (mostly the `D` skip of a SiLU'd convolution, times
/// `silu(z)`): without the factor its layers would hardly move the logits.
const MAMBA_GATED_RMS: f32 = 0.35;
/// Below this, the layers hardly matter; the margin gives way instead.
const MIN_RHO: f32 = 0.5;

impl Scales {
    pub fn for_shape(shape: &Shape, margin: f32) -> Scales {
        let noise = if shape.tied { 0.0 } else { OUT_NOISE };
        let z = (2.0 * (shape.vocab.max(2) as f64).ln()).sqrt() as f32;
        let a = (shape.hidden as f32).sqrt() / ((1.0 + noise * noise).sqrt() * margin * z);
        let rho_sq = a * a - 1.0;
        let margin_met = rho_sq >= MIN_RHO * MIN_RHO;
        let rho = if margin_met { rho_sq.sqrt() } else { MIN_RHO };
        // Two residual writes per layer, assumed uncorrelated (attention's averaging over
        // positions only makes its part smaller, and the margin larger).
        let branch = rho * EMBD_STD / (2.0 * shape.layers as f32).sqrt();
        Scales {
            rho,
            branch,
            output_norm: LOGIT_STD / (EMBD_STD * (shape.hidden as f32).sqrt()),
            margin_met,
        }
    }
}

/// A file ready to write: metadata, tensors, scales and the LM head's token map.
#[derive(Debug, Clone)]
pub struct Plan {
    pub spec: Spec,
    pub metadata: Vec<(String, Meta)>,
    pub tensors: Vec<PlannedTensor>,
    pub scales: Scales,
    /// For each LM-head row, the token whose embedding it copies (`u32::MAX`: a control token's
    /// row, left at zero so it never wins).
    pub next_src: Vec<u32>,
    pub data_bytes: u64,
}

impl Plan {
    pub fn new(spec: Spec) -> Result<Plan, String> {
        let mut spec = spec;
        if !(spec.margin.is_finite() && spec.margin > 0.0) {
            return Err(format!("--margin {} must be positive", spec.margin));
        }
        let vocabulary = match spec.vocabulary.take() {
            Some(v) => {
                let n = vocabulary_len(&v);
                if spec.shape.vocab != n {
                    spec.shape.vocab = n;
                }
                v
            }
            None => synthetic_vocabulary(&spec.family.tok, spec.shape.vocab)?,
        };
        spec.shape.validate()?;
        let shape = spec.shape;
        let fam = spec.family;
        let mut scales = Scales::for_shape(&shape, spec.margin);
        if fam.layer.iter().any(|t| t.role == Role::PostNorm) {
            // A post-normed branch writes its norm weight's RMS whatever its matrices do.
            let writes = 2 + usize::from(shape.has(When::PerLayer, 0));
            scales.branch = scales.rho * EMBD_STD / ((writes * shape.layers) as f32).sqrt();
        }
        // Gemma multiplies embeddings by sqrt(hidden) on the way in: the table is written that
        // much smaller so the residual stream has the RMS the margin assumes (else the
        // embedding drowns every layer out), and a tied LM head's norm makes up for it.
        let embd_std = if fam.embeddings_scaled {
            EMBD_STD / (shape.hidden as f32).sqrt()
        } else {
            EMBD_STD
        };
        if fam.embeddings_scaled && shape.tied {
            scales.output_norm *= (shape.hidden as f32).sqrt();
        }

        let mut tensors = Vec::new();
        let mut add = |tpl: &TensorTemplate, layer: usize| {
            if (tpl.role == Role::Output && shape.tied) || !shape.has(tpl.when, layer) {
                return;
            }
            let name = tpl.name.replace("{i}", &layer.to_string());
            let dims: Vec<usize> = tpl.dims.iter().map(|&d| shape.dim(d, layer)).collect();
            let ncols = dims[0];
            let float = matches!(
                tpl.role,
                Role::Router
                    | Role::Bias
                    | Role::Norm
                    | Role::Ssm(_)
                    | Role::PlainProj
                    | Role::LayerScale
                    | Role::ExpertScale
                    | Role::RouterScale
                    | Role::RopeFreqs
                    | Role::RopeFactors(_)
            );
            let qtype = if dims.len() == 1 || float {
                QType::F32
            } else if spec.mix == Mix::Mxfp4Moe && dims.len() == 3 {
                // llama-quantize's MXFP4_MOE: expert stacks in MXFP4, the rest Q8_0.
                QType::Mxfp4
            } else {
                spec.mix
                    .matrix_type(tpl.role, layer, shape.layers, ncols, shape.tied)
            };
            let sigma = match tpl.role {
                Role::TokenEmbd => embd_std,
                Role::Output => EMBD_STD,
                // Scaled by sqrt(width) on the way in, to unit RMS.
                Role::PerLayerEmbd => 1.0 / (shape.dim(Dim::PerLayer, 0) as f32).sqrt(),
                Role::Proj(c) if c.writes_residual() => {
                    let inner = match c {
                        Cat::FfnDown => SWIGLU_RMS,
                        Cat::SsmOutUnnormed => MAMBA_GATED_RMS,
                        _ => 1.0,
                    };
                    scales.branch / (inner * (ncols as f32).sqrt())
                }
                Role::Proj(_) | Role::Router | Role::PlainProj => 1.0 / (ncols as f32).sqrt(),
                Role::Norm
                | Role::OutputNorm
                | Role::Bias
                | Role::Sink
                | Role::PostNorm
                | Role::LayerScale
                | Role::ExpertScale
                | Role::RouterScale
                | Role::RopeFreqs
                | Role::RopeFactors(_)
                | Role::Ssm(_) => 0.0,
            };
            let stream = name_hash(&name);
            tensors.push(PlannedTensor {
                name,
                dims,
                qtype,
                role: tpl.role,
                layer,
                sigma,
                offset: 0,
                bytes: 0,
                stream,
            });
        };
        for tpl in fam.head {
            add(tpl, 0);
        }
        for layer in 0..shape.layers {
            for tpl in fam.layer {
                add(tpl, layer);
            }
        }
        for tpl in fam.tail {
            add(tpl, 0);
        }
        let mut offset = 0u64;
        for t in &mut tensors {
            if !t.row_len().is_multiple_of(t.qtype.block_len()) {
                return Err(format!(
                    "{} has rows of {} values, not whole {} blocks",
                    t.name,
                    t.row_len(),
                    t.qtype
                ));
            }
            t.offset = offset;
            t.bytes = (t.rows() * t.row_bytes()) as u64;
            offset = align_up(offset + t.bytes);
        }

        let mut metadata: Vec<(String, Meta)> = vec![
            ("general.architecture".into(), Meta::str(fam.arch)),
            ("general.type".into(), Meta::str("model")),
            (
                "general.name".into(),
                Meta::str(format!(
                    "synthetic {} {} {} seed {}",
                    fam.arch,
                    spec.preset,
                    spec.mix.name(),
                    spec.seed
                )),
            ),
            (
                "general.description".into(),
                Meta::str(
                    "Random weights with valid quantized blocks, written by Influence's gen_gguf \
                     for tests and benchmarks; not a trained model.",
                ),
            ),
            ("general.file_type".into(), Meta::U32(spec.mix.file_type())),
            ("general.quantization_version".into(), Meta::U32(2)),
        ];
        for (key, field) in fam.meta {
            if matches!(field, Field::IfExperts(_)) && shape.experts == 0 {
                continue;
            }
            metadata.push((format!("{}.{key}", fam.arch), shape.field(*field)));
        }
        for (key, value) in fam.consts {
            let v = match *value {
                Const::F32(x) => Meta::F32(x),
                Const::U32(x) => Meta::U32(x),
                Const::Str(x) => Meta::str(x),
                Const::Bool(x) => Meta::Bool(x),
            };
            metadata.push((format!("{}.{key}", fam.arch), v));
        }
        if let Some(r) = shape.longrope {
            metadata.push((
                format!("{}.rope.scaling.attn_factor", fam.arch),
                Meta::F32(r.attn_factor),
            ));
        }
        // Mixtral-style llama files: llama.cpp reads the expert counts for every family.
        if shape.experts > 0 && !fam.meta.iter().any(|(k, _)| *k == "expert_count") {
            for (key, field) in [
                ("expert_count", Field::Experts),
                ("expert_used_count", Field::ExpertsUsed),
            ] {
                metadata.push((format!("{}.{key}", fam.arch), shape.field(field)));
            }
        }
        if shape.heads * shape.head_dim != shape.hidden {
            for key in ["attention.key_length", "attention.value_length"] {
                metadata.push((
                    format!("{}.{key}", fam.arch),
                    Meta::U32(shape.head_dim as u32),
                ));
            }
        }
        metadata.extend(vocabulary.metadata.iter().cloned());

        let next_src = if shape.tied {
            Vec::new()
        } else {
            let normal: Vec<u32> = (0..shape.vocab as u32)
                .filter(|&i| vocabulary.normal[i as usize])
                .collect();
            let mut perm = normal.clone();
            let mut rng = Rng::new(stream_seed(spec.seed, name_hash("next-token map"), 0));
            for i in (1..perm.len()).rev() {
                let j = rng.below(i as u32 + 1) as usize;
                perm.swap(i, j);
            }
            let mut src = vec![u32::MAX; shape.vocab];
            for (y, x) in normal.iter().zip(&perm) {
                src[*y as usize] = *x;
            }
            src
        };
        spec.vocabulary = Some(vocabulary);
        Ok(Plan {
            spec,
            metadata,
            tensors,
            scales,
            next_src,
            data_bytes: offset,
        })
    }

    /// Header bytes (metadata, tensor infos and padding).
    pub fn header_bytes(&self) -> u64 {
        let mut sink = io::sink();
        write_header(&mut sink, &self.metadata, &self.tensors).expect("a sink never fails")
    }

    pub fn file_bytes(&self) -> u64 {
        self.header_bytes() + self.data_bytes
    }

    /// Fills whole rows `first..` of `t` into `out`.
    fn fill_rows(&self, t: &PlannedTensor, first: usize, out: &mut [u8], scratch: &mut Vec<f32>) {
        let seed = self.spec.seed;
        let rb = t.row_bytes();
        for (k, row_out) in out.chunks_exact_mut(rb).enumerate() {
            let row = first + k;
            let mut rng = Rng::new(stream_seed(seed, t.stream, row as u64));
            match t.role {
                Role::Norm
                | Role::OutputNorm
                | Role::Bias
                | Role::Sink
                | Role::PostNorm
                | Role::LayerScale
                | Role::ExpertScale
                | Role::RouterScale => {
                    let (centre, spread) = match t.role {
                        Role::Norm => (1.0, 0.1),
                        // Sinks near the attention scores' own size, so each head gives a
                        // clear share of its weight to the sink.
                        Role::Sink => (0.5, 1.0),
                        Role::OutputNorm => {
                            (self.scales.output_norm, 0.05 * self.scales.output_norm)
                        }
                        Role::PostNorm => (self.scales.branch, 0.1 * self.scales.branch),
                        Role::LayerScale => (0.95, 0.05),
                        Role::ExpertScale => (1.0, 0.5),
                        Role::RouterScale => {
                            let c = 3.0 * (self.spec.shape.hidden as f32).sqrt();
                            (c, 0.1 * c)
                        }
                        _ => (0.0, 0.05),
                    };
                    scratch.clear();
                    scratch.extend((0..t.row_len()).map(|_| centre + spread * rng.sym()));
                    quantize_row(t.qtype, scratch, row_out);
                }
                Role::RopeFactors(long) => {
                    let top = self.spec.shape.longrope.map_or(1.0, |r| r.short_max);
                    let n = t.row_len().max(2) - 1;
                    scratch.clear();
                    scratch.extend((0..t.row_len()).map(|i| {
                        let short = 1.0 + (top - 1.0) * i as f32 / n as f32;
                        if long {
                            2.0 * short
                        } else {
                            short
                        }
                    }));
                    quantize_row(t.qtype, scratch, row_out);
                }
                Role::RopeFreqs => {
                    let shape = &self.spec.shape;
                    scratch.clear();
                    match shape.llama3_rope {
                        Some(r) => scratch.extend(r.factors(shape.rope_base, t.row_len())),
                        None => {
                            let frac = shape.kinds.map_or(1.0, |k| k.full_rope_fraction);
                            let rotated = (t.row_len() as f32 * frac).round() as usize;
                            scratch.extend((0..t.row_len()).map(|i| {
                                if i < rotated {
                                    1.0
                                } else {
                                    1e30
                                }
                            }));
                        }
                    }
                    quantize_row(t.qtype, scratch, row_out);
                }
                Role::TokenEmbd
                | Role::Proj(_)
                | Role::Router
                | Role::PerLayerEmbd
                | Role::PlainProj => random_row(t.qtype, &mut rng, t.sigma, row_out),
                Role::Output => self.output_row(t, row, &mut rng, row_out, scratch),
                Role::Ssm(part) => {
                    let n = t.row_len();
                    scratch.clear();
                    scratch.extend((0..n).map(|j| match part {
                        SsmPart::Conv => SQRT3 * rng.sym() / (n as f32).sqrt(),
                        SsmPart::ConvBias => 0.1 * rng.sym(),
                        SsmPart::A2 => -(1.0 + 15.0 * rng.unit()),
                        SsmPart::A1 => -((j + 1) as f32),
                        SsmPart::D => 1.0 + 0.1 * rng.sym(),
                        SsmPart::DtBias => {
                            let dt = (0.001f32.ln() + rng.unit() * (0.1f32 / 0.001).ln()).exp();
                            dt + (-(-dt).exp_m1()).ln()
                        }
                        SsmPart::DeltaA => -(0.1 + 0.9 * rng.unit()),
                        SsmPart::DeltaDtBias => 0.1 * rng.sym(),
                    }));
                    quantize_row(t.qtype, scratch, row_out);
                }
            }
        }
    }

    /// An LM-head row: the embedding of the token it follows, plus noise, re-quantized.
    fn output_row(
        &self,
        t: &PlannedTensor,
        row: usize,
        rng: &mut Rng,
        out: &mut [u8],
        scratch: &mut Vec<f32>,
    ) {
        let src = self.next_src[row];
        if src == u32::MAX {
            out.fill(0);
            return;
        }
        let embd = self
            .tensors
            .iter()
            .find(|e| e.role == Role::TokenEmbd)
            .expect("every family has token_embd");
        let mut bits = vec![0u8; embd.row_bytes()];
        let mut erng = Rng::new(stream_seed(self.spec.seed, embd.stream, src as u64));
        random_row(embd.qtype, &mut erng, embd.sigma, &mut bits);
        scratch.resize(t.row_len(), 0.0);
        dequantize_row(embd.qtype, &bits, scratch);
        let norm = 1.0 / (1.0 + OUT_NOISE * OUT_NOISE).sqrt();
        for v in scratch.iter_mut() {
            *v = (*v + OUT_NOISE * SQRT3 * EMBD_STD * rng.sym()) * norm;
        }
        quantize_row(t.qtype, scratch, out);
    }

    /// One line per tensor type: how many tensors and bytes.
    pub fn type_summary(&self) -> String {
        let mut by: Vec<(QType, usize, u64)> = Vec::new();
        for t in &self.tensors {
            match by.iter_mut().find(|(q, ..)| *q == t.qtype) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += t.bytes;
                }
                None => by.push((t.qtype, 1, t.bytes)),
            }
        }
        by.sort_by_key(|(q, ..)| q.ggml_id());
        by.iter()
            .map(|(q, n, b)| format!("{q}: {n} tensors, {:.1} MiB", *b as f64 / (1 << 20) as f64))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What [`write_file`] did.
#[derive(Debug, Clone)]
pub struct Written {
    pub bytes: u64,
    pub seconds: f64,
}

/// Bytes per unit of work handed to the threads and then to the writer.
const CHUNK_BYTES: usize = 16 << 20;

/// Writes the plan's file to `path` (through a temporary file beside it, renamed at the end,
/// so an interrupted run leaves no half file under the real name). Rows are generated on
/// `threads` threads while a writer thread streams the previous chunk out.
pub fn write_file(plan: &Plan, path: &Path, threads: usize) -> io::Result<Written> {
    let start = Instant::now();
    let threads = threads.max(1);
    let tmp = path.with_extension("gguf.partial");
    let file = File::create(&tmp)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let header = write_header(&mut w, &plan.metadata, &plan.tensors)?;

    let (to_writer, from_main) = mpsc::sync_channel::<Vec<u8>>(2);
    let (recycle, reuse) = mpsc::channel::<Vec<u8>>();
    let result = std::thread::scope(|s| -> io::Result<()> {
        let writer = s.spawn(move || -> io::Result<()> {
            for buf in from_main {
                w.write_all(&buf)?;
                let _ = recycle.send(buf);
            }
            w.flush()
        });
        let mut produced: io::Result<()> = Ok(());
        'tensors: for t in &plan.tensors {
            let rb = t.row_bytes();
            let rows_per_chunk = (CHUNK_BYTES / rb).max(1);
            let mut row = 0;
            while row < t.rows() {
                let n = rows_per_chunk.min(t.rows() - row);
                let mut buf = reuse.try_recv().unwrap_or_default();
                // Every byte is overwritten below; only growth needs zeroing.
                buf.truncate(n * rb);
                buf.resize(n * rb, 0);
                let per = n.div_ceil(threads);
                std::thread::scope(|inner| {
                    for (i, part) in buf.chunks_mut(per * rb).enumerate() {
                        let first = row + i * per;
                        inner.spawn(move || {
                            let mut scratch = Vec::new();
                            plan.fill_rows(t, first, part, &mut scratch);
                        });
                    }
                });
                row += n;
                let end = t.offset + t.bytes;
                if row == t.rows() && align_up(end) > end {
                    buf.resize(buf.len() + (align_up(end) - end) as usize, 0);
                }
                if to_writer.send(buf).is_err() {
                    produced = Err(io::Error::other("the writer thread stopped"));
                    break 'tensors;
                }
            }
        }
        drop(to_writer);
        let written = writer.join().expect("writer thread panicked");
        written.and(produced)
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    Ok(Written {
        bytes: header + plan.data_bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}
