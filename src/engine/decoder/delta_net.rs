//! Gated DeltaNet layers: Qwen3.5's linear attention, three of them for every full-attention
//! layer (llama.cpp's `qwen35.cpp` and `delta-net-base.cpp`; ggml's `ssm_conv` and
//! `gated_delta_net` on the CPU).
//!
//! A layer projects its normed input to the mixed q/k/v channels, the output gate `z`, and per
//! value head a write strength `β` and a decay. The q/k/v channels run through a short causal
//! convolution (its window carried in the sequence's state) and SiLU; queries and keys are
//! L2-normed per head. Each value head keeps a key × value matrix `S` and, per token,
//! decays it by `exp(g)`, writes the delta rule's correction `k ⊗ β(v − Sᵀk)` and reads
//! `o = Sᵀq / √d`. The output is RMS-normed per head, gated by `silu(z)` and projected back.
//!
//! Value head `h` reads key head `h mod k_heads`: llama.cpp tiles the key heads (its converter
//! orders the value heads to match), so a file is read as llama.cpp reads it.
//!
//! A prompt chunk is one call: the projections run over all its rows at once, the convolution
//! per channel over the chunk, and the recurrence with heads split across threads, each head
//! walking the chunk's tokens in order, so the state after the chunk is the state token by
//! token. On the CPU the state lives in host memory; on a GPU it stays on the device and the
//! same steps run as tensor ops (`recurrent_device`).

use candle_core::{Device, Tensor, D};

use super::super::gguf::Meta;
use super::super::ops;
use super::super::recurrent::{Buf, LayerState, RecurrentSlots, StateShape};
use super::super::EngineError;
use super::recurrent_device as dev;
use super::recurrent_host::{host, host_vec, silu, softplus, SsmSeq};
use super::{linear, linear_many, Linear, Loader};

/// Largest state one layer may ask for, in values (far above any real model's).
const MAX_STATE_PER_LAYER: usize = 1 << 26;

/// Shape of the Gated DeltaNet layers, from the `{arch}.ssm.*` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaConfig {
    /// Convolution width.
    pub d_conv: usize,
    /// Width of a key head and of a value head (`ssm.state_size`; llama.cpp requires both equal).
    pub head_dim: usize,
    /// Query/key heads (`ssm.group_count`) and value heads (`ssm.time_step_rank`).
    pub k_heads: usize,
    pub v_heads: usize,
}

impl DeltaConfig {
    /// The DeltaNet shape of a `qwen35` or `qwen35moe` file; `None` for other architectures.
    pub fn from_meta(meta: &Meta, arch: &str) -> Result<Option<Self>, EngineError> {
        if !matches!(arch, "qwen35" | "qwen35moe") {
            return Ok(None);
        }
        let k = |s: &str| format!("{arch}.ssm.{s}");
        let d_conv = meta.usize(&k("conv_kernel"))?;
        let inner = meta.usize(&k("inner_size"))?;
        let head_dim = meta.usize(&k("state_size"))?;
        let v_heads = meta.usize(&k("time_step_rank"))?;
        let k_heads = meta.usize(&k("group_count"))?;
        let bad = |reason: String| EngineError::Corrupt {
            path: meta.path.to_path_buf(),
            reason,
        };
        if d_conv < 1 || head_dim == 0 || v_heads == 0 || k_heads == 0 {
            return Err(bad(format!(
                "invalid linear-attention shape: conv {d_conv}, head width {head_dim}, \
                 value heads {v_heads}, key heads {k_heads}"
            )));
        }
        if v_heads % k_heads != 0 {
            return Err(bad(format!(
                "linear-attention value heads ({v_heads}) are not a multiple of its key heads \
                 ({k_heads})"
            )));
        }
        if v_heads.checked_mul(head_dim) != Some(inner) {
            return Err(bad(format!(
                "linear-attention inner size {inner} is not {v_heads} value heads × {head_dim} \
                 (key and value heads must be as wide)"
            )));
        }
        // The state is allocated per sequence from these numbers alone.
        let too_big = inner
            .checked_mul(head_dim)
            .is_none_or(|n| n > MAX_STATE_PER_LAYER)
            || k_heads > v_heads
            || d_conv > 64;
        if too_big {
            return Err(bad(format!(
                "linear-attention state of {v_heads} heads × {head_dim}² (conv {d_conv}) per \
                 layer is beyond any real model"
            )));
        }
        Ok(Some(Self {
            d_conv,
            head_dim,
            k_heads,
            v_heads,
        }))
    }

