//! Mamba and Mamba-2 layers: a selective state-space mixer in place of attention (llama.cpp's
//! `mamba-base.cpp`; ggml's `ssm_conv` and `ssm_scan` on the CPU).
//!
//! A layer projects its input, runs a short causal convolution whose window is carried in the
//! sequence's state, then the selective scan: per head, `state = state · exp(Δ·A) + Δ·x ⊗ B` and
//! `y = state · C`, plus the `D` skip, gated by `silu(z)` (and, in Mamba-2, RMS-normed per
//! group). A prompt chunk is one call: the projections run over all its rows at once and the
//! scan walks its tokens in order, so the state after the chunk is the same as token by token.
//! On the CPU the scan and convolution read and write the state in host memory; on a GPU the
//! state stays on the device and the same steps run as tensor ops (`recurrent_device`). The
//! projections use the decoder's matrix kernels either way.

use candle_core::{Device, Tensor, D};

use super::super::gguf::Meta;
use super::super::pool;
use super::super::recurrent::{Buf, LayerState, RecurrentSlots, StateShape};
use super::super::EngineError;
use super::delta_net::{self, DeltaConfig, DeltaLayer};
use super::recurrent_device as dev;
pub use super::recurrent_host::SsmSeq;
use super::recurrent_host::{host, host_vec, silu, softplus};
use super::{linear, Linear, Loader};

/// Largest SSM state one layer may ask for, in values (64 times Mamba-2 7B's).
const MAX_STATE_PER_LAYER: usize = 1 << 26;

/// Which mixer the file's layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Mamba: a decay per state element, `Δ` from a low-rank projection.
    Mamba1,
    /// Mamba-2: a scalar decay per head, grouped B/C, a gated group RMS norm.
    Mamba2,
}

/// Shape of the state-space layers, from the `{arch}.ssm.*` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsmConfig {
    pub version: Version,
    /// Convolution width.
    pub d_conv: usize,
    pub d_inner: usize,
    pub d_state: usize,
    /// Scan heads (Mamba-2: `time_step_rank`; Mamba: every inner channel is a head).
    pub n_head: usize,
    pub n_group: usize,
    /// Mamba: the rank of the `Δ` projection.
    pub dt_rank: usize,
    /// Mamba variants (FalconMamba) that RMS-norm `Δ`, B and C.
    pub dt_b_c_rms: bool,
}

impl SsmConfig {
    /// The state-space shape of a `mamba`, `mamba2` or `granitehybrid` file (whose recurrent
    /// layers are Mamba-2's); `None` for other architectures.
    pub fn from_meta(meta: &Meta, arch: &str) -> Result<Option<Self>, EngineError> {
        let version = match arch {
            "mamba" => Version::Mamba1,
            "mamba2" | "granitehybrid" => Version::Mamba2,
            _ => return Ok(None),
        };
        let k = |s: &str| format!("{arch}.ssm.{s}");
        let d_conv = meta.usize(&k("conv_kernel"))?;
        let d_inner = meta.usize(&k("inner_size"))?;
        let d_state = meta.usize(&k("state_size"))?;
        let rank = meta.usize(&k("time_step_rank"))?;
        let (n_head, n_group, dt_rank) = match version {
            Version::Mamba1 => (d_inner, 1, rank),
            Version::Mamba2 => (rank, meta.usize(&k("group_count"))?, 0),
        };
        let bad = |reason: String| EngineError::Corrupt {
            path: meta.path.to_path_buf(),
            reason,
        };
        if d_conv < 1 || d_inner == 0 || d_state == 0 || n_head == 0 || n_group == 0 {
            return Err(bad(format!(
                "invalid state-space shape: conv {d_conv}, inner {d_inner}, state {d_state}, \
                 heads {n_head}, groups {n_group}"
            )));
        }
        if d_inner % n_head != 0 || n_head % n_group != 0 || d_inner % n_group != 0 {
            return Err(bad(format!(
                "state-space heads ({n_head}) and groups ({n_group}) do not divide the inner \
                 size {d_inner}"
            )));
        }
        // The state is allocated per sequence from these numbers alone: a hostile header must
        // not ask for more than any real model holds (Mamba-2 7B: 8192 × 128 per layer).
        let too_big = d_inner
            .checked_mul(d_state)
            .is_none_or(|n| n > MAX_STATE_PER_LAYER)
            || d_conv > 64;
        if too_big {
            return Err(bad(format!(
                "state-space state of {d_inner} × {d_state} (conv {d_conv}) per layer is beyond \
                 any real model"
            )));
        }
        Ok(Some(Self {
            version,
            d_conv,
            d_inner,
            d_state,
            n_head,
            n_group,
            dt_rank,
            dt_b_c_rms: meta.opt_bool(&k("dt_b_c_rms")).unwrap_or(false),
        }))
    }

    /// Channels the convolution runs over: x, and Mamba-2's B and C.
    pub fn conv_dim(&self) -> usize {
        match self.version {
            Version::Mamba1 => self.d_inner,
            Version::Mamba2 => self.d_inner + 2 * self.n_group * self.d_state,
        }
    }

    fn head_dim(&self) -> usize {
        self.d_inner / self.n_head
    }

    /// One layer's state: the convolution window and the SSM state of every head.
    pub fn state_shape(&self) -> StateShape {
        StateShape {
            conv: (self.d_conv - 1) * self.conv_dim(),
            ssm: self.d_inner * self.d_state,
        }
    }
}

