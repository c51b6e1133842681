//! Small decoder ops tuned for the token-by-token path, and the elementwise ops of prompt
//! chunks, run on the own kernels' pool.

use std::ops::Range;

use candle_core::{CpuStorage, Result, Storage, Tensor};

/// Softmax over the last dimension, bit-identical to `candle_nn::ops::softmax_last_dim`.
///
/// candle-nn hands every softmax to rayon's pool, which costs a thread wake-up (a futex round
/// trip) per call: 30 per generated token on a 30-layer model, each far longer than the
/// softmax itself, and for prompt chunks a third pool beside candle's and the own kernels'.
/// Rows run here with candle's own reductions (max, sum), exp and divide, so outputs do not
/// change: small inputs on the calling thread, large ones (prompt chunks) on the own pool.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let d = x.dim(candle_core::D::Minus1)?;
    let mut data = x.flatten_all()?.to_vec1::<f32>()?;
    if d == 0 {
        return Tensor::from_vec(data, x.shape(), x.device());
    }
    if data.len() < PAR_MIN {
        data.chunks_exact_mut(d).for_each(softmax_row);
    } else {
        let rows_per_chunk = (CHUNK / d).max(1);
        super::pool::for_each_chunk_mut(&mut data, rows_per_chunk * d, |_, part| {
            part.chunks_exact_mut(d).for_each(softmax_row)
        });
    }
    Tensor::from_vec(data, x.shape(), x.device())
}

/// One row's softmax in place, in candle-nn's operations.
fn softmax_row(row: &mut [f32]) {
    softmax_row_visible(row, 0, row.len());
}

/// Softmax of a row whose values outside `lo..hi` are −∞, in candle-nn's operations (max,
/// `exp(v − max)`, sum, divide) but without the −∞ values' `exp`: it would give an exact 0, and
/// so would 0 / sum. The max and the sum run over the whole row in candle's reductions, so
/// every value is bit-identical to candle-nn's softmax of the whole row.
pub fn softmax_row_visible(row: &mut [f32], lo: usize, hi: usize) {
    use candle_core::cpu::kernels::VecOps;
    let d = row.len();
    let mut max = f32::NEG_INFINITY;
    // SAFETY: `row` holds `d` values, and `max` / `sum` are valid places for the results.
    unsafe { f32::vec_reduce_max(row.as_ptr(), &mut max, d) };
    row[..lo].fill(0.0);
    row[hi..].fill(0.0);
    for v in row[lo..hi].iter_mut() {
        *v -= max;
    }
    super::expf::exp_in_place(&mut row[lo..hi]);
    let mut sum = 0f32;
    // SAFETY: as above.
    unsafe { f32::vec_reduce_sum(row.as_ptr(), &mut sum, d) };
    for v in row[lo..hi].iter_mut() {
        *v /= sum;
    }
}

/// From this many values on, an elementwise op is split over the pool's threads (candle's
/// threshold too).
const PAR_MIN: usize = 1 << 16;
/// Values per unit of work handed to a thread.
const CHUNK: usize = 16 * 1024;

/// Runs `f(values, out)` on the contiguous f32 data of CPU tensors `xs`, writing a new tensor of
/// `shape`'s `n` values; `None` when any input is elsewhere (a GPU) or strided, so the caller
/// falls back to candle. `f` gets the output range it fills.
///
/// Why not candle's ops: from 64 K values on they run on candle's barrier pool, whose workers
/// spin beside the own kernels' pool; on 2 cores the two pools took turns stealing each other's
/// core, and a 128-token prompt spent a fifth of its time in candle's barrier. These run on the
/// own pool, in the same float operations as candle's, so outputs are bit-identical.
fn map_f32(
    xs: &[&Tensor],
    shape: &candle_core::Shape,
    f: impl Fn(&[&[f32]], Range<usize>, &mut [f32]) + Sync,
) -> Option<Result<Tensor>> {
    let guards: Vec<_> = xs.iter().map(|x| x.storage_and_layout()).collect();
    let mut views = Vec::with_capacity(xs.len());
    for (s, l) in &guards {
        let Storage::Cpu(CpuStorage::F32(v)) = &**s else {
            return None;
        };
        let (a, b) = l.contiguous_offsets()?;
        views.push(&v[a..b]);
    }
    let n = shape.elem_count();
    let mut out = vec![0f32; n];
    if n < PAR_MIN {
        f(&views, 0..n, &mut out);
    } else {
        super::pool::for_each_chunk_mut(&mut out, CHUNK, |i, part| {
            let start = i * CHUNK;
            f(&views, start..start + part.len(), part)
        });
    }
    drop(guards);
    Some(Tensor::from_vec(out, shape, &candle_core::Device::Cpu))
}