    pub fn key_dim(&self) -> usize {
        self.k_heads * self.head_dim
    }

    pub fn value_dim(&self) -> usize {
        self.v_heads * self.head_dim
    }

    /// Channels the convolution runs over: queries, keys and values.
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }

    /// One layer's state: the convolution window and a key × value matrix per value head.
    pub fn state_shape(&self) -> StateShape {
        StateShape {
            conv: (self.d_conv - 1) * self.conv_dim(),
            ssm: self.v_heads * self.head_dim * self.head_dim,
        }
    }
}

/// One DeltaNet layer's weights; the small ones as host vectors for the recurrence.
pub struct DeltaLayer {
    norm: Tensor,
    /// `attn_qkv`: the convolution's input channels; `attn_gate`: `z`.
    qkv: Linear,
    z: Linear,
    /// `ssm_beta`, `ssm_alpha`: one value per value head.
    beta: Linear,
    alpha: Linear,
    /// (channel, tap), `d_conv` taps per channel.
    conv_w: Vec<f32>,
    dt_bias: Vec<f32>,
    /// `-exp(A_log)` per value head, as the converter writes it.
    a: Vec<f32>,
    /// The gated RMS norm's weight over one head.
    out_norm: Vec<f32>,
    out: Linear,
    /// The small weights on the decoder's device, when the state lives there.
    on_device: Option<DeviceWeights>,
}

/// A DeltaNet layer's small weights as the device path reads them.
struct DeviceWeights {
    /// (tap, channel).
    conv_taps: Tensor,
    dt_bias: Tensor,
    a: Tensor,
    out_norm: Tensor,
}

impl DeltaLayer {
    /// Puts the small weights on `device` for the device path.
    pub fn use_device(&mut self, cfg: &DeltaConfig, device: &Device) -> candle_core::Result<()> {
        self.on_device = Some(DeviceWeights {
            conv_taps: dev::conv_taps(&self.conv_w, cfg.d_conv, device)?,
            dt_bias: Tensor::from_slice(&self.dt_bias, self.dt_bias.len(), device)?,
            a: Tensor::from_slice(&self.a, self.a.len(), device)?,
            out_norm: Tensor::from_slice(&self.out_norm, self.out_norm.len(), device)?,
        });
        Ok(())
    }
}

/// Loads layer `i`'s weights.
pub fn load_layer(l: &mut Loader, cfg: &DeltaConfig, i: usize) -> Result<DeltaLayer, EngineError> {
    let p = |s: &str| format!("blk.{i}.{s}");
    if !l.has(&p("attn_qkv.weight")) {
        return Err(l.corrupt(&format!(
            "blk.{i} is a linear-attention layer without a fused attn_qkv (files with split \
             q/k/v projections are not supported)"
        )));
    }
    Ok(DeltaLayer {
        norm: l.dense(&p("attn_norm.weight"))?,
        qkv: l.matmul(&p("attn_qkv.weight"))?,
        z: l.matmul(&p("attn_gate.weight"))?,
        beta: l.matmul(&p("ssm_beta.weight"))?,
        alpha: l.matmul(&p("ssm_alpha.weight"))?,
        conv_w: host_vec(l, &p("ssm_conv1d.weight"), cfg.conv_dim() * cfg.d_conv)?,
        dt_bias: host_vec(l, &p("ssm_dt.bias"), cfg.v_heads)?,
        a: host_vec(l, &p("ssm_a"), cfg.v_heads)?,
        out_norm: host_vec(l, &p("ssm_norm.weight"), cfg.head_dim)?,
        out: l.matmul(&p("ssm_out.weight"))?,
        on_device: None,
    })
}

