//! The device path of both recurrent kinds (Mamba's in `ssm`, Gated DeltaNet's in
//! `delta_net`): the state stays on the decoder's device as tensors and every step is a candle
//! tensor op, so a GPU decoder never copies a layer's activations to the host and back.
//!
//! What the kinds share lives here: which path a device takes, the causal convolution with its
//! window, the token-by-token scan driver, and the norms. A kind gives the scan one step
//! (state and one token's inputs in, state and output out); the driver walks a chunk's tokens
//! in order, keeps each sequence's state in its slot and takes the turn checkpoints.
//!
//! Sequences of a batch with as many rows (every decoding sequence: one) are stacked and
//! stepped together, so a batched decode costs one set of kernel launches per token, not one
//! per sequence. Only ops that candle runs on CUDA and on Metal in f32 are used: elementwise
//! and broadcast arithmetic, exp, log, abs, relu, sqrt, recip, silu, sigmoid, sums over the
//! last dimension, narrow, reshape, cat and copies.

use candle_core::{Device, Tensor, D};

use super::super::recurrent::{Buf, LayerState, RecurrentSlots};
use super::recurrent_host::SsmSeq;

/// Whether recurrent layers on `device` keep their state there and scan with tensor ops: on
/// every device but the CPU, whose host scans are faster (and stay the CPU's path).
/// `INFLUENCE_RECURRENT=tensor` asks for the tensor path on the CPU too, to check it there.
pub fn wanted(device: &Device) -> bool {
    !device.is_cpu() || std::env::var("INFLUENCE_RECURRENT").is_ok_and(|v| v == "tensor")
}

/// Per-channel taps stored (channel, tap) as the (tap, channel) tensor the convolution reads.
pub fn conv_taps(w: &[f32], k: usize, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(w, (w.len() / k, k), device)?
        .t()?
        .contiguous()
}

/// `log(1 + e^x)` as `max(x, 0) + log(1 + e^-|x|)`: no overflow, and within rounding of
/// ggml's (linear above 20).
pub fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    x.relu()? + tail
}

/// RMS-normalises each `width`-long piece of the last dimension (no weight).
pub fn rms_pieces(x: &Tensor, width: usize, eps: f32) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let last = dims[dims.len() - 1];
    let mut pieces = dims[..dims.len() - 1].to_vec();
    pieces.extend([last / width, width]);
    let p = x.reshape(pieces)?;
    let scale = ((p.sqr()?.sum_keepdim(D::Minus1)? / width as f64)? + eps as f64)?
        .sqrt()?
        .recip()?;
    p.broadcast_mul(&scale)?.reshape(dims)
}

/// Sequences of the batch stepped together: as many rows each.
struct Lane {
    /// Indices into the batch's sequences.
    seqs: Vec<usize>,
    t: usize,
}

fn lanes(seqs: &[SsmSeq]) -> Vec<Lane> {
    let mut out: Vec<Lane> = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        match out.iter_mut().find(|l| l.t == s.t) {
            Some(l) => l.seqs.push(i),
            None => out.push(Lane {
                seqs: vec![i],
                t: s.t,
            }),
        }
    }
    out
}

