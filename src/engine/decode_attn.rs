//! Attention of one decoded row over its KV cache, on host vectors and the own pool.
//!
//! Through candle a decoded token's attention was a dozen tensor ops per layer (head
//! transposes, two batched GEMMs that pack their operands on every call, a concatenation for
//! the sinks, the softmax, copies back): on gpt-oss-20b-shaped files about a seventh of the
//! calling thread's time while the pool's other thread waited. Here each query head's scores,
//! softmax (with its sink and the sliding window) and weighted sum of values run in one pass
//! over the cache's rows, and the heads are shared between the pool's threads. It serves layers
//! with sinks; other layers take `prompt_attn.rs` (bit-identical to candle's path) or candle's.
//!
//! **Numerics.** The same operations as the candle path (scores times the scale, the optional
//! soft cap, max, exp, sum, divide, weighted sum), summed in a different order, so results
//! differ from it by float rounding only. A row's result never depends on the other rows of its
//! batch: each sequence's row runs alone here.

use candle_core::{CpuStorage, Result, Storage, Tensor};

use super::prompt_attn::KvValue;

/// What one row's attention needs besides its query and cache.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies the raw scores.
    pub scale: f32,
    /// `tanh(s / cap) · cap` on the scaled scores (Gemma 2).
    pub softcap: Option<f32>,
    /// A sliding-window layer's window: only the last `window` positions are seen.
    pub window: Option<usize>,
    /// One logit per query head that joins the softmax without a value (gpt-oss).
    pub sinks: Option<&'a [f32]>,
}

/// From this many multiply-adds on, the work is split across the pool's threads.
const PAR_MIN: usize = 1 << 15;

/// Fewest positions in one block of a split cache: below this the merge costs more than it saves.
const MIN_BLOCK: usize = 64;

/// `q`: the row's query heads, (1, heads, 1, head_dim) or any contiguous layout of
/// `heads × head_dim` values; `k`, `v`: the cache's positions, (1, kv_heads, len, head_dim),
/// each head's positions contiguous (a cache buffer narrowed to its length), f32 or f16 (read
/// in place). Returns the attention output (1, 1, heads × head_dim), or `None` when a tensor is
/// not in host memory with that layout and those types (the caller then takes candle's path).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, s: &Shape) -> Option<Result<Tensor>> {
    let hd = s.head_dim;
    if s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) || hd == 0 {
        return None;
    }
    let (q_guard, q_layout) = q.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(qd)) = &*q_guard else {
        return None;
    };
    let (qa, qb) = q_layout.contiguous_offsets()?;
    let qd = &qd[qa..qb];
    if qd.len() != s.heads * hd {
        return None;
    }
    let kv = |t: &Tensor| -> Option<(usize, usize, usize)> {
        let (_, h, len, d) = t.dims4().ok()?;
        let st = t.layout().stride();
        (h == s.kv_heads && d == hd && st[3] == 1 && (len <= 1 || st[2] == hd))
            .then(|| (t.layout().start_offset(), st[1], len))
    };
    let (k_off, k_head, len) = kv(k)?;
    let (v_off, v_head, v_len) = kv(v)?;
    if len == 0 || v_len != len || s.sinks.is_some_and(|x| x.len() != s.heads) {
        return None;
    }
    let (k_guard, _) = k.storage_and_layout();
    let (v_guard, _) = v.storage_and_layout();
    let at = Offsets {
        k: k_off,
        k_head,
        v: v_off,
        v_head,
        len,
    };
    let out = match (&*k_guard, &*v_guard) {
        (Storage::Cpu(CpuStorage::F32(kd)), Storage::Cpu(CpuStorage::F32(vd))) => {
            run(qd, kd, vd, &at, s)?
        }
        (Storage::Cpu(CpuStorage::F16(kd)), Storage::Cpu(CpuStorage::F16(vd))) => {
            run(qd, kd, vd, &at, s)?
        }
        _ => return None,
    };
    drop((q_guard, k_guard, v_guard));
    Some(Tensor::from_vec(
        out,
        (1, 1, s.heads * hd),
        &candle_core::Device::Cpu,
    ))
}