/// `1 / (1 + e^-x)`.
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Scales `v` to unit L2 norm: `v / sqrt(Σv² + eps)` (llama.cpp's `build_gdn_l2_norm`, an RMS
/// norm with eps/n, scaled by 1/sqrt(n)), the sum in f64 as ggml's.
fn l2_norm(v: &mut [f32], eps: f32) {
    let n = v.len() as f64;
    let ss: f64 = v.iter().map(|&a| (a as f64) * (a as f64)).sum();
    let scale = 1.0 / ((ss / n) as f32 + eps / n as f32).sqrt();
    let inv = 1.0 / (n as f32).sqrt();
    v.iter_mut().for_each(|a| *a = *a * scale * inv);
}

/// Layer `li`'s mixer over every sequence of the batch `x` (1, rows, hidden):
/// `mixer(rms_norm(x))`, without the residual add. Each sequence's state of this layer moves on
/// by its rows; a sequence taking a checkpoint gets this layer's state before its last row
/// pushed to its `snaps`.
#[allow(clippy::too_many_arguments)]
pub fn mix(
    cfg: &DeltaConfig,
    layer: &DeltaLayer,
    li: usize,
    x: &Tensor,
    seqs: &[SsmSeq],
    state: &mut RecurrentSlots,
    snaps: &mut [Vec<LayerState>],
    eps: f32,
    dense_ok: bool,
) -> candle_core::Result<Tensor> {
    let h = ops::rms_norm(x, &layer.norm, eps)?;
    let [qkv, z, beta, alpha] = linear_many(
        [&layer.qkv, &layer.z, &layer.beta, &layer.alpha],
        &h,
        dense_ok,
    )?;
    let (cd, vd, nv) = (cfg.conv_dim(), cfg.value_dim(), cfg.v_heads);
    for (name, t, want) in [
        ("attn_qkv", &qkv, cd),
        ("attn_gate", &z, vd),
        ("ssm_beta", &beta, nv),
        ("ssm_alpha", &alpha, nv),
    ] {
        let got = t.dim(D::Minus1)?;
        if got != want {
            candle_core::bail!(
                "layer {li}: {name} gives {got} values per token, the linear-attention shape \
                 needs {want}"
            );
        }
    }
    let rows = qkv.elem_count() / cd;
    if let Some(w) = &layer.on_device {
        let y = mix_on_device(
            cfg,
            w,
            li,
            [&qkv, &z, &beta, &alpha],
            seqs,
            state,
            snaps,
            eps,
        )?;
        return finish(layer, li, x, &y, dense_ok);
    }
    let qkv = host(&qkv)?;
    let z = host(&z)?;
    // β = sigmoid(b); the decay g = softplus(α + dt_bias) · A, A negative.
    let beta: Vec<f32> = host(&beta)?.into_iter().map(sigmoid).collect();
    let g: Vec<f32> = host(&alpha)?
        .into_iter()
        .enumerate()
        .map(|(i, a)| softplus(a + layer.dt_bias[i % nv]) * layer.a[i % nv])
        .collect();
    let mut conv = vec![0f32; rows * cd];
    for (s, snap) in seqs.iter().zip(snaps.iter_mut()) {
        let window = state.layers_mut(s.slot)?[li].conv.host_mut()?;
        let mut snap_conv = s.checkpoint.then(|| vec![0f32; window.len()]);
        let rs = s.offset..s.offset + s.t;
        causal_conv(
            &layer.conv_w,
            cfg.d_conv,
            &qkv[rs.start * cd..rs.end * cd],
            window,
            &mut conv[rs.start * cd..rs.end * cd],
            snap_conv.as_deref_mut(),
        );
        if let Some(c) = snap_conv {
            snap.push(LayerState {
                conv: Buf::Host(c),
                ssm: Buf::Host(Vec::new()),
            });
        }
    }
    let kd = cfg.key_dim();
    for row in conv.chunks_exact_mut(cd) {
        for head in row[..2 * kd].chunks_exact_mut(cfg.head_dim) {
            l2_norm(head, eps);
        }
    }
    let mut y = vec![0f32; rows * vd];
    for (s, snap) in seqs.iter().zip(snaps.iter_mut()) {
        let st = state.layers_mut(s.slot)?[li].ssm.host_mut()?;
        let mut snap_ssm = s.checkpoint.then(|| vec![0f32; st.len()]);
        let rs = s.offset..s.offset + s.t;
        recur(
            cfg,
            Steps {
                qkv: &conv[rs.start * cd..rs.end * cd],
                g: &g[rs.start * nv..rs.end * nv],
                beta: &beta[rs.start * nv..rs.end * nv],
            },
            st,
            &mut y[rs.start * vd..rs.end * vd],
            snap_ssm.as_deref_mut(),
        );
        if let (Some(c), Some(last)) = (snap_ssm, snap.last_mut()) {
            last.ssm = Buf::Host(c);
        }
    }
    // The gated RMS norm per head: rms_norm(o) · w · silu(z).
    for (yr, zr) in y.chunks_exact_mut(vd).zip(z.chunks_exact(vd)) {
        for (o, zh) in yr
            .chunks_exact_mut(cfg.head_dim)
            .zip(zr.chunks_exact(cfg.head_dim))
        {
            let ss: f64 = o.iter().map(|&a| (a as f64) * (a as f64)).sum();
            let scale = 1.0 / ((ss / cfg.head_dim as f64) as f32 + eps).sqrt();
            for ((v, &w), &g) in o.iter_mut().zip(&layer.out_norm).zip(zh) {
                *v = (*v * scale) * w * silu(g);
            }
        }
    }
    let y = Tensor::from_vec(y, (1, rows, vd), h.device())?;
    finish(layer, li, x, &y, dense_ok)
}

/// The output projection of the gated norm's result `y`, on `x`'s device.
fn finish(
    layer: &DeltaLayer,
    li: usize,
    x: &Tensor,
    y: &Tensor,
    dense_ok: bool,
) -> candle_core::Result<Tensor> {
    let out = linear(&layer.out, y, dense_ok)?;
    if out.dims() != x.dims() {
        candle_core::bail!(
            "layer {li}: ssm_out gives {:?} for {:?}",
            out.dims(),
            x.dims()
        );
    }
    out.to_device(x.device())
}

/// [`mix`] on the device path from the projections (1, rows, width each) to the gated norm's
/// output (1, rows, value width): the same steps as tensor ops on their device, the state in
/// the slots as tensors there.
#[allow(clippy::too_many_arguments)]
fn mix_on_device(
    cfg: &DeltaConfig,
    w: &DeviceWeights,
    li: usize,
    [qkv, z, beta, alpha]: [&Tensor; 4],
    seqs: &[SsmSeq],
    state: &mut RecurrentSlots,
    snaps: &mut [Vec<LayerState>],
    eps: f32,
) -> candle_core::Result<Tensor> {
    let (d, nk, nv) = (cfg.head_dim, cfg.k_heads, cfg.v_heads);
    let (kd, vd) = (cfg.key_dim(), cfg.value_dim());
    let rows = qkv.dim(1)?;
    let beta = candle_nn::ops::sigmoid(beta)?;
    let decay = dev::softplus(&alpha.broadcast_add(&w.dt_bias)?)?
        .broadcast_mul(&w.a)?
        .exp()?;
    let conv = dev::conv(state, li, seqs, snaps, qkv, &w.conv_taps, None)?;
    let l2 = |at: usize| -> candle_core::Result<Tensor> {
        let heads = conv.narrow(2, at, kd)?.reshape((1, rows, nk, d))?;
        l2_norm_heads(&heads, eps)?.reshape((1, rows, kd))
    };
    let (q, k) = (l2(0)?, l2(kd)?);
    let v = conv.narrow(2, 2 * kd, vd)?;
    // The state as (sequence, value head ÷ key heads, key head, value, key): value head `h`
    // reads key head `h mod k_heads`.
    let rep = nv / nk;
    let scale = 1.0 / (d as f64).sqrt();
    let step = |s: &Tensor, row: &[Tensor]| -> candle_core::Result<(Tensor, Tensor)> {
        let n = s.dim(0)?;
        let q = row[0].reshape((n, 1, nk, 1, d))?;
        let k = row[1].reshape((n, 1, nk, 1, d))?;
        let v = row[2].reshape((n, rep, nk, d))?;
        let decay = row[3].reshape((n, rep, nk, 1, 1))?;
        let beta = row[4].reshape((n, rep, nk, 1))?;
        let s = s.reshape((n, rep, nk, d, d))?.broadcast_mul(&decay)?;
        let sk = s.broadcast_mul(&k)?.sum(4)?;
        let delta = (v - sk)?.broadcast_mul(&beta)?;
        let s = (s + delta.unsqueeze(4)?.broadcast_mul(&k)?)?;
        let o = (s.broadcast_mul(&q)?.sum(4)? * scale)?;
        Ok((s.reshape((n, nv * d * d))?, o.reshape((n, vd))?))
    };
    let y = dev::scan(state, li, seqs, snaps, &[&q, &k, &v, &decay, &beta], &step)?;
    // The gated RMS norm per head: rms_norm(o) · w · silu(z).
    let y = dev::rms_pieces(&y, d, eps)?
        .reshape((1, rows, nv, d))?
        .broadcast_mul(&w.out_norm)?;
    y.reshape((1, rows, vd))? * z.silu()?
}

/// [`l2_norm`] over the last dimension of `x`.
fn l2_norm_heads(x: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    let n = x.dim(D::Minus1)? as f64;
    let scale = ((x.sqr()?.sum_keepdim(D::Minus1)? / n)? + eps as f64 / n)?
        .sqrt()?
        .recip()?;
    x.broadcast_mul(&scale)? * (1.0 / n.sqrt())
}

/// The causal convolution over one sequence's rows of `width` channels: each channel's window
/// (its last `k - 1` inputs, oldest first) followed by its new inputs, dotted with the
/// channel's taps in order (ggml_ssm_conv), through SiLU. The window is updated in place;
/// `snap` gets the window as it stood before the last row.
fn causal_conv(
    taps: &[f32],
    k: usize,
    input: &[f32],
    window: &mut [f32],
    out: &mut [f32],
    mut snap: Option<&mut [f32]>,
) {
    let keep = k - 1;
    let width = taps.len() / k;
    let t = input.len() / width;
    let mut buf = vec![0f32; keep + t];
    for c in 0..width {
        buf[..keep].copy_from_slice(&window[c * keep..(c + 1) * keep]);
        for r in 0..t {
            buf[keep + r] = input[r * width + c];
        }
        let w = &taps[c * k..(c + 1) * k];
        for r in 0..t {
            let mut sum = 0f32;
            for (a, b) in buf[r..r + k].iter().zip(w) {
                sum += a * b;
            }
            out[r * width + c] = silu(sum);
        }
        if let Some(s) = snap.as_deref_mut() {
            s[c * keep..(c + 1) * keep].copy_from_slice(&buf[t - 1..t - 1 + keep]);
        }
        window[c * keep..(c + 1) * keep].copy_from_slice(&buf[t..t + keep]);
    }
}

/// What the recurrence reads for one sequence's rows.
struct Steps<'a> {
    /// The convolution's output rows: L2-normed queries and keys, then values.
    qkv: &'a [f32],
    /// Decay (log) and write strength, one per value head per row.
    g: &'a [f32],
    beta: &'a [f32],
}

