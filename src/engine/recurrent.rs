//! Recurrent state per sequence slot: what recurrent layers (Mamba's convolution and SSM state,
//! and any layer that carries a fixed-size state from token to token) keep instead of a KV
//! cache, with checkpoints at turn boundaries.
//!
//! Unlike a KV cache, a state cannot be cut back to N tokens: it holds the whole history folded
//! into one value. So [`RecurrentSlots::truncate`] keeps the live state only when nothing is cut,
//! otherwise rolls back to the latest checkpoint at or before N, otherwise starts over, and
//! returns the length it really kept; callers feed the rest again.
//!
//! Every layer's state is a few flat f32 buffers whose sizes the layer kind decides
//! ([`StateShape`]): Mamba uses a rolling convolution window and an SSM state per head; a Gated
//! DeltaNet layer its convolution window and a key × value matrix per head. The buffers live
//! where the layers run them ([`Buf`]): host vectors for the CPU's scans, tensors on the
//! decoder's device for a GPU's.

use candle_core::{DType, Device, Tensor};

/// Sizes, in f32 values, of one layer's state buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateShape {
    /// The convolution window: the last `kernel - 1` inputs of every channel.
    pub conv: usize,
    /// The recurrent state proper.
    pub ssm: usize,
}

impl StateShape {
    pub fn bytes(&self) -> usize {
        (self.conv + self.ssm) * 4
    }
}

/// One state buffer, in the memory its layers' scans read.
#[derive(Debug, Clone)]
pub enum Buf {
    /// Host memory, written in place by the CPU's scans.
    Host(Vec<f32>),
    /// A flat tensor on the decoder's device. It is never written in place: each step replaces
    /// it with the step's result, so a checkpoint may share a live state's storage.
    Device(Tensor),
}

impl Buf {
    /// The host vector; an error for a device buffer (a mixer on the wrong path).
    pub fn host_mut(&mut self) -> candle_core::Result<&mut Vec<f32>> {
        match self {
            Buf::Host(v) => Ok(v),
            Buf::Device(_) => candle_core::bail!("a device-resident state reached a host scan"),
        }
    }

    /// The device tensor; an error for a host buffer.
    pub fn tensor(&self) -> candle_core::Result<&Tensor> {
        match self {
            Buf::Device(t) => Ok(t),
            Buf::Host(_) => candle_core::bail!("a host-resident state reached a device scan"),
        }
    }

    /// The values on the host.
    #[cfg(test)]
    pub fn to_vec(&self) -> candle_core::Result<Vec<f32>> {
        match self {
            Buf::Host(v) => Ok(v.clone()),
            Buf::Device(t) => t.flatten_all()?.to_vec1(),
        }
    }
}

/// One layer's state.
#[derive(Debug, Clone)]
pub struct LayerState {
    pub conv: Buf,
    pub ssm: Buf,
}

impl LayerState {
    fn zeros(s: &StateShape, device: Option<&Device>) -> candle_core::Result<Self> {
        let buf = |n: usize| -> candle_core::Result<Buf> {
            Ok(match device {
                None => Buf::Host(vec![0.0; n]),
                Some(d) => Buf::Device(Tensor::zeros(n, DType::F32, d)?),
            })
        };
        Ok(Self {
            conv: buf(s.conv)?,
            ssm: buf(s.ssm)?,
        })
    }
}

/// A copy of every layer's state after the first `len` tokens.
#[derive(Debug, Clone)]
struct Checkpoint {
    len: usize,
    layers: Vec<LayerState>,
}

/// Checkpoints kept per slot: the last two turn boundaries, so a chat can go on, edit or
/// regenerate its last answer, or go back one turn, without re-reading; each costs a whole state.
pub const CHECKPOINTS_PER_SLOT: usize = 2;

#[derive(Debug, Default)]
struct Slot {
    /// Tokens folded into `layers`.
    len: usize,
    /// Empty while the slot holds no memory.
    layers: Vec<LayerState>,
    checkpoints: Vec<Checkpoint>,
}

/// The recurrent state of every slot, one [`LayerState`] per recurrent layer.
#[derive(Debug)]
pub struct RecurrentSlots {
    shapes: Vec<StateShape>,
    /// Where states are made: `None` for host vectors, else tensors on this device.
    device: Option<Device>,
    slots: Vec<Slot>,
}