/// Where the cache's heads lie in its K and V buffers, and the positions held.
struct Offsets {
    k: usize,
    k_head: usize,
    v: usize,
    v_head: usize,
    len: usize,
}

/// The attention of every query head. Work goes out in units of one KV head (its query heads
/// together, so each key and value row is read once for all of them) over one block of
/// positions; blocks keep every thread busy when a model has fewer KV heads than the pool has
/// threads. Each unit leaves, per query head, its block's score maximum, the sum of its
/// exponentials and their weighted sum of values; the blocks are then merged as the softmax
/// over the whole span.
fn run<T: KvValue>(qd: &[f32], kd: &[T], vd: &[T], at: &Offsets, s: &Shape) -> Option<Vec<f32>> {
    let (hd, len) = (s.head_dim, at.len);
    let end = |off: usize, head: usize| off + (s.kv_heads - 1) * head + len * hd;
    if end(at.k, at.k_head) > kd.len() || end(at.v, at.v_head) > vd.len() {
        return None;
    }
    let start = s.window.map_or(0, |w| len.saturating_sub(w));
    let span = len - start;
    let n_rep = s.heads / s.kv_heads;
    let threads = if s.heads * span * hd * 2 < PAR_MIN {
        1
    } else {
        super::pool::threads()
    };
    let blocks = (2 * threads)
        .div_ceil(s.kv_heads)
        .clamp(1, span.div_ceil(MIN_BLOCK).max(1));
    let block_len = span.div_ceil(blocks);
    // Per unit and query head: maximum, sum, then `hd` weighted values.
    let per_head = hd + 2;
    let per_unit = n_rep * per_head;
    let mut partial = vec![0f32; s.kv_heads * blocks * per_unit];
    let unit = |u: usize, part: &mut [f32]| {
        let (g, b) = (u / blocks, u % blocks);
        let from = start + b * block_len;
        let to = (from + block_len).min(len);
        let keys = &kd[at.k + g * at.k_head..][..len * hd];
        let vals = &vd[at.v + g * at.v_head..][..len * hd];
        let q = &qd[g * n_rep * hd..(g + 1) * n_rep * hd];
        block(q, keys, vals, from..to, s, part);
    };
    if threads == 1 {
        for (u, part) in partial.chunks_exact_mut(per_unit).enumerate() {
            unit(u, part);
        }
    } else {
        super::pool::for_each_chunk_mut(&mut partial, per_unit, unit);
    }
    let mut out = vec![0f32; s.heads * hd];
    for (h, dst) in out.chunks_exact_mut(hd).enumerate() {
        let (g, r) = (h / n_rep, h % n_rep);
        let parts = (0..blocks).map(|b| {
            let at = ((g * blocks + b) * n_rep + r) * per_head;
            &partial[at..at + per_head]
        });
        let sink = s.sinks.map(|x| x[h]);
        let max = parts
            .clone()
            .map(|p| p[0])
            .fold(sink.unwrap_or(f32::NEG_INFINITY), f32::max);
        let mut sum = sink.map_or(0.0, |x| (x - max).exp());
        for p in parts {
            if p[1] == 0.0 {
                continue;
            }
            let f = (p[0] - max).exp();
            sum += p[1] * f;
            for (o, &x) in dst.iter_mut().zip(&p[2..]) {
                *o += f * x;
            }
        }
        let inv = 1.0 / sum;
        dst.iter_mut().for_each(|o| *o *= inv);
    }
    Some(out)
}