/// One Mamba layer's weights; the small ones as host vectors for the scan.
pub struct SsmLayer {
    norm: Tensor,
    in_proj: Linear,
    /// (channel, tap), `d_conv` taps per channel.
    conv_w: Vec<f32>,
    conv_b: Vec<f32>,
    /// Mamba: `ssm_x` (to Δ, B, C) and `ssm_dt` (Δ back to every channel).
    x_proj: Option<Linear>,
    dt_proj: Option<Linear>,
    dt_bias: Vec<f32>,
    /// Mamba-2: one per head; Mamba: (channel, state).
    a: Vec<f32>,
    d: Vec<f32>,
    /// Mamba-2's group RMS-norm weight over the inner width.
    group_norm: Option<Vec<f32>>,
    out_proj: Linear,
    /// The small weights on the decoder's device, when the state lives there.
    on_device: Option<DeviceWeights>,
}

/// A Mamba layer's small weights as the device path reads them.
struct DeviceWeights {
    /// (tap, channel).
    conv_taps: Tensor,
    conv_b: Tensor,
    dt_bias: Tensor,
    /// Shaped to broadcast over the state (group, head in group, head width, state):
    /// Mamba-2 (1, groups, heads per group, 1, 1); Mamba (1, 1, inner, 1, state).
    a: Tensor,
    /// (heads, 1): one per head, over the head's channels.
    d: Tensor,
    group_norm: Option<Tensor>,
}

impl DeviceWeights {
    fn new(cfg: &SsmConfig, l: &SsmLayer, device: &Device) -> candle_core::Result<Self> {
        let a_shape = match cfg.version {
            Version::Mamba1 => (1, 1, cfg.d_inner, 1, cfg.d_state),
            Version::Mamba2 => (1, cfg.n_group, cfg.n_head / cfg.n_group, 1, 1),
        };
        Ok(Self {
            conv_taps: dev::conv_taps(&l.conv_w, cfg.d_conv, device)?,
            conv_b: Tensor::from_slice(&l.conv_b, l.conv_b.len(), device)?,
            dt_bias: Tensor::from_slice(&l.dt_bias, l.dt_bias.len(), device)?,
            a: Tensor::from_slice(&l.a, a_shape, device)?,
            d: Tensor::from_slice(&l.d, (l.d.len(), 1), device)?,
            group_norm: l
                .group_norm
                .as_ref()
                .map(|w| Tensor::from_slice(w, w.len(), device))
                .transpose()?,
        })
    }
}

/// Loads layer `i`'s weights.
pub fn load_layer(l: &mut Loader, cfg: &SsmConfig, i: usize) -> Result<SsmLayer, EngineError> {
    let p = |s: &str| format!("blk.{i}.{s}");
    let conv_dim = cfg.conv_dim();
    let mamba1 = cfg.version == Version::Mamba1;
    Ok(SsmLayer {
        norm: l.dense(&p("attn_norm.weight"))?,
        in_proj: l.matmul(&p("ssm_in.weight"))?,
        conv_w: host_vec(l, &p("ssm_conv1d.weight"), conv_dim * cfg.d_conv)?,
        conv_b: host_vec(l, &p("ssm_conv1d.bias"), conv_dim)?,
        x_proj: mamba1.then(|| l.matmul(&p("ssm_x.weight"))).transpose()?,
        dt_proj: mamba1.then(|| l.matmul(&p("ssm_dt.weight"))).transpose()?,
        dt_bias: host_vec(l, &p("ssm_dt.bias"), cfg.n_head)?,
        a: host_vec(
            l,
            &p("ssm_a"),
            if mamba1 {
                cfg.d_inner * cfg.d_state
            } else {
                cfg.n_head
            },
        )?,
        d: host_vec(l, &p("ssm_d"), cfg.n_head)?,
        group_norm: if mamba1 {
            None
        } else {
            Some(host_vec(l, &p("ssm_norm.weight"), cfg.d_inner)?)
        },
        out_proj: l.matmul(&p("ssm_out.weight"))?,
        on_device: None,
    })
}

/// The recurrent layers of a model, all of one kind.
pub enum Mixers {
    Mamba(SsmConfig, Vec<SsmLayer>),
    /// Qwen3.5's Gated DeltaNet (linear attention).
    DeltaNet(DeltaConfig, Vec<DeltaLayer>),
}

/// The recurrent layers of a Mamba model (or a hybrid's) and their per-slot state.
pub struct SsmStack {
    pub mixers: Mixers,
    pub state: RecurrentSlots,
}

impl SsmStack {
    /// Mamba layers of these shapes for a decoder on `device`: their state lives in host
    /// memory on the CPU, on the device elsewhere (see [`dev::wanted`]).
    pub fn new(
        cfg: SsmConfig,
        layers: Vec<SsmLayer>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let shapes = vec![cfg.state_shape(); layers.len()];
        Self::placed(Mixers::Mamba(cfg, layers), shapes, device)
    }

    /// Gated DeltaNet layers of these shapes (as [`Self::new`]).
    pub fn delta_net(
        cfg: DeltaConfig,
        layers: Vec<DeltaLayer>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let shapes = vec![cfg.state_shape(); layers.len()];
        Self::placed(Mixers::DeltaNet(cfg, layers), shapes, device)
    }