/// RMS norm over the last dimension with weight `w`, bit-identical to candle-nn's `rms_norm`
/// (which hands more than 32 rows to rayon, a third pool beside candle's and the own one).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let candle = || candle_nn::ops::rms_norm(x, w, eps);
    let d = match x.dims().last() {
        Some(&d) if d > 0 && w.dims() == [d] => d,
        _ => return candle(),
    };
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(xv)), Storage::Cpu(CpuStorage::F32(wv))) = (&*xs, &*ws)
    else {
        drop((xs, ws));
        return candle();
    };
    let (Some((xa, xb)), Some((wa, wb))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
    else {
        drop((xs, ws));
        return candle();
    };
    let (src, alpha) = (&xv[xa..xb], &wv[wa..wb]);
    let mut out = vec![0f32; src.len()];
    let row = |i: usize, dst: &mut [f32]| {
        let src = &src[i * d..(i + 1) * d];
        // candle-nn's arithmetic, in its order.
        let sum2 = src.iter().map(|&v| v * v).sum::<f32>();
        let m = (sum2 / d as f32 + eps).sqrt();
        for ((o, s), a) in dst.iter_mut().zip(src).zip(alpha) {
            *o = *s / m * *a;
        }
    };
    if out.len() < PAR_MIN {
        out.chunks_exact_mut(d)
            .enumerate()
            .for_each(|(i, r)| row(i, r));
    } else {
        let rows_per_chunk = (CHUNK / d).max(1);
        super::pool::for_each_chunk_mut(&mut out, rows_per_chunk * d, |c, part| {
            for (j, r) in part.chunks_exact_mut(d).enumerate() {
                row(c * rows_per_chunk + j, r);
            }
        });
    }
    drop((xs, ws));
    Tensor::from_vec(out, x.shape(), &candle_core::Device::Cpu)
}

/// `a + b` for tensors of one shape (residual adds).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return a + b;
    }
    map_f32(&[a, b], a.shape(), |v, r, out| {
        for ((o, x), y) in out.iter_mut().zip(&v[0][r.clone()]).zip(&v[1][r]) {
            *o = x + y;
        }
    })
    .unwrap_or_else(|| a + b)
}

/// candle's `silu` (`v / (1 + e^-v)`) of `gate`, times `up`, into `out`: the same operations
/// per value, so results match it bit for bit, with the exponentials a block at a time.
fn silu_mul_into(gate: impl Iterator<Item = f32>, up: impl Iterator<Item = f32>, out: &mut [f32]) {
    const BLOCK: usize = 256;
    let mut e = [0f32; BLOCK];
    let mut gate = gate;
    let mut up = up;
    for part in out.chunks_mut(BLOCK) {
        let mut g = [0f32; BLOCK];
        for (gi, ei) in g.iter_mut().zip(e.iter_mut()).take(part.len()) {
            *gi = gate.next().unwrap_or(0.0);
            *ei = -*gi;
        }
        super::expf::exp_in_place(&mut e[..part.len()]);
        for ((o, gi), ei) in part.iter_mut().zip(&g).zip(&e) {
            *o = gi / (1.0 + ei) * up.next().unwrap_or(0.0);
        }
    }
}

/// `silu(gate) · up` for tensors of one shape (the SwiGLU feed-forward), in one pass.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let candle = || candle_nn::ops::silu(gate)? * up;
    if gate.shape() != up.shape() {
        return candle();
    }
    map_f32(&[gate, up], gate.shape(), |v, r, out| {
        silu_mul_into(
            v[0][r.clone()].iter().copied(),
            v[1][r].iter().copied(),
            out,
        )
    })
    .unwrap_or_else(candle)
}

/// `silu(first half) · second half` of each row of `gu` (fused gate/up rows of `2n` values).
pub fn silu_mul_halves(gu: &Tensor, n: usize) -> Result<Tensor> {
    use candle_core::D;
    let candle =
        || candle_nn::ops::silu(&gu.narrow(D::Minus1, 0, n)?)? * gu.narrow(D::Minus1, n, n)?;
    let mut dims = gu.dims().to_vec();
    if dims.last() != Some(&(2 * n)) || n == 0 {
        return candle();
    }
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    map_f32(&[gu], &dims.as_slice().into(), |v, r, out| {
        let at = |i: usize| (i / n) * 2 * n + i % n;
        silu_mul_into(
            r.clone().map(|i| v[0][at(i)]),
            r.map(|i| v[0][at(i) + n]),
            out,
        )
    })
    .unwrap_or_else(candle)
}

/// Attention scores plus a causal mask of their last two dimensions, broadcast over the leading
/// ones (heads): `scores` is (…, t, kv), `mask` (t, kv).
pub fn add_mask(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let period = mask.elem_count();
    let fits =
        scores.rank() >= 2 && mask.dims() == &scores.dims()[scores.rank() - 2..] && period > 0;
    if !fits {
        return scores.broadcast_add(mask);
    }
    map_f32(&[scores, mask], scores.shape(), |v, r, out| {
        for (o, i) in out.iter_mut().zip(r) {
            *o = v[0][i] + v[1][i % period];
        }
    })
    .unwrap_or_else(|| scores.broadcast_add(mask))
}