/// One KV head's query heads `q` (`n_rep` rows) over positions `range` of its `keys` and
/// `vals`: per query head into `out`, the scores' maximum, the sum of their exponentials and
/// the exponential-weighted sum of the values (maximum −∞ and sum 0 for an empty range).
fn block<T: KvValue>(
    q: &[f32],
    keys: &[T],
    vals: &[T],
    range: std::ops::Range<usize>,
    s: &Shape,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let n_rep = q.len() / hd;
    let n = range.len();
    let per_head = hd + 2;
    out.fill(0.0);
    if n == 0 {
        for r in 0..n_rep {
            out[r * per_head] = f32::NEG_INFINITY;
        }
        return;
    }
    // f16 rows are widened as they load. f32 rows take the 16-lane loops below, which the
    // compiler vectorizes for the CPU's widest vectors: on AVX-512 they decoded SmolLM2 at
    // 1,024 positions at 100-112 tok/s, the 8-lane kernel at 93-95.
    #[cfg(target_arch = "x86_64")]
    let vector =
        T::HALF && n_rep <= fma::MAX_REP && hd.is_multiple_of(8) && super::prompt_attn::has_fma();
    #[cfg(not(target_arch = "x86_64"))]
    let vector = false;
    let mut row = vec![0f32; hd];
    // One value per query head: its score at a position, then its weight there.
    let mut dots = vec![0f32; n_rep];
    // Scores, one row of `n` per query head.
    let mut scores = vec![0f32; n_rep * n];
    for (j, p) in range.clone().enumerate() {
        let key = &keys[p * hd..(p + 1) * hd];
        if vector {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `vector` checked AVX2, FMA and F16C, hd a multiple of 8 and n_rep ≤
            // MAX_REP; `q` holds n_rep rows of hd values and `key` one.
            unsafe {
                fma::dots(q, key, &mut dots)
            };
        } else {
            let k = T::row(key, &mut row);
            for (r, d) in dots.iter_mut().enumerate() {
                *d = dot(&q[r * hd..(r + 1) * hd], k);
            }
        }
        for (r, &d) in dots.iter().enumerate() {
            let x = d * s.scale;
            scores[r * n + j] = match s.softcap {
                Some(cap) => (x / cap).tanh() * cap,
                None => x,
            };
        }
    }
    for r in 0..n_rep {
        let sc = &mut scores[r * n..(r + 1) * n];
        let max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        sc.iter_mut().for_each(|x| *x -= max);
        super::expf::exp_in_place(sc);
        out[r * per_head] = max;
        out[r * per_head + 1] = sc.iter().sum();
    }
    for (j, p) in range.enumerate() {
        let val = &vals[p * hd..(p + 1) * hd];
        if vector {
            for (r, w) in dots.iter_mut().enumerate() {
                *w = scores[r * n + j];
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as for `fma::dots`; `out` holds n_rep runs of hd + 2 values.
            unsafe {
                fma::weigh(&dots, val, out)
            };
            continue;
        }
        let v = T::row(val, &mut row);
        for r in 0..n_rep {
            let w = scores[r * n + j];
            let acc = &mut out[r * per_head + 2..(r + 1) * per_head];
            for (o, &x) in acc.iter_mut().zip(v) {
                *o = w.mul_add(x, *o);
            }
        }
    }
}

/// Query heads per KV head the vector path takes (`dots` keeps one accumulator for each).
const MAX_REP: usize = 16;

/// Eight lanes per vector, the cache read in place (f16 widened as it loads).
#[cfg(target_arch = "x86_64")]
mod fma {
    use super::KvValue;
    use std::arch::x86_64::*;

    pub(super) const MAX_REP: usize = super::MAX_REP;

    /// `out[r] = q_r · key` for the `out.len()` query rows of `q`, each `key.len()` long.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `key.len()` is a multiple of 8, `out.len()` at
    /// most `MAX_REP`, and `q` holds `out.len()` rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dots<T: KvValue>(q: &[f32], key: &[T], out: &mut [f32]) {
        let hd = key.len();
        let n = out.len();
        debug_assert!(n <= MAX_REP && q.len() >= n * hd && hd.is_multiple_of(8));
        let mut acc = [_mm256_setzero_ps(); MAX_REP];
        for c in (0..hd).step_by(8) {
            // SAFETY: c + 8 ≤ hd, inside `key`; rows r < n of `q` hold hd values.
            let k = unsafe { T::load8(key.as_ptr().add(c)) };
            for (r, a) in acc.iter_mut().take(n).enumerate() {
                let qv = unsafe { _mm256_loadu_ps(q.as_ptr().add(r * hd + c)) };
                *a = _mm256_fmadd_ps(qv, k, *a);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            *o = _mm_cvtss_f32(s);
        }
    }

    /// Adds `w[r] · val` to the weighted values of query row `r` in `out` (runs of
    /// `val.len() + 2` values: maximum, sum, then the weighted values).
    ///
    /// # Safety
    /// As for [`dots`], with `out` holding `w.len()` runs.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weigh<T: KvValue>(w: &[f32], val: &[T], out: &mut [f32]) {
        let hd = val.len();
        let per = hd + 2;
        debug_assert!(out.len() >= w.len() * per && hd.is_multiple_of(8));
        for c in (0..hd).step_by(8) {
            // SAFETY: c + 8 ≤ hd, inside `val` and inside each run's values.
            let x = unsafe { T::load8(val.as_ptr().add(c)) };
            for (r, &wr) in w.iter().enumerate() {
                unsafe {
                    let p = out.as_mut_ptr().add(r * per + 2 + c);
                    _mm256_storeu_ps(
                        p,
                        _mm256_fmadd_ps(_mm256_set1_ps(wr), x, _mm256_loadu_ps(p)),
                    );
                }
            }
        }
    }
}