    fn placed(
        mixers: Mixers,
        shapes: Vec<StateShape>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let mut this = Self {
            mixers,
            state: RecurrentSlots::new(shapes),
        };
        if dev::wanted(device) {
            this.use_device(device)?;
            tracing::debug!(?device, "recurrent state and steps on the device");
        }
        Ok(this)
    }

    /// Moves the state to `device` and runs the layers' steps as tensor ops there (on the CPU
    /// too: tests compare the two paths). Any state held so far is dropped.
    pub fn use_device(&mut self, device: &Device) -> candle_core::Result<()> {
        let shapes = match &mut self.mixers {
            Mixers::Mamba(cfg, layers) => {
                for l in layers.iter_mut() {
                    l.on_device = Some(DeviceWeights::new(cfg, l, device)?);
                }
                vec![cfg.state_shape(); layers.len()]
            }
            Mixers::DeltaNet(cfg, layers) => {
                for l in layers.iter_mut() {
                    l.use_device(cfg, device)?;
                }
                vec![cfg.state_shape(); layers.len()]
            }
        };
        self.state = RecurrentSlots::on_device(shapes, device);
        Ok(())
    }

    fn len(&self) -> usize {
        match &self.mixers {
            Mixers::Mamba(_, l) => l.len(),
            Mixers::DeltaNet(_, l) => l.len(),
        }
    }

    /// Runs every layer (`x = x + mixer(rms_norm(x))`) over the batch `x` (1, rows, hidden),
    /// advancing each sequence's state by its rows.
    pub fn forward(
        &mut self,
        mut x: Tensor,
        seqs: &[SsmSeq],
        eps: f32,
        dense_ok: bool,
    ) -> candle_core::Result<Tensor> {
        let mut snaps = Self::snapshots(seqs);
        for li in 0..self.len() {
            let y = self.mix(li, &x, seqs, &mut snaps, eps, dense_ok)?;
            x = super::super::ops::add(&x, &y)?;
        }
        self.finish(seqs, snaps);
        Ok(x)
    }

    /// Room for the checkpoint each sequence may take in this pass, filled layer by layer.
    pub fn snapshots(seqs: &[SsmSeq]) -> Vec<Vec<LayerState>> {
        vec![Vec::new(); seqs.len()]
    }

    /// Recurrent layer `li`'s mixer over the batch `x` (1, rows, hidden): `mixer(rms_norm(x))`
    /// on `x`'s device, without the residual add. Each sequence's state of this layer moves on
    /// by its rows; its position moves only in [`Self::finish`], once every layer has run.
    pub fn mix(
        &mut self,
        li: usize,
        x: &Tensor,
        seqs: &[SsmSeq],
        snaps: &mut [Vec<LayerState>],
        eps: f32,
        dense_ok: bool,
    ) -> candle_core::Result<Tensor> {
        let (cfg, layers) = match &self.mixers {
            Mixers::Mamba(cfg, layers) => (cfg, layers),
            Mixers::DeltaNet(cfg, layers) => {
                return delta_net::mix(
                    cfg,
                    &layers[li],
                    li,
                    x,
                    seqs,
                    &mut self.state,
                    snaps,
                    eps,
                    dense_ok,
                );
            }
        };
        let layer = &layers[li];
        let h = super::super::ops::rms_norm(x, &layer.norm, eps)?;
        if let Some(w) = &layer.on_device {
            return mixer_on_device(
                cfg,
                layer,
                w,
                li,
                &h,
                seqs,
                &mut self.state,
                snaps,
                eps,
                dense_ok,
            );
        }
        let y = mixer(
            cfg,
            layer,
            li,
            &h,
            seqs,
            &mut self.state,
            snaps,
            eps,
            dense_ok,
        )?;
        y.to_device(x.device())
    }

    /// Ends a pass: stores the checkpoints taken and advances every sequence by its rows.
    pub fn finish(&mut self, seqs: &[SsmSeq], snaps: Vec<Vec<LayerState>>) {
        for (s, snap) in seqs.iter().zip(snaps) {
            let start = self.state.len(s.slot);
            if s.checkpoint && s.t > 1 {
                self.state.checkpoint(s.slot, start + s.t - 1, snap);
            }
            self.state.advance(s.slot, s.t);
        }
    }
}

/// RMS-normalises each `width`-long piece of `v` in place (no weight), with the sum in f64 as
/// ggml's rms_norm.
fn rms_pieces(v: &mut [f32], width: usize, eps: f32) {
    for piece in v.chunks_exact_mut(width) {
        let ss: f64 = piece.iter().map(|&a| (a as f64) * (a as f64)).sum();
        let scale = 1.0 / ((ss / width as f64) as f32 + eps).sqrt();
        piece.iter_mut().for_each(|a| *a *= scale);
    }
}

