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

/// From this many multiply-adds on, the heads are split across the pool's threads.
const PAR_MIN: usize = 1 << 15;

/// `q`: the row's query heads, (1, heads, 1, head_dim) or any contiguous layout of
/// `heads × head_dim` values; `k`, `v`: the cache's positions, (1, kv_heads, len, head_dim),
/// each head's positions contiguous (a cache buffer narrowed to its length). Returns the
/// attention output (1, 1, heads × head_dim), or `None` when a tensor is not f32 in host
/// memory with that layout (the caller then takes candle's path).
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
    if len == 0 || v_len != len {
        return None;
    }
    let (k_guard, _) = k.storage_and_layout();
    let (v_guard, _) = v.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(kd)), Storage::Cpu(CpuStorage::F32(vd))) =
        (&*k_guard, &*v_guard)
    else {
        return None;
    };
    let end = |off: usize, head: usize| off + (s.kv_heads - 1) * head + len * hd;
    if end(k_off, k_head) > kd.len() || end(v_off, v_head) > vd.len() {
        return None;
    }
    if s.sinks.is_some_and(|x| x.len() != s.heads) {
        return None;
    }
    let start = s.window.map_or(0, |w| len.saturating_sub(w));
    let n_rep = s.heads / s.kv_heads;
    let mut out = vec![0f32; s.heads * hd];
    let head = |h: usize, dst: &mut [f32], scores: &mut Vec<f32>| {
        let g = h / n_rep;
        let keys = &kd[k_off + g * k_head..][..len * hd];
        let vals = &vd[v_off + g * v_head..][..len * hd];
        one_head(
            &qd[h * hd..(h + 1) * hd],
            &keys[start * hd..],
            &vals[start * hd..],
            s.sinks.map(|x| x[h]),
            s,
            scores,
            dst,
        );
    };
    if s.heads * (len - start) * hd * 2 < PAR_MIN {
        let mut scores = Vec::with_capacity(len);
        for (h, dst) in out.chunks_exact_mut(hd).enumerate() {
            head(h, dst, &mut scores);
        }
    } else {
        let per_part = s.heads.div_ceil(super::pool::threads() * 4).max(1);
        super::pool::for_each_chunk_mut(&mut out, per_part * hd, |i, part| {
            let mut scores = Vec::with_capacity(len);
            for (j, dst) in part.chunks_exact_mut(hd).enumerate() {
                head(i * per_part + j, dst, &mut scores);
            }
        });
    }
    drop((q_guard, k_guard, v_guard));
    Some(Tensor::from_vec(
        out,
        (1, 1, s.heads * hd),
        &candle_core::Device::Cpu,
    ))
}

/// One query head over `keys` / `vals` (rows of `q.len()` values), into `out`.
fn one_head(
    q: &[f32],
    keys: &[f32],
    vals: &[f32],
    sink: Option<f32>,
    s: &Shape,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len();
    scores.clear();
    scores.extend(keys.chunks_exact(hd).map(|k| {
        let x = dot(q, k) * s.scale;
        match s.softcap {
            Some(cap) => (x / cap).tanh() * cap,
            None => x,
        }
    }));
    let max = scores
        .iter()
        .copied()
        .fold(sink.unwrap_or(f32::NEG_INFINITY), f32::max);
    let mut sum = sink.map_or(0.0, |x| (x - max).exp());
    for x in scores.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    out.fill(0.0);
    for (&p, v) in scores.iter().zip(vals.chunks_exact(hd)) {
        let w = p / sum;
        for (o, &x) in out.iter_mut().zip(v) {
            *o += w * x;
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
                let got: Vec<f32> = attend(&q, &k, &v, &s)
                    .unwrap()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
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