/// `a · b` in 16 independent lanes (one vector register with AVX-512).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ac, ar) = a.as_chunks::<16>();
    let (bc, br) = b.as_chunks::<16>();
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..16 {
            lanes[l] = x[l].mul_add(y[l], lanes[l]);
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// candle's path for one row, as `decoder::seq_attention` ran it before this module.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, s: &Shape) -> Vec<f32> {
        let (nh, nkv, hd) = (s.heads, s.kv_heads, s.head_dim);
        let len = k.dim(2).unwrap();
        let q = q.reshape((1, nkv, nh / nkv, hd)).unwrap();
        let mut att = (q.matmul(&k.t().unwrap()).unwrap() * s.scale as f64).unwrap();
        if let Some(cap) = s.softcap {
            att = ((att / cap as f64).unwrap().tanh().unwrap() * cap as f64).unwrap();
        }
        let mut mask = vec![0f32; len];
        if let Some(w) = s.window {
            for m in mask.iter_mut().take(len.saturating_sub(w)) {
                *m = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(mask, (1, 1, 1, len), &Device::Cpu).unwrap();
        let att = att.broadcast_add(&mask).unwrap();
        let att = match s.sinks {
            Some(x) => {
                let col = Tensor::from_slice(x, (1, nkv, nh / nkv, 1), &Device::Cpu).unwrap();
                let with = Tensor::cat(&[&att, &col], D::Minus1).unwrap();
                candle_nn::ops::softmax_last_dim(&with)
                    .unwrap()
                    .narrow(D::Minus1, 0, len)
                    .unwrap()
            }
            None => candle_nn::ops::softmax_last_dim(&att).unwrap(),
        };
        att.contiguous()
            .unwrap()
            .matmul(&v.contiguous().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// [`attend`]'s output as a vector; panics where it declines.
    fn attend_vec(q: &Tensor, k: &Tensor, v: &Tensor, s: &Shape) -> Vec<f32> {
        attend(q, k, v, s)
            .expect("this layout takes the own path")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed * 97);
                ((x >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// A cache buffer of `cap` positions narrowed to `len`, as `KvCache` hands them out.
    fn cache(nkv: usize, cap: usize, len: usize, hd: usize, seed: u32) -> Tensor {
        Tensor::from_vec(data(nkv * cap * hd, seed), (1, nkv, cap, hd), &Device::Cpu)
            .unwrap()
            .narrow(2, 0, len)
            .unwrap()
    }

    #[test]
    fn matches_candle_s_path_with_sinks_window_and_softcap() {
        let sinks = data(8, 5);
        // Small (one thread) and large (split across the pool) shapes.
        for (nh, nkv, hd, len) in [(8usize, 2usize, 16usize, 5usize), (8, 2, 64, 300)] {
            let cases = [
                (None, None, None),
                (Some(&sinks[..nh]), None, None),
                (Some(&sinks[..nh]), Some(4usize), None),
                (None, Some(len + 10), Some(3.0f32)),
            ];
            for (sinks, window, softcap) in cases {
                let s = Shape {
                    heads: nh,
                    kv_heads: nkv,
                    head_dim: hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                    softcap,
                    window,
                    sinks,
                };
                let q = Tensor::from_vec(data(nh * hd, 1), (1, nh, 1, hd), &Device::Cpu).unwrap();
                let k = cache(nkv, len + 7, len, hd, 2);
                let v = cache(nkv, len + 7, len, hd, 3);
                let got = attend_vec(&q, &k, &v, &s);
                let want = reference(&q, &k, &v, &s);
                assert_eq!(got.len(), want.len());
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{nh}/{nkv}×{hd} over {len}, {window:?} {softcap:?}: [{i}] {a} vs {b}"
                    );
                }
            }
        }
    }

    /// Long caches go out in blocks of positions merged afterwards, and f16 caches are read
    /// in place: the same results as candle's path on the widened values.
    #[test]
    fn long_and_f16_caches_match_candle_s_path() {
        use candle_core::DType;
        let sinks = data(32, 5);
        // The vector path (head sizes in eights, up to 16 query heads per KV head) and the
        // plain one (a head size of 20, 32 query heads on one KV head).
        let shapes = [
            (9usize, 3usize, 64usize, 1500usize),
            (12, 2, 128, 700),
            (4, 4, 32, 513),
            (6, 2, 20, 520),
            (32, 1, 24, 600),
        ];
        for (nh, nkv, hd, len) in shapes {
            for (dtype, window, with_sinks) in [
                (DType::F32, None, false),
                (DType::F16, None, false),
                (DType::F16, Some(600usize), true),
                (DType::F32, Some(100), false),
            ] {
                let s = Shape {
                    heads: nh,
                    kv_heads: nkv,
                    head_dim: hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                    softcap: None,
                    window,
                    sinks: with_sinks.then(|| &sinks[..nh]),
                };
                let q = Tensor::from_vec(data(nh * hd, 1), (1, nh, 1, hd), &Device::Cpu).unwrap();
                let held = |seed| {
                    let full = cache(nkv, len + 9, len + 9, hd, seed)
                        .to_dtype(dtype)
                        .unwrap();
                    full.narrow(2, 0, len).unwrap()
                };
                let (k, v) = (held(2), held(3));
                let got = attend_vec(&q, &k, &v, &s);
                let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                let want = reference(&q, &wide(&k), &wide(&v), &s);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{nh}/{nkv}×{hd} over {len} {dtype:?} {window:?}: [{i}] {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn declines_layouts_it_cannot_read() {
        let s = Shape {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            scale: 1.0,
            softcap: None,
            window: None,
            sinks: None,
        };
        let q = Tensor::zeros((1, 4, 1, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let k = cache(2, 9, 9, 8, 1);
        // Positions strided by a transpose: not one row after another.
        let kt = Tensor::zeros((1, 2, 8, 9), candle_core::DType::F32, &Device::Cpu)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        assert!(attend(&q, &kt, &k, &s).is_none());
        let wrong_heads = cache(4, 9, 9, 8, 1);
        assert!(attend(&q, &wrong_heads, &wrong_heads, &s).is_none());
        assert!(attend(&q, &k, &k, &s).is_some());
    }
}