/// One layer's mixer over every sequence of the batch; returns (1, rows, hidden).
#[allow(clippy::too_many_arguments)]
fn mixer(
    cfg: &SsmConfig,
    layer: &SsmLayer,
    li: usize,
    h: &Tensor,
    seqs: &[SsmSeq],
    state: &mut RecurrentSlots,
    snaps: &mut [Vec<LayerState>],
    eps: f32,
    dense_ok: bool,
) -> candle_core::Result<Tensor> {
    let proj = linear(&layer.in_proj, h, dense_ok)?;
    let width = proj.dim(D::Minus1)?;
    let want = match cfg.version {
        Version::Mamba1 => 2 * cfg.d_inner,
        Version::Mamba2 => cfg.d_inner + cfg.conv_dim() + cfg.n_head,
    };
    if width != want {
        candle_core::bail!(
            "layer {li}: ssm_in gives {width} values per token, the state-space shape needs {want}"
        );
    }
    let rows = proj.elem_count() / width;
    let proj = host(&proj)?;
    let (di, ds, ng) = (cfg.d_inner, cfg.d_state, cfg.n_group);
    let conv_dim = cfg.conv_dim();
    // Where the convolution's input and the gate sit in a projected row.
    let (conv_at, z_at) = match cfg.version {
        Version::Mamba1 => (0, di),
        Version::Mamba2 => (di, 0),
    };
    // The convolution, per sequence over its own window.
    let mut conv_out = vec![0f32; rows * conv_dim];
    for (s, snap) in seqs.iter().zip(snaps.iter_mut()) {
        let window = state.layers_mut(s.slot)?[li].conv.host_mut()?;
        let mut snap_conv = s.checkpoint.then(|| vec![0f32; window.len()]);
        conv_seq(
            cfg,
            layer,
            &proj[s.offset * width..(s.offset + s.t) * width],
            width,
            conv_at,
            window,
            &mut conv_out[s.offset * conv_dim..(s.offset + s.t) * conv_dim],
            snap_conv.as_deref_mut(),
        );
        if let Some(c) = snap_conv {
            snap.push(LayerState {
                conv: Buf::Host(c),
                ssm: Buf::Host(Vec::new()),
            });
        }
    }
    // Δ, B and C for every row.
    let (dt, bc, bc_width, b_at, c_at) = match cfg.version {
        Version::Mamba2 => {
            let dt_at = di + conv_dim;
            let dt: Vec<f32> = (0..rows)
                .flat_map(|r| proj[r * width + dt_at..r * width + dt_at + cfg.n_head].to_vec())
                .collect();
            // B and C are read straight from the convolution's output.
            (dt, None, conv_dim, di, di + ng * ds)
        }
        Version::Mamba1 => {
            let (Some(xp), Some(dtp)) = (&layer.x_proj, &layer.dt_proj) else {
                candle_core::bail!("Mamba layer {li} has no ssm_x/ssm_dt projections");
            };
            let xs = Tensor::from_vec(conv_out.clone(), (1, rows, conv_dim), h.device())?;
            let mut xdb = host(&linear(xp, &xs, dense_ok)?)?;
            let r = cfg.dt_rank;
            let xw = r + 2 * ds;
            if xdb.len() != rows * xw {
                candle_core::bail!(
                    "ssm_x gives {} values per row, expected {xw}",
                    xdb.len() / rows
                );
            }
            if cfg.dt_b_c_rms {
                for row in xdb.chunks_exact_mut(xw) {
                    rms_pieces(&mut row[..r], r, eps);
                    rms_pieces(&mut row[r..], ds, eps);
                }
            }
            let dts: Vec<f32> = xdb
                .chunks_exact(xw)
                .flat_map(|row| row[..r].to_vec())
                .collect();
            let dts = Tensor::from_vec(dts, (1, rows, r), h.device())?;
            let dt = host(&linear(dtp, &dts, dense_ok)?)?;
            if dt.len() != rows * di {
                candle_core::bail!(
                    "layer {li}: ssm_dt gives {} values per token",
                    dt.len() / rows
                );
            }
            (dt, Some(xdb), xw, r, r + ds)
        }
    };
    let bc_src: &[f32] = bc.as_deref().unwrap_or(&conv_out);
    // The scan, per sequence over its own state; y gets the D skip and the gate.
    let mut y = vec![0f32; rows * di];
    for (s, snap) in seqs.iter().zip(snaps.iter_mut()) {
        let st = state.layers_mut(s.slot)?[li].ssm.host_mut()?;
        let mut snap_ssm = s.checkpoint.then(|| vec![0f32; st.len()]);
        let rs = s.offset..s.offset + s.t;
        scan_seq(
            cfg,
            layer,
            ScanInput {
                x: &conv_out[rs.start * conv_dim..rs.end * conv_dim],
                x_width: conv_dim,
                dt: &dt[rs.start * cfg.n_head..rs.end * cfg.n_head],
                bc: &bc_src[rs.start * bc_width..rs.end * bc_width],
                bc_width,
                b_at,
                c_at,
            },
            st,
            &mut y[rs.start * di..rs.end * di],
            snap_ssm.as_deref_mut(),
        );
        if let (Some(c), Some(last)) = (snap_ssm, snap.last_mut()) {
            last.ssm = Buf::Host(c);
        }
    }
    let finish_row = |r: usize, yr: &mut [f32]| {
        let xr = &conv_out[r * conv_dim..r * conv_dim + di];
        let hd = cfg.head_dim();
        for (i, v) in yr.iter_mut().enumerate() {
            *v += xr[i] * layer.d[i / hd];
        }
        let z = &proj[r * width + z_at..r * width + z_at + di];
        for (v, &g) in yr.iter_mut().zip(z) {
            *v *= silu(g);
        }
        if let Some(w) = &layer.group_norm {
            rms_pieces(yr, di / ng, eps);
            for (v, &g) in yr.iter_mut().zip(w) {
                *v *= g;
            }
        }
    };
    // A prompt chunk's rows are independent: split them across threads.
    if rows > 1 {
        pool::for_each_chunk_mut(&mut y, di, finish_row);
    } else {
        finish_row(0, &mut y);
    }
    let y = Tensor::from_vec(y, (1, rows, di), h.device())?;
    let out = linear(&layer.out_proj, &y, dense_ok)?;
    if out.dims() != h.dims() {
        candle_core::bail!(
            "layer {li}: ssm_out gives {:?} for {:?}",
            out.dims(),
            h.dims()
        );
    }
    Ok(out)
}