impl RecurrentSlots {
    /// Slots for recurrent layers of these shapes (in layer order), in host memory.
    pub fn new(shapes: Vec<StateShape>) -> Self {
        Self {
            shapes,
            device: None,
            slots: Vec::new(),
        }
    }

    /// The same with every state a tensor on `device`.
    pub fn on_device(shapes: Vec<StateShape>, device: &Device) -> Self {
        Self {
            device: Some(device.clone()),
            ..Self::new(shapes)
        }
    }

    /// Bytes of one sequence's state (every recurrent layer); a checkpoint takes as much.
    pub fn state_bytes(&self) -> usize {
        self.shapes.iter().map(StateShape::bytes).sum()
    }

    /// Bytes held now across every slot: live states and checkpoints.
    pub fn allocated_bytes(&self) -> usize {
        (0..self.slots.len()).map(|i| self.slot_bytes(i)).sum()
    }

    /// Bytes slot `slot` holds now: its live state and its checkpoints.
    pub fn slot_bytes(&self, slot: usize) -> usize {
        self.slots.get(slot).map_or(0, |s| {
            (usize::from(!s.layers.is_empty()) + s.checkpoints.len()) * self.state_bytes()
        })
    }

    /// Tokens folded into slot `slot`'s state.
    pub fn len(&self, slot: usize) -> usize {
        self.slots.get(slot).map_or(0, |s| s.len)
    }

    fn slot_mut(&mut self, slot: usize) -> &mut Slot {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, Slot::default);
        }
        &mut self.slots[slot]
    }

    /// Slot `slot`'s layer states to update (zeroed when the slot is fresh).
    pub fn layers_mut(&mut self, slot: usize) -> candle_core::Result<&mut [LayerState]> {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, Slot::default);
        }
        let s = &mut self.slots[slot];
        if s.layers.is_empty() {
            s.layers = self
                .shapes
                .iter()
                .map(|sh| LayerState::zeros(sh, self.device.as_ref()))
                .collect::<candle_core::Result<_>>()?;
            s.len = 0;
        }
        Ok(&mut s.layers)
    }

    /// Records that `t` more tokens were folded into slot `slot`'s state.
    pub fn advance(&mut self, slot: usize, t: usize) {
        self.slot_mut(slot).len += t;
    }

    /// Keeps `layers` as slot `slot`'s checkpoint after its first `len` tokens, replacing the
    /// oldest when the slot has its share.
    pub fn checkpoint(&mut self, slot: usize, len: usize, layers: Vec<LayerState>) {
        if layers.len() != self.shapes.len() {
            return;
        }
        let s = self.slot_mut(slot);
        s.checkpoints.retain(|c| c.len != len);
        while s.checkpoints.len() >= CHECKPOINTS_PER_SLOT {
            s.checkpoints.remove(0);
        }
        s.checkpoints.push(Checkpoint { len, layers });
    }

    /// Cuts slot `slot` back to at most `n` tokens and returns how many it really keeps: all
    /// of them when `n` is at least its length, else the latest checkpoint at or before `n`,
    /// else none (the state restarts from zero).
    pub fn truncate(&mut self, slot: usize, n: usize) -> usize {
        let Some(s) = self.slots.get_mut(slot) else {
            return 0;
        };
        if n >= s.len {
            return s.len;
        }
        s.checkpoints.retain(|c| c.len <= n);
        match s.checkpoints.last() {
            Some(c) if c.len > 0 => {
                if s.layers.len() == c.layers.len() {
                    for (live, saved) in s.layers.iter_mut().zip(&c.layers) {
                        restore(&mut live.conv, &saved.conv);
                        restore(&mut live.ssm, &saved.ssm);
                    }
                } else {
                    s.layers = c.layers.clone();
                }
                s.len = c.len;
            }
            _ => {
                // Host vectors are zeroed where they are; device states are dropped and made
                // again (zeroed) at their next use.
                for l in &mut s.layers {
                    for b in [&mut l.conv, &mut l.ssm] {
                        if let Buf::Host(v) = b {
                            v.fill(0.0);
                        }
                    }
                }
                if s.layers.iter().any(|l| matches!(l.conv, Buf::Device(_))) {
                    s.layers.clear();
                }
                s.len = 0;
            }
        }
        s.len
    }

    /// Empties slot `slot` and frees its state and checkpoints.
    pub fn release(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Slot::default();
        }
    }
}