/// Rotary position embedding of `x` (1, heads, t, d) with `cos`, `sin` (≥ t, d / 2): pairs
/// `(x[2i], x[2i+1])` (`neox` false, candle-nn's `rope_i`) or `(x[i], x[i + d/2])` (`neox`,
/// its `rope`) turned by the position's angle, in candle-nn's float operations, so results are
/// bit-identical. candle-nn runs prompt chunks on rayon's pool, a third pool beside candle's
/// and the own one (see [`map_f32`]); this runs them on the own pool. `None` where candle must
/// run: another device or dtype, or non-contiguous tables.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, neox: bool) -> Option<Result<Tensor>> {
    let (one, h, t, d) = x.dims4().ok()?;
    let (ct, half) = cos.dims2().ok()?;
    if one != 1
        || d == 0
        || d % 2 != 0
        || half * 2 != d
        || ct < t
        || sin.dims2().ok()? != (ct, half)
    {
        return None;
    }
    let (xs, xl) = x.storage_and_layout();
    let (cs, cl) = cos.storage_and_layout();
    let (ss, sl) = sin.storage_and_layout();
    let (
        Storage::Cpu(CpuStorage::F32(xv)),
        Storage::Cpu(CpuStorage::F32(cv)),
        Storage::Cpu(CpuStorage::F32(sv)),
    ) = (&*xs, &*cs, &*ss)
    else {
        return None;
    };
    let (xa, xb) = xl.contiguous_offsets()?;
    let (ca, _) = cl.contiguous_offsets()?;
    let (sa, _) = sl.contiguous_offsets()?;
    let (src, cos, sin) = (&xv[xa..xb], &cv[ca..ca + t * half], &sv[sa..sa + t * half]);
    let mut out = vec![0f32; h * t * d];
    // One head's `t × d` values, as candle-nn's CPU kernels compute them.
    let head = |src: &[f32], dst: &mut [f32]| {
        if neox {
            for i_t in 0..t {
                for i_d in 0..half {
                    let (i1, i2, c) = (i_t * d + i_d, i_t * d + i_d + half, i_t * half + i_d);
                    dst[i1] = src[i1] * cos[c] - src[i2] * sin[c];
                    dst[i2] = src[i1] * sin[c] + src[i2] * cos[c];
                }
            }
        } else {
            for i_over_2 in 0..t * half {
                let i = 2 * i_over_2;
                dst[i] = src[i] * cos[i_over_2] - src[i + 1] * sin[i_over_2];
                dst[i + 1] = src[i] * sin[i_over_2] + src[i + 1] * cos[i_over_2];
            }
        }
    };
    if out.len() < PAR_MIN {
        for (src, dst) in src.chunks_exact(t * d).zip(out.chunks_exact_mut(t * d)) {
            head(src, dst);
        }
    } else {
        super::pool::for_each_chunk_mut(&mut out, t * d, |i, dst| {
            head(&src[i * t * d..(i + 1) * t * d], dst)
        });
    }
    drop((xs, cs, ss));
    Some(Tensor::from_vec(
        out,
        (1, h, t, d),
        &candle_core::Device::Cpu,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn wave(n: usize, f: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * f).sin() * 6.0).collect()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    }

    /// Below and above the parallel threshold, with a ragged last chunk.
    const SIZES: [(usize, usize); 3] = [(3, 37), (130, 577), (1, 65_537)];

    #[test]
    fn elementwise_ops_match_candle_bit_for_bit() {
        for (rows, cols) in SIZES {
            let shape = (1, rows, cols);
            let a = Tensor::from_vec(wave(rows * cols, 0.37), shape, &Device::Cpu).unwrap();
            let b = Tensor::from_vec(wave(rows * cols, 0.11), shape, &Device::Cpu).unwrap();
            assert_eq!(bits(&add(&a, &b).unwrap()), bits(&(&a + &b).unwrap()));
            let theirs = (candle_nn::ops::silu(&a).unwrap() * &b).unwrap();
            assert_eq!(bits(&silu_mul(&a, &b).unwrap()), bits(&theirs));
        }
    }

    #[test]
    fn rms_norm_matches_candle_nn_bit_for_bit() {
        for (rows, d) in [(1, 576), (31, 64), (129, 576)] {
            let x = Tensor::from_vec(wave(rows * d, 0.41), (1, rows, d), &Device::Cpu).unwrap();
            let w = Tensor::from_vec(wave(d, 0.07), d, &Device::Cpu).unwrap();
            let theirs = candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap();
            assert_eq!(bits(&rms_norm(&x, &w, 1e-5).unwrap()), bits(&theirs));
        }
    }

    #[test]
    fn fused_halves_match_candle_bit_for_bit() {
        use candle_core::D;
        for (rows, n) in [(3, 19), (129, 600)] {
            let gu =
                Tensor::from_vec(wave(rows * 2 * n, 0.23), (1, rows, 2 * n), &Device::Cpu).unwrap();
            let theirs = (candle_nn::ops::silu(&gu.narrow(D::Minus1, 0, n).unwrap()).unwrap()
                * gu.narrow(D::Minus1, n, n).unwrap())
            .unwrap();
            let ours = silu_mul_halves(&gu, n).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert_eq!(bits(&ours), bits(&theirs));
        }
    }

    #[test]
    fn masks_broadcast_over_heads_as_candle_does() {
        for (heads, t, kv) in [(3, 4, 9), (9, 128, 130)] {
            let s = Tensor::from_vec(wave(heads * t * kv, 0.7), (1, heads, t, kv), &Device::Cpu)
                .unwrap();
            let m = Tensor::from_vec(wave(t * kv, 0.3), (t, kv), &Device::Cpu).unwrap();
            assert_eq!(
                bits(&add_mask(&s, &m).unwrap()),
                bits(&s.broadcast_add(&m).unwrap())
            );
        }
    }

    #[test]
    fn strided_inputs_fall_back_to_candle() {
        let a = Tensor::from_vec(wave(6 * 8, 0.5), (6, 8), &Device::Cpu).unwrap();
        let t = a.t().unwrap();
        let b = Tensor::from_vec(wave(48, 0.9), (8, 6), &Device::Cpu).unwrap();
        assert_eq!(bits(&add(&t, &b).unwrap()), bits(&(&t + &b).unwrap()));
    }

    #[test]
    fn softmax_matches_candle_nn_exactly() {
        for (rows, d) in [(4, 37), (9 * 128, 131)] {
            softmax_matches_at(rows, d);
        }
    }

    #[test]
    fn rope_matches_candle_nn_bit_for_bit() {
        // Below and above the parallel threshold; tables longer than the chunk.
        for (h, t, d, ct) in [
            (3, 1, 64, 1),
            (9, 128, 64, 130),
            (2, 5, 128, 5),
            (14, 40, 128, 40),
        ] {
            let x = Tensor::from_vec(wave(h * t * d, 0.31), (1, h, t, d), &Device::Cpu).unwrap();
            let cos = Tensor::from_vec(wave(ct * d / 2, 0.05), (ct, d / 2), &Device::Cpu).unwrap();
            let sin = Tensor::from_vec(wave(ct * d / 2, 0.09), (ct, d / 2), &Device::Cpu).unwrap();
            let (c, s) = (cos.narrow(0, 0, t).unwrap(), sin.narrow(0, 0, t).unwrap());
            let theirs_i = candle_nn::rotary_emb::rope_i(&x, &c, &s).unwrap();
            let theirs = candle_nn::rotary_emb::rope(&x, &c, &s).unwrap();
            assert_eq!(
                bits(&rope(&x, &cos, &sin, false).unwrap().unwrap()),
                bits(&theirs_i)
            );
            assert_eq!(
                bits(&rope(&x, &cos, &sin, true).unwrap().unwrap()),
                bits(&theirs)
            );
        }
    }

    #[test]
    fn a_row_s_visible_span_softmaxes_as_the_whole_row() {
        for (d, lo, hi) in [
            (37, 0, 37),
            (37, 0, 1),
            (131, 5, 90),
            (200, 199, 200),
            (64, 16, 48),
        ] {
            let mut whole: Vec<f32> = (0..d)
                .map(|j| {
                    if (lo..hi).contains(&j) {
                        (j as f32 * 0.77).sin() * 9.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect();
            let theirs = candle_nn::ops::softmax_last_dim(
                &Tensor::from_vec(whole.clone(), (1, d), &Device::Cpu).unwrap(),
            )
            .unwrap();
            softmax_row_visible(&mut whole, lo, hi);
            let t = Tensor::from_vec(whole, (1, d), &Device::Cpu).unwrap();
            assert_eq!(bits(&t), bits(&theirs), "d {d}, span {lo}..{hi}");
        }
    }

    fn softmax_matches_at(rows: usize, d: usize) {
        let x = Tensor::from_vec(
            (0..rows * d)
                .map(|i| (i as f32 * 0.91).cos() * 7.0)
                .collect::<Vec<_>>(),
            (1, rows, d),
            &Device::Cpu,
        )
        .unwrap();
        let ours: Vec<f32> = softmax_last_dim(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let theirs: Vec<f32> = candle_nn::ops::softmax_last_dim(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ours, theirs);
    }
}