/// [`mixer`] on the device path: the same steps as tensor ops on `h`'s device, the state in
/// the slots as tensors there.
#[allow(clippy::too_many_arguments)]
fn mixer_on_device(
    cfg: &SsmConfig,
    layer: &SsmLayer,
    w: &DeviceWeights,
    li: usize,
    h: &Tensor,
    seqs: &[SsmSeq],
    state: &mut RecurrentSlots,
    snaps: &mut [Vec<LayerState>],
    eps: f32,
    dense_ok: bool,
) -> candle_core::Result<Tensor> {
    let proj = linear(&layer.in_proj, h, dense_ok)?;
    let width = proj.dim(D::Minus1)?;
    let (di, ds, ng, nh) = (cfg.d_inner, cfg.d_state, cfg.n_group, cfg.n_head);
    let conv_dim = cfg.conv_dim();
    let want = match cfg.version {
        Version::Mamba1 => 2 * di,
        Version::Mamba2 => di + conv_dim + nh,
    };
    if width != want {
        candle_core::bail!(
            "layer {li}: ssm_in gives {width} values per token, the state-space shape needs {want}"
        );
    }
    let rows = proj.elem_count() / width;
    let (conv_at, z_at) = match cfg.version {
        Version::Mamba1 => (0, di),
        Version::Mamba2 => (di, 0),
    };
    let conv_out = dev::conv(
        state,
        li,
        seqs,
        snaps,
        &proj.narrow(2, conv_at, conv_dim)?,
        &w.conv_taps,
        Some(&w.conv_b),
    )?;
    let x = conv_out.narrow(2, 0, di)?;
    // Δ before its bias, and B and C, for every row.
    let (dt, b, c) = match cfg.version {
        Version::Mamba2 => (
            proj.narrow(2, di + conv_dim, nh)?,
            conv_out.narrow(2, di, ng * ds)?,
            conv_out.narrow(2, di + ng * ds, ng * ds)?,
        ),
        Version::Mamba1 => {
            let (Some(xp), Some(dtp)) = (&layer.x_proj, &layer.dt_proj) else {
                candle_core::bail!("Mamba layer {li} has no ssm_x/ssm_dt projections");
            };
            let r = cfg.dt_rank;
            let xdb = linear(xp, &x.contiguous()?, dense_ok)?;
            if xdb.dim(D::Minus1)? != r + 2 * ds {
                candle_core::bail!(
                    "ssm_x gives {} values per row, expected {}",
                    xdb.dim(D::Minus1)?,
                    r + 2 * ds
                );
            }
            let (mut dts, mut bc) = (xdb.narrow(2, 0, r)?, xdb.narrow(2, r, 2 * ds)?);
            if cfg.dt_b_c_rms {
                dts = dev::rms_pieces(&dts, r, eps)?;
                bc = dev::rms_pieces(&bc, ds, eps)?;
            }
            let dt = linear(dtp, &dts.contiguous()?, dense_ok)?;
            if dt.dims() != [1, rows, di] {
                candle_core::bail!("layer {li}: ssm_dt gives {:?}", dt.dims());
            }
            (dt, bc.narrow(2, 0, ds)?, bc.narrow(2, ds, ds)?)
        }
    };
    let dt = dev::softplus(&dt.broadcast_add(&w.dt_bias)?)?;
    let hd = cfg.head_dim();
    let x_dt = x
        .reshape((1, rows, nh, hd))?
        .broadcast_mul(&dt.unsqueeze(3)?)?
        .reshape((1, rows, di))?;
    // The state as (sequence, group, head in group, head width, state).
    let heads = nh / ng;
    let step = |s: &Tensor, row: &[Tensor]| -> candle_core::Result<(Tensor, Tensor)> {
        let n = s.dim(0)?;
        let decay = row[0]
            .reshape((n, ng, heads, 1, 1))?
            .broadcast_mul(&w.a)?
            .exp()?;
        let x_dt = row[1].reshape((n, ng, heads, hd, 1))?;
        let b = row[2].reshape((n, ng, 1, 1, ds))?;
        let c = row[3].reshape((n, ng, 1, 1, ds))?;
        let s = s.reshape((n, ng, heads, hd, ds))?;
        let s = (s.broadcast_mul(&decay)? + x_dt.broadcast_mul(&b)?)?;
        let y = s.broadcast_mul(&c)?.sum(4)?;
        Ok((s.reshape((n, di * ds))?, y.reshape((n, di))?))
    };
    let y = dev::scan(state, li, seqs, snaps, &[&dt, &x_dt, &b, &c], &step)?;
    // The D skip, the gate, and Mamba-2's group norm.
    let skip = x.reshape((1, rows, nh, hd))?.broadcast_mul(&w.d)?;
    let y = (y + skip.reshape((1, rows, di))?)?;
    let mut y = (y * proj.narrow(2, z_at, di)?.silu()?)?;
    if let Some(g) = &w.group_norm {
        y = dev::rms_pieces(&y, di / ng, eps)?.broadcast_mul(g)?;
    }
    let out = linear(&layer.out_proj, &y, dense_ok)?;
    if out.dims() != h.dims() {
        candle_core::bail!(
            "layer {li}: ssm_out gives {:?} for {:?}",
            out.dims(),
            h.dims()
        );
    }
    Ok(out)
}