/// `live` takes `saved`'s values: copied into a host vector, shared by a tensor.
fn restore(live: &mut Buf, saved: &Buf) {
    match (live, saved) {
        (Buf::Host(l), Buf::Host(s)) if l.len() == s.len() => l.copy_from_slice(s),
        (l, s) => *l = s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host slots, and the same slots as tensors on the CPU device.
    fn both() -> [RecurrentSlots; 2] {
        let shapes = vec![StateShape { conv: 2, ssm: 3 }; 2];
        [
            RecurrentSlots::new(shapes.clone()),
            RecurrentSlots::on_device(shapes, &Device::Cpu),
        ]
    }

    /// Folds `t` tokens into slot 0 by adding `v` to every value.
    fn feed(r: &mut RecurrentSlots, t: usize, v: f32) {
        for l in r.layers_mut(0).unwrap() {
            for b in [&mut l.conv, &mut l.ssm] {
                match b {
                    Buf::Host(x) => x.iter_mut().for_each(|x| *x += v),
                    Buf::Device(x) => *x = (&*x + v as f64).unwrap(),
                }
            }
        }
        r.advance(0, t);
    }

    fn values(r: &mut RecurrentSlots, layer: usize) -> (Vec<f32>, Vec<f32>) {
        let l = &r.layers_mut(0).unwrap()[layer];
        (l.conv.to_vec().unwrap(), l.ssm.to_vec().unwrap())
    }

    #[test]
    fn truncation_keeps_all_or_a_checkpoint_or_nothing() {
        for mut r in both() {
            let on = r.device.is_some();
            assert_eq!(r.state_bytes(), 2 * 5 * 4);
            feed(&mut r, 5, 1.0);
            let snap = r.layers_mut(0).unwrap().to_vec();
            r.checkpoint(0, 5, snap);
            feed(&mut r, 4, 2.0);
            assert_eq!(r.len(0), 9);
            assert_eq!(r.allocated_bytes(), 2 * r.state_bytes());
            // Nothing cut: the live state stays.
            assert_eq!(r.truncate(0, 12), 9);
            assert_eq!(values(&mut r, 0).1, [3.0; 3], "device {on}");
            // Cut inside: back to the checkpoint, which is kept for the next rollback.
            assert_eq!(r.truncate(0, 7), 5);
            assert_eq!(values(&mut r, 1).0, [1.0; 2], "device {on}");
            feed(&mut r, 1, 5.0);
            assert_eq!(r.truncate(0, 5), 5);
            assert_eq!(values(&mut r, 1).1, [1.0; 3], "device {on}");
            // Cut before every checkpoint: from scratch.
            assert_eq!(r.truncate(0, 4), 0);
            assert_eq!(values(&mut r, 0).1, [0.0; 3], "device {on}");
            assert_eq!(r.len(0), 0);
            r.release(0);
            assert_eq!(r.allocated_bytes(), 0);
        }
    }

    #[test]
    fn a_slot_keeps_its_latest_checkpoints_only() {
        for mut r in both() {
            for k in 1..=3 {
                feed(&mut r, 2, 1.0);
                let snap = r.layers_mut(0).unwrap().to_vec();
                r.checkpoint(0, 2 * k, snap);
            }
            assert_eq!(
                r.allocated_bytes(),
                (CHECKPOINTS_PER_SLOT + 1) * r.state_bytes()
            );
            assert_eq!(r.truncate(0, 5), 4, "the latest two are kept");
            assert_eq!(r.truncate(0, 3), 0, "older checkpoints were dropped");
        }
    }

    #[test]
    fn device_states_are_made_on_the_slots_device() {
        let [_, mut r] = both();
        let l = &r.layers_mut(0).unwrap()[0];
        assert!(l.conv.tensor().unwrap().device().is_cpu());
        assert_eq!(l.ssm.tensor().unwrap().elem_count(), 3);
        let mut host = Buf::Host(vec![0.0]);
        assert!(host.tensor().is_err() && host.host_mut().is_ok());
    }
}