/// Lanes of the partial sums: the row updates vectorise, and the dot products are summed in
/// this many parts.
const LANES: usize = 16;

/// `s *= decay`, returning `Σ s·k` after the decay.
#[inline(always)]
fn decay_dot(s: &mut [f32], decay: f32, k: &[f32]) -> f32 {
    let whole = s.len() / LANES * LANES;
    let mut acc = [0f32; LANES];
    for (sc, kc) in s[..whole]
        .chunks_exact_mut(LANES)
        .zip(k.chunks_exact(LANES))
    {
        for j in 0..LANES {
            sc[j] *= decay;
            acc[j] += sc[j] * kc[j];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for n in whole..s.len() {
        s[n] *= decay;
        sum += s[n] * k[n];
    }
    sum
}

/// `s += k · d`, returning `Σ s·q` after the update.
#[inline(always)]
fn write_dot(s: &mut [f32], k: &[f32], d: f32, q: &[f32]) -> f32 {
    let whole = s.len() / LANES * LANES;
    let mut acc = [0f32; LANES];
    for ((sc, kc), qc) in s[..whole]
        .chunks_exact_mut(LANES)
        .zip(k.chunks_exact(LANES))
        .zip(q.chunks_exact(LANES))
    {
        for j in 0..LANES {
            sc[j] += kc[j] * d;
            acc[j] += sc[j] * qc[j];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for n in whole..s.len() {
        s[n] += k[n] * d;
        sum += s[n] * q[n];
    }
    sum
}

/// The gated delta rule over one sequence's rows (ggml_gated_delta_net). `state` holds, per
/// value head, `S` stored by value index: row `j` is column `j` of the key × value matrix, so
/// each output value reads one contiguous row. Per token and row: decay, `δ = β(v_j − row·k)`,
/// `row += k·δ`, `o_j = row·q / √d` (one pass for the first two, one for the rest). Heads are
/// independent and split across threads. `snap` gets the state before the last row.
fn recur(
    cfg: &DeltaConfig,
    inp: Steps,
    state: &mut [f32],
    y: &mut [f32],
    snap: Option<&mut [f32]>,
) {
    let (nk, nv, d) = (cfg.k_heads, cfg.v_heads, cfg.head_dim);
    let (kd, cd, vd) = (cfg.key_dim(), cfg.conv_dim(), cfg.value_dim());
    let t = inp.g.len() / nv;
    let per_head = d * d;
    let scale = 1.0 / (d as f32).sqrt();
    let state_ptr = state.as_mut_ptr() as usize;
    let y_ptr = y.as_mut_ptr() as usize;
    let snap_ptr = snap.map(|s| s.as_mut_ptr() as usize);
    let work = |heads: std::ops::Range<usize>| {
        for h in heads {
            // SAFETY: each head owns its slice of the state, of the snapshot and its columns
            // of y; the ranges given to threads are disjoint and the buffers outlive the call.
            let st = unsafe {
                std::slice::from_raw_parts_mut((state_ptr as *mut f32).add(h * per_head), per_head)
            };
            let kh = h % nk;
            for r in 0..t {
                if r + 1 == t {
                    if let Some(p) = snap_ptr {
                        let sn = unsafe {
                            std::slice::from_raw_parts_mut(
                                (p as *mut f32).add(h * per_head),
                                per_head,
                            )
                        };
                        sn.copy_from_slice(st);
                    }
                }
                let row = &inp.qkv[r * cd..(r + 1) * cd];
                let q = &row[kh * d..(kh + 1) * d];
                let k = &row[kd + kh * d..kd + (kh + 1) * d];
                let v = &row[2 * kd + h * d..2 * kd + (h + 1) * d];
                let decay = inp.g[r * nv + h].exp();
                let beta = inp.beta[r * nv + h];
                for (j, s) in st.chunks_exact_mut(d).enumerate() {
                    let sk = decay_dot(s, decay, k);
                    let delta = (v[j] - sk) * beta;
                    let o = write_dot(s, k, delta, q);
                    unsafe { *(y_ptr as *mut f32).add(r * vd + h * d + j) = o * scale };
                }
            }
        }
    };
    if nv * t * per_head < 1 << 16 {
        work(0..nv);
    } else {
        super::super::pool::run_chunked(nv, work);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused per-row recurrence equals the delta rule written out on whole matrices
    /// (decay all of S, then δ, then the outer product, then the read), with key heads tiled
    /// over value heads.
    #[test]
    fn the_fused_recurrence_is_the_delta_rule() {
        let cfg = DeltaConfig {
            d_conv: 4,
            head_dim: 4,
            k_heads: 1,
            v_heads: 2,
        };
        let (d, cd) = (4, cfg.conv_dim());
        let t = 3;
        let det = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    (((i as u32)
                        .wrapping_mul(2_654_435_761)
                        .wrapping_add(seed * 97)
                        >> 8)
                        % 2000) as f32
                        / 1000.0
                        - 1.0
                })
                .collect()
        };
        let qkv = det(t * cd, 1);
        let g: Vec<f32> = det(t * 2, 2).iter().map(|v| -v.abs()).collect();
        let beta: Vec<f32> = det(t * 2, 3).iter().map(|v| sigmoid(*v)).collect();
        let mut state = det(2 * d * d, 4);
        let mut want_state = state.clone();
        let mut y = vec![0f32; t * 2 * d];
        recur(
            &cfg,
            Steps {
                qkv: &qkv,
                g: &g,
                beta: &beta,
            },
            &mut state,
            &mut y,
            None,
        );
        for r in 0..t {
            for h in 0..2 {
                // m[i][j]: key index i, value index j; stored at j * d + i.
                let m = &mut want_state[h * d * d..(h + 1) * d * d];
                let row = &qkv[r * cd..(r + 1) * cd];
                let (q, k, v) = (&row[0..d], &row[d..2 * d], &row[2 * d + h * d..][..d]);
                m.iter_mut().for_each(|s| *s *= g[r * 2 + h].exp());
                let delta: Vec<f32> = (0..d)
                    .map(|j| {
                        let sk: f32 = (0..d).map(|i| m[j * d + i] * k[i]).sum();
                        (v[j] - sk) * beta[r * 2 + h]
                    })
                    .collect();
                for j in 0..d {
                    for i in 0..d {
                        m[j * d + i] += k[i] * delta[j];
                    }
                }
                for j in 0..d {
                    let o: f32 = (0..d).map(|i| m[j * d + i] * q[i]).sum();
                    let got = y[r * 2 * d + h * d + j];
                    assert!((o / 2.0 - got).abs() < 1e-5, "row {r} head {h} value {j}");
                }
            }
        }
        for (a, b) in state.iter().zip(&want_state) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn hostile_linear_attention_shapes_are_refused_with_a_reason() {
        use candle_core::quantized::gguf_file::Value;
        let md = |inner: u32, state: u32, v: u32, k: u32| {
            [
                ("qwen35.ssm.conv_kernel", 4),
                ("qwen35.ssm.inner_size", inner),
                ("qwen35.ssm.state_size", state),
                ("qwen35.ssm.time_step_rank", v),
                ("qwen35.ssm.group_count", k),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::U32(v)))
            .collect::<std::collections::HashMap<_, _>>()
        };
        let path = std::path::Path::new("q.gguf");
        let cfg = |m| DeltaConfig::from_meta(&Meta { path, md: &m }, "qwen35");
        let ok = cfg(md(2048, 128, 16, 16)).unwrap().unwrap();
        assert_eq!(ok.state_shape().ssm, 16 * 128 * 128);
        assert_eq!(ok.state_shape().conv, 3 * (2 * 2048 + 2048));
        let err = |m| cfg(m).unwrap_err().to_string();
        assert!(err(md(2048, 128, 16, 3)).contains("not a multiple"));
        assert!(err(md(2000, 128, 16, 16)).contains("must be as wide"));
        assert!(err(md(1 << 22, 1 << 12, 1 << 10, 1)).contains("beyond any real model"));
        assert!(err(md(2048, 128, 0, 16)).contains("invalid"));
        assert!(cfg(md(2048, 128, 16, 16)).is_ok());
        let other = DeltaConfig::from_meta(
            &Meta {
                path,
                md: &md(1, 1, 1, 1),
            },
            "llama",
        );
        assert!(other.unwrap().is_none());
    }

    #[test]
    fn l2_norm_gives_unit_length() {
        let mut v = vec![3.0, 4.0];
        l2_norm(&mut v, 0.0);
        assert!(
            (v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6,
            "{v:?}"
        );
    }
}