/// The causal convolution over one sequence's `t` rows: each channel's window (its last
/// `d_conv - 1` inputs, oldest first) followed by its new inputs, dotted with the channel's
/// taps in order (ggml_ssm_conv), plus the bias, through SiLU. The window is updated in place;
/// `snap` gets the window as it stood before the last row.
#[allow(clippy::too_many_arguments)]
fn conv_seq(
    cfg: &SsmConfig,
    layer: &SsmLayer,
    proj: &[f32],
    width: usize,
    at: usize,
    window: &mut [f32],
    out: &mut [f32],
    snap: Option<&mut [f32]>,
) {
    let k = cfg.d_conv;
    let keep = k - 1;
    let conv_dim = cfg.conv_dim();
    let t = proj.len() / width;
    let window_ptr = window.as_mut_ptr() as usize;
    let out_ptr = out.as_mut_ptr() as usize;
    let snap_ptr = snap.map(|s| s.as_mut_ptr() as usize);
    let work = |channels: std::ops::Range<usize>| {
        let mut buf = vec![0f32; keep + t];
        for c in channels {
            // SAFETY: each channel owns its window and snapshot pieces and its column of
            // `out`; the channel ranges given to threads are disjoint and the buffers outlive
            // the call.
            let win = unsafe {
                std::slice::from_raw_parts_mut((window_ptr as *mut f32).add(c * keep), keep)
            };
            buf[..keep].copy_from_slice(win);
            for r in 0..t {
                buf[keep + r] = proj[r * width + at + c];
            }
            let w = &layer.conv_w[c * k..(c + 1) * k];
            for r in 0..t {
                let mut sum = 0f32;
                for (a, b) in buf[r..r + k].iter().zip(w) {
                    sum += a * b;
                }
                unsafe {
                    *(out_ptr as *mut f32).add(r * conv_dim + c) = silu(sum + layer.conv_b[c])
                };
            }
            if let Some(p) = snap_ptr {
                let s =
                    unsafe { std::slice::from_raw_parts_mut((p as *mut f32).add(c * keep), keep) };
                s.copy_from_slice(&buf[t - 1..t - 1 + keep]);
            }
            win.copy_from_slice(&buf[t..t + keep]);
        }
    };
    // One decoded token's convolution is a few thousand multiply-adds: not worth a wake-up.
    if t * conv_dim < 1 << 14 {
        work(0..conv_dim);
    } else {
        pool::run_chunked(conv_dim, work);
    }
}

/// Lanes of the scan's partial sums: the dot product with C is summed in this many parts as
/// ggml's SIMD path does.
const LANES: usize = 16;

/// `Σ a[n] · b[n]` summed in [`LANES`] partial sums (lane `n mod LANES`), then the lanes in
/// order, then the tail.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let (av, at) = a.as_chunks::<LANES>();
    let (bv, bt) = b.as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for (x, y) in av.iter().zip(bv) {
        for j in 0..LANES {
            acc[j] += x[j] * y[j];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in at.iter().zip(bt) {
        sum += x * y;
    }
    sum
}

/// One step of one state row: `s[n] = decay(n) · s[n] + b[n] · x_dt`, returning `Σ s[n] · c[n]`.
/// Two plain loops: the compiler vectorizes each, where one fused loop stayed scalar.
#[inline(always)]
fn update(s: &mut [f32], b: &[f32], c: &[f32], x_dt: f32, decay: impl Fn(usize) -> f32) -> f32 {
    let (b, c) = (&b[..s.len()], &c[..s.len()]);
    for (n, (sn, &bn)) in s.iter_mut().zip(b).enumerate() {
        *sn = *sn * decay(n) + bn * x_dt;
    }
    dot_lanes(s, c)
}

/// What the scan reads for one sequence's rows.
struct ScanInput<'a> {
    /// The convolution's output rows (x first).
    x: &'a [f32],
    x_width: usize,
    /// Δ before the bias, `n_head` per row.
    dt: &'a [f32],
    /// Rows holding B at `b_at` and C at `c_at` (`n_group × d_state` each).
    bc: &'a [f32],
    bc_width: usize,
    b_at: usize,
    c_at: usize,
}