/// The lane's rows of `x` (1, rows, w) as (n, t, w).
fn gather(x: &Tensor, seqs: &[SsmSeq], lane: &Lane) -> candle_core::Result<Tensor> {
    let parts = lane
        .seqs
        .iter()
        .map(|&i| x.narrow(1, seqs[i].offset, seqs[i].t))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

/// Piece `i` of a lane's (n, …) tensor as a flat buffer in its row-major order. `own` says that `x` is one lane's
/// tensor holding its storage alone (a step's result); anything else is copied out, as a view
/// would keep the whole storage (every lane's, or a convolution's whole buffer) alive.
fn piece(x: &Tensor, i: usize, own: bool) -> candle_core::Result<Buf> {
    let p = x.narrow(0, i, 1)?.flatten_all()?;
    Ok(Buf::Device(if own && x.dim(0)? == 1 {
        p
    } else {
        p.force_contiguous()?
    }))
}

/// The lane's states of layer `li` (the window or the recurrent state, as `pick` says) stacked
/// as (n, values).
fn stacked(
    state: &mut RecurrentSlots,
    li: usize,
    seqs: &[SsmSeq],
    lane: &Lane,
    pick: fn(&LayerState) -> &Buf,
) -> candle_core::Result<Tensor> {
    let mut parts = Vec::with_capacity(lane.seqs.len());
    for &i in &lane.seqs {
        let t = pick(&state.layers_mut(seqs[i].slot)?[li]).tensor()?.clone();
        parts.push(t.unsqueeze(0)?);
    }
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    Tensor::cat(&parts, 0)
}

/// The per-sequence results of every lane, (n, t, w) each, back in batch row order.
fn in_row_order(seqs: &[SsmSeq], lanes: &[Lane], outs: &[Tensor]) -> candle_core::Result<Tensor> {
    let mut rows: Vec<Option<Tensor>> = vec![None; seqs.len()];
    for (lane, out) in lanes.iter().zip(outs) {
        for (j, &i) in lane.seqs.iter().enumerate() {
            rows[i] = Some(out.narrow(0, j, 1)?);
        }
    }
    let rows: Vec<Tensor> = rows.into_iter().flatten().collect();
    Tensor::cat(&rows, 1)
}

/// The causal convolution of layer `li` over the batch's rows `x` (1, rows, channels): each
/// channel's window (its last `k - 1` inputs, oldest first) followed by its new inputs, dotted
/// with its taps in order (ggml_ssm_conv), plus `bias`, through SiLU. Each sequence's window
/// moves on; a sequence taking a checkpoint gets a [`LayerState`] pushed to its `snaps` with
/// the window as it stood before its last row (the recurrent state is filled in by [`scan`]).
/// `taps` is (k, channels).
pub fn conv(
    state: &mut RecurrentSlots,
    li: usize,
    seqs: &[SsmSeq],
    snaps: &mut [Vec<LayerState>],
    x: &Tensor,
    taps: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (k, channels) = taps.dims2()?;
    let keep = k - 1;
    let lanes = lanes(seqs);
    let mut outs = Vec::with_capacity(lanes.len());
    for lane in &lanes {
        let (n, t) = (lane.seqs.len(), lane.t);
        // Windows are stored per channel, oldest first, as the host's: read as (n, tap, channel).
        let window = stacked(state, li, seqs, lane, |l| &l.conv)?
            .reshape((n, channels, keep))?
            .transpose(1, 2)?;
        let buf = Tensor::cat(&[window, gather(x, seqs, lane)?], 1)?;
        let mut sum = buf.narrow(1, 0, t)?.broadcast_mul(&taps.narrow(0, 0, 1)?)?;
        for j in 1..k {
            sum = (sum + buf.narrow(1, j, t)?.broadcast_mul(&taps.narrow(0, j, 1)?)?)?;
        }
        if let Some(b) = bias {
            sum = sum.broadcast_add(b)?;
        }
        outs.push(sum.silu()?);
        let after = buf.narrow(1, t, keep)?.transpose(1, 2)?;
        let before_last = buf.narrow(1, t - 1, keep)?.transpose(1, 2)?;
        for (j, &i) in lane.seqs.iter().enumerate() {
            state.layers_mut(seqs[i].slot)?[li].conv = piece(&after, j, false)?;
            if seqs[i].checkpoint {
                snaps[i].push(LayerState {
                    conv: piece(&before_last, j, false)?,
                    ssm: Buf::Host(Vec::new()),
                });
            }
        }
    }
    in_row_order(seqs, &lanes, &outs)
}

/// One token's step of a recurrent state: the stacked states (n, values) and the token's
/// inputs (n, width each) in, the new states (n, values: a fresh tensor, not a view into a
/// larger one) and the token's outputs (n, width) out.
pub type Step<'a> = dyn Fn(&Tensor, &[Tensor]) -> candle_core::Result<(Tensor, Tensor)> + 'a;

/// The recurrence of layer `li` over the batch: per sequence, `step` over its rows in order,
/// reading row `r` of every input (1, rows, width each), starting from and leaving the
/// sequence's state in its slot. A sequence taking a checkpoint gets its state before its last
/// row in the entry [`conv`] pushed. Returns the outputs (1, rows, width).
pub fn scan(
    state: &mut RecurrentSlots,
    li: usize,
    seqs: &[SsmSeq],
    snaps: &mut [Vec<LayerState>],
    inputs: &[&Tensor],
    step: &Step,
) -> candle_core::Result<Tensor> {
    let lanes = lanes(seqs);
    let mut outs = Vec::with_capacity(lanes.len());
    for lane in &lanes {
        let (n, t) = (lane.seqs.len(), lane.t);
        let inputs = inputs
            .iter()
            .map(|x| gather(x, seqs, lane))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut s = stacked(state, li, seqs, lane, |l| &l.ssm)?;
        let mut before_last = None;
        let mut ys = Vec::with_capacity(t);
        for r in 0..t {
            let row = inputs
                .iter()
                .map(|x| {
                    let w = x.dim(2)?;
                    x.narrow(1, r, 1)?.reshape((n, w))
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            if r + 1 == t {
                before_last = Some(s.clone());
            }
            let (next, y) = step(&s, &row)?;
            s = next;
            ys.push(y);
        }
        outs.push(Tensor::stack(&ys, 1)?);
        for (j, &i) in lane.seqs.iter().enumerate() {
            state.layers_mut(seqs[i].slot)?[li].ssm = piece(&s, j, true)?;
            if let (true, Some(b), Some(last)) =
                (seqs[i].checkpoint, &before_last, snaps[i].last_mut())
            {
                last.ssm = piece(b, j, true)?;
            }
        }
    }
    in_row_order(seqs, &lanes, &outs)
}

#[cfg(test)]
mod tests {
    use super::super::test_synth;
    use super::super::{Decoder, SeqStep};
    use super::*;

    /// Largest difference allowed between a logit of the host path and of the device path
    /// (logits here are up to about 16). The two sum in different orders (the host's dot
    /// products in 16 lanes, its norms in f64), so they agree to float rounding, about 1e-6 at
    /// most steps. The matrix kernels quantize activations to 8 bits, though, and a rounding
    /// difference of 1e-7 can move one activation by a quantization step: on these files one
    /// step of qwen35 differs by 4.4e-3 and one of qwen35moe by 2.1e-2, the steps after them
    /// back within 4e-6 (nothing carried over in the state).
    const TOLERANCE: f32 = 5e-2;

    /// What the median step's largest logit difference stays under: a state drifting from the
    /// host path's would move every later step.
    const DRIFT: f32 = 1e-4;

    /// A generated file of `family` and two decoders on it: the host path and the device path,
    /// both on the CPU.
    fn decoders(dir: &std::path::Path, family: &str) -> (Decoder, Decoder) {
        let spec = test_synth::Spec::preset(
            test_synth::family(family).unwrap(),
            "tiny",
            test_synth::Mix::Q8_0,
            5,
        )
        .unwrap();
        let plan = test_synth::Plan::new(spec).unwrap();
        let path = dir.join(format!("{family}.gguf"));
        test_synth::write_file(&plan, &path, 1).unwrap();
        let load = || {
            let mut f = super::super::super::gguf::open(&path).unwrap();
            Decoder::load(&mut f, &Device::Cpu).unwrap()
        };
        let (host, mut on) = (load(), load());
        on.ssm.as_mut().unwrap().use_device(&Device::Cpu).unwrap();
        (host, on)
    }

    fn argmax(v: &[f32]) -> u32 {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32)
    }

    fn worst(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Greedy tokens from slot 0's logits `first`, and the logits of every step.
    fn greedy(d: &mut Decoder, first: Vec<f32>, n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
        let (mut ids, mut logits) = (Vec::new(), vec![first]);
        for _ in 0..n {
            let next = argmax(logits.last().unwrap());
            ids.push(next);
            logits.push(d.forward(&[next], true).unwrap().unwrap());
        }
        (ids, logits)
    }

    /// Mamba, Mamba-2, Granite's hybrid and Qwen3.5's (dense and MoE): the device path gives
    /// the host path's greedy tokens and its logits to [`TOLERANCE`], holds as many state
    /// bytes, and resumes from the prompt's checkpoint to the same tokens.
    #[test]
    fn the_device_path_decodes_as_the_host_path_in_every_recurrent_family() {
        let dir = tempfile::tempdir().unwrap();
        let prompt = [310u32, 229, 388, 823, 363, 318, 693];
        for family in ["mamba", "mamba2", "granitehybrid", "qwen35", "qwen35moe"] {
            let (mut host, mut on) = decoders(dir.path(), family);
            assert!(matches!(
                on.ssm.as_mut().unwrap().state.layers_mut(0).unwrap()[0].ssm,
                Buf::Device(_)
            ));
            on.release_slot(0);
            let a = host.forward(&prompt, true).unwrap().unwrap();
            let b = on.forward(&prompt, true).unwrap().unwrap();
            let (want, want_logits) = greedy(&mut host, a, 16);
            let (got, got_logits) = greedy(&mut on, b, 16);
            assert_eq!(got, want, "{family}: greedy tokens");
            let diff = want_logits
                .iter()
                .zip(&got_logits)
                .map(|(a, b)| worst(a, b))
                .fold(0.0, f32::max);
            let mut steps: Vec<f32> = want_logits
                .iter()
                .zip(&got_logits)
                .map(|(a, b)| worst(a, b))
                .collect();
            steps.sort_by(f32::total_cmp);
            let median = steps[steps.len() / 2];
            eprintln!("{family}: logits within {diff:e}, median step {median:e}");
            assert!(
                median < DRIFT,
                "{family}: the state drifted: median {median}"
            );
            assert!(diff < TOLERANCE, "{family}: logits differ by {diff}");
            assert_eq!(on.state_allocated(), host.state_allocated(), "{family}");
            // Back to the checkpoint before the prompt's last token, then the same answer.
            let p = prompt.len();
            assert_eq!(on.truncate_slot(0, p), p - 1, "{family}: checkpoint");
            let b = on.forward(&prompt[p - 1..], true).unwrap().unwrap();
            assert!(worst(&b, &want_logits[0]) < TOLERANCE, "{family}: resumed");
            let (again, _) = greedy(&mut on, b, 16);
            assert_eq!(again, want, "{family}: resumed tokens");
        }
    }

    /// On the device path a sequence's logits are bit-identical alone and decoded in one batch
    /// with others (stacked into one step), as on the host path.
    #[test]
    fn device_path_sequences_batched_give_each_one_s_logits() {
        let dir = tempfile::tempdir().unwrap();
        let prompts: [&[u32]; 3] = [&[310, 229, 388, 823], &[12, 99, 7], &[501]];
        for family in ["mamba2", "granitehybrid", "qwen35"] {
            let (_, mut dec) = decoders(dir.path(), family);
            for (slot, p) in prompts.iter().enumerate() {
                let step = SeqStep {
                    slot,
                    ids: p,
                    logits: false,
                };
                dec.forward_batch(&[step]).unwrap();
            }
            let next = [[260u32], [655], [28]];
            let lens: Vec<usize> = (0..3).map(|s| dec.slot_len(s)).collect();
            let mut alone = Vec::new();
            for (slot, ids) in next.iter().enumerate() {
                // Alone: the same prompt on a slot of its own, then its token in a step of its
                // own.
                let step = SeqStep {
                    slot: slot + 3,
                    ids: prompts[slot],
                    logits: false,
                };
                dec.forward_batch(&[step]).unwrap();
                let step = SeqStep {
                    slot: slot + 3,
                    ids,
                    logits: true,
                };
                alone.push(dec.forward_batch(&[step]).unwrap().remove(0).unwrap());
            }
            let steps: Vec<SeqStep> = next
                .iter()
                .enumerate()
                .map(|(slot, ids)| SeqStep {
                    slot,
                    ids,
                    logits: true,
                })
                .collect();
            let batched = dec.forward_batch(&steps).unwrap();
            for (slot, (a, b)) in alone.iter().zip(&batched).enumerate() {
                let b = b.as_ref().unwrap();
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{family} slot {slot}: batched logits differ from its own"
                );
                assert_eq!(dec.slot_len(slot), lens[slot] + 1);
            }
        }
    }
}