/// The selective scan of one sequence (ggml_ssm_scan): heads are independent, so they are
/// split across threads, each walking every token of its heads in order. `snap` gets the state
/// before the last token.
fn scan_seq(
    cfg: &SsmConfig,
    layer: &SsmLayer,
    inp: ScanInput,
    ssm: &mut [f32],
    y: &mut [f32],
    snap: Option<&mut [f32]>,
) {
    let (nh, hd, ds, di) = (cfg.n_head, cfg.head_dim(), cfg.d_state, cfg.d_inner);
    let heads_per_group = nh / cfg.n_group;
    let t = inp.dt.len() / nh;
    let per_head = hd * ds;
    let ssm_ptr = ssm.as_mut_ptr() as usize;
    let y_ptr = y.as_mut_ptr() as usize;
    let snap_ptr = snap.map(|s| s.as_mut_ptr() as usize);
    let work = |heads: std::ops::Range<usize>| {
        for h in heads {
            // SAFETY: each head owns its slice of the state, of the snapshot and its columns
            // of y; the ranges given to threads are disjoint and the buffers outlive the call.
            let st = unsafe {
                std::slice::from_raw_parts_mut((ssm_ptr as *mut f32).add(h * per_head), per_head)
            };
            let g = h / heads_per_group;
            for r in 0..t {
                let dt = softplus(inp.dt[r * nh + h] + layer.dt_bias[h]);
                let xrow = &inp.x[r * inp.x_width..r * inp.x_width + di];
                let brow = &inp.bc[r * inp.bc_width + inp.b_at + g * ds..][..ds];
                let crow = &inp.bc[r * inp.bc_width + inp.c_at + g * ds..][..ds];
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
                // Mamba-2's decay is one scalar per head and token.
                let da = match cfg.version {
                    Version::Mamba2 => (dt * layer.a[h]).exp(),
                    Version::Mamba1 => 0.0,
                };
                for p in 0..hd {
                    let ch = h * hd + p;
                    let x_dt = xrow[ch] * dt;
                    let s = &mut st[p * ds..(p + 1) * ds];
                    let sum = match cfg.version {
                        Version::Mamba2 => update(s, brow, crow, x_dt, |_| da),
                        Version::Mamba1 => {
                            let a = &layer.a[ch * ds..(ch + 1) * ds];
                            update(s, brow, crow, x_dt, |n| (dt * a[n]).exp())
                        }
                    };
                    unsafe { *(y_ptr as *mut f32).add(r * di + ch) = sum };
                }
            }
        }
    };
    if nh * t * per_head < 1 << 16 {
        work(0..nh);
    } else {
        // The own pool parks after a short spin; candle's barrier pool spins on while the
        // matmul kernels' pool runs the next projection.
        pool::run_chunked(nh, work);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::Device;

    fn det(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let v = (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed * 97)
                    >> 8;
                (v % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn dense(rows: usize, cols: usize, seed: u32) -> Linear {
        let w: Vec<f32> = det(rows * cols, seed)
            .iter()
            .map(|v| v / (cols as f32).sqrt())
            .collect();
        Linear::Candle(QMatMul::Tensor(
            Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap(),
        ))
    }

    /// A two-layer stack; `on_device`: the tensor path on the CPU device.
    fn stack(version: Version, on_device: bool) -> SsmStack {
        let cfg = SsmConfig {
            version,
            d_conv: 4,
            d_inner: 16,
            d_state: 8,
            n_head: if version == Version::Mamba2 { 4 } else { 16 },
            n_group: if version == Version::Mamba2 { 2 } else { 1 },
            dt_rank: 4,
            dt_b_c_rms: false,
        };
        let hidden = 8;
        let in_w = match version {
            Version::Mamba2 => 2 * 16 + 2 * 2 * 8 + 4,
            Version::Mamba1 => 32,
        };
        let layers = (0..2)
            .map(|i| SsmLayer {
                norm: Tensor::ones(hidden, candle_core::DType::F32, &Device::Cpu).unwrap(),
                in_proj: dense(in_w, hidden, 1 + i),
                conv_w: det(cfg.conv_dim() * 4, 2 + i),
                conv_b: det(cfg.conv_dim(), 3 + i),
                x_proj: (version == Version::Mamba1).then(|| dense(4 + 16, 16, 4 + i)),
                dt_proj: (version == Version::Mamba1).then(|| dense(16, 4, 5 + i)),
                dt_bias: det(cfg.n_head, 6 + i),
                a: det(
                    if version == Version::Mamba1 {
                        16 * 8
                    } else {
                        4
                    },
                    7 + i,
                )
                .iter()
                .map(|v| -1.0 - v.abs())
                .collect(),
                d: det(cfg.n_head, 8 + i),
                group_norm: (version == Version::Mamba2).then(|| vec![1.0; 16]),
                out_proj: dense(hidden, 16, 9 + i),
                on_device: None,
            })
            .collect();
        let mut s = SsmStack {
            mixers: Mixers::Mamba(cfg, layers),
            state: RecurrentSlots::new(vec![cfg.state_shape(); 2]),
        };
        if on_device {
            s.use_device(&Device::Cpu).unwrap();
        }
        s
    }

    fn values(s: &mut SsmStack, slot: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
        s.state
            .layers_mut(slot)
            .unwrap()
            .iter()
            .map(|l| (l.conv.to_vec().unwrap(), l.ssm.to_vec().unwrap()))
            .collect()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (p, q)) in a.iter().zip(b).enumerate() {
            assert!((p - q).abs() < 1e-5, "{what}: value {i}: {p} vs {q}");
        }
    }

    #[test]
    fn hostile_state_shapes_are_refused_with_a_reason() {
        use candle_core::quantized::gguf_file::Value;
        let md = |inner: u32, state: u32, heads: u32| {
            [
                ("mamba2.ssm.conv_kernel", 4),
                ("mamba2.ssm.inner_size", inner),
                ("mamba2.ssm.state_size", state),
                ("mamba2.ssm.time_step_rank", heads),
                ("mamba2.ssm.group_count", 1),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::U32(v)))
            .collect::<std::collections::HashMap<_, _>>()
        };
        let path = std::path::Path::new("m.gguf");
        let cfg = |m| SsmConfig::from_meta(&Meta { path, md: &m }, "mamba2");
        let ok = cfg(md(4096, 128, 64)).unwrap().unwrap();
        assert_eq!(ok.state_shape().ssm, 4096 * 128);
        assert_eq!(ok.state_shape().conv, 3 * (4096 + 256));
        let huge = cfg(md(1 << 20, 1 << 12, 64)).unwrap_err().to_string();
        assert!(huge.contains("beyond any real model"), "{huge}");
        let ragged = cfg(md(4096, 128, 60)).unwrap_err().to_string();
        assert!(ragged.contains("do not divide"), "{ragged}");
        assert!(cfg(md(4096, 128, 0)).is_err());
    }

    fn input(rows: usize) -> Tensor {
        Tensor::from_vec(det(rows * 8, 11), (1, rows, 8), &Device::Cpu).unwrap()
    }

    /// A chunk scanned in one call ends in the same state, with the same outputs, as its
    /// tokens fed one by one; a second sequence in the same batch does not disturb it; and
    /// rolling back to the prompt checkpoint then feeding the last token gives it again.
    #[test]
    fn chunked_scan_matches_token_by_token_and_checkpoints_resume() {
        for (version, on_device) in [
            (Version::Mamba1, false),
            (Version::Mamba2, false),
            (Version::Mamba1, true),
            (Version::Mamba2, true),
        ] {
            let version_path = format!("{version:?} on device {on_device}");
            let mut a = stack(version, on_device);
            let x = input(6);
            let seq = |slot, offset, t, checkpoint| SsmSeq {
                slot,
                offset,
                t,
                checkpoint,
            };
            let chunk = a
                .forward(x.clone(), &[seq(0, 0, 6, true)], 1e-5, true)
                .unwrap();
            let chunk: Vec<f32> = chunk.flatten_all().unwrap().to_vec1().unwrap();
            let mut b = stack(version, on_device);
            let mut one = Vec::new();
            for r in 0..6 {
                // Slot 1 rides along in the batch with other rows.
                let xr = Tensor::cat(&[x.narrow(1, r, 1).unwrap(), input(2)], 1).unwrap();
                let y = b
                    .forward(xr, &[seq(0, 0, 1, false), seq(1, 1, 2, false)], 1e-5, false)
                    .unwrap();
                one.extend(
                    y.narrow(1, 0, 1)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                );
            }
            close(&chunk, &one, &version_path);
            assert_eq!(a.state.len(0), 6);
            let live = values(&mut a, 0);
            assert_eq!(
                a.state.truncate(0, 5),
                5,
                "{version_path}: checkpoint before the last"
            );
            let y = a
                .forward(
                    x.narrow(1, 5, 1).unwrap(),
                    &[seq(0, 0, 1, false)],
                    1e-5,
                    true,
                )
                .unwrap();
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            close(
                &y,
                &chunk[5 * 8..],
                &format!("{version_path}: resumed output"),
            );
            for (l, (p, q)) in values(&mut a, 0).iter().zip(&live).enumerate() {
                close(&p.0, &q.0, &format!("{version_path}: layer {l} conv"));
                close(&p.1, &q.1, &format!("{version_path}: layer {l} ssm"));
            }
        }
    }

    /// The device path gives the host path's outputs and states (in the same layout): over a
    /// prompt chunk, then over a decode step of three sequences, two of them stepped together.
    #[test]
    fn the_device_path_matches_the_host_path() {
        let seq = |slot, offset, t, checkpoint| SsmSeq {
            slot,
            offset,
            t,
            checkpoint,
        };
        for version in [Version::Mamba1, Version::Mamba2] {
            let (mut host, mut on) = (stack(version, false), stack(version, true));
            let mut run = |x: Tensor, seqs: &[SsmSeq]| {
                let a = host
                    .forward(x.clone(), seqs, 1e-5, seqs.len() == 1)
                    .unwrap();
                let b = on.forward(x, seqs, 1e-5, seqs.len() == 1).unwrap();
                let (a, b): (Vec<f32>, Vec<f32>) = (
                    a.flatten_all().unwrap().to_vec1().unwrap(),
                    b.flatten_all().unwrap().to_vec1().unwrap(),
                );
                close(&a, &b, &format!("{version:?} outputs"));
            };
            run(input(5), &[seq(0, 0, 5, true)]);
            run(input(3), &[seq(1, 0, 2, false), seq(2, 2, 1, false)]);
            let x = Tensor::cat(&[input(1), input(1), input(1)], 1).unwrap();
            run(
                x,
                &[
                    seq(0, 0, 1, false),
                    seq(1, 1, 1, false),
                    seq(2, 2, 1, false),
                ],
            );
            for slot in 0..3 {
                let (a, b) = (values(&mut host, slot), values(&mut on, slot));
                for (l, (p, q)) in a.iter().zip(&b).enumerate() {
                    close(
                        &p.0,
                        &q.0,
                        &format!("{version:?} slot {slot} layer {l} conv"),
                    );
                    close(
                        &p.1,
                        &q.1,
                        &format!("{version:?} slot {slot} layer {l} ssm"),
                    );
                }
            }
            assert_eq!(host.state.allocated_bytes(), on.state.allocated_bytes());
            // Back to the prompt's checkpoint on both.
            assert_eq!(host.state.truncate(0, 4), 4);
            assert_eq!(on.state.truncate(0, 4), 4);
            let (a, b) = (values(&mut host, 0), values(&mut on, 0));
            for (p, q) in a.iter().zip(&b) {
                close(&p.0, &q.0, &format!("{version:?} checkpoint conv"));
                close(&p.1, &q.1, &format!("{version:?} checkpoint ssm"));
            }
        }
    }
}
