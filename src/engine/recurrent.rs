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
//! DeltaNet layer would use its convolution window and a key × value matrix per head.
//! The buffers live in host memory, which is the device memory of the CPU decoder that runs
//! these layers.

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

/// One layer's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerState {
    pub conv: Vec<f32>,
    pub ssm: Vec<f32>,
}

impl LayerState {
    fn zeros(s: &StateShape) -> Self {
        Self {
            conv: vec![0.0; s.conv],
            ssm: vec![0.0; s.ssm],
        }
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
    slots: Vec<Slot>,
}

impl RecurrentSlots {
    /// Slots for recurrent layers of these shapes (in layer order).
    pub fn new(shapes: Vec<StateShape>) -> Self {
        Self {
            shapes,
            slots: Vec::new(),
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

    /// Slot `slot`'s layer states to update in place (zeroed when the slot is fresh).
    pub fn layers_mut(&mut self, slot: usize) -> &mut [LayerState] {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, Slot::default);
        }
        let s = &mut self.slots[slot];
        if s.layers.is_empty() {
            s.layers = self.shapes.iter().map(LayerState::zeros).collect();
            s.len = 0;
        }
        &mut s.layers
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
                        live.conv.copy_from_slice(&saved.conv);
                        live.ssm.copy_from_slice(&saved.ssm);
                    }
                } else {
                    s.layers = c.layers.clone();
                }
                s.len = c.len;
            }
            _ => {
                for l in &mut s.layers {
                    l.conv.fill(0.0);
                    l.ssm.fill(0.0);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn slots() -> RecurrentSlots {
        RecurrentSlots::new(vec![StateShape { conv: 2, ssm: 3 }; 2])
    }

    /// Folds `t` tokens into slot 0 by adding `v` to every value.
    fn feed(r: &mut RecurrentSlots, t: usize, v: f32) {
        for l in r.layers_mut(0) {
            l.conv.iter_mut().for_each(|x| *x += v);
            l.ssm.iter_mut().for_each(|x| *x += v);
        }
        r.advance(0, t);
    }

    #[test]
    fn truncation_keeps_all_or_a_checkpoint_or_nothing() {
        let mut r = slots();
        assert_eq!(r.state_bytes(), 2 * 5 * 4);
        feed(&mut r, 5, 1.0);
        let snap = r.layers_mut(0).to_vec();
        r.checkpoint(0, 5, snap);
        feed(&mut r, 4, 2.0);
        assert_eq!(r.len(0), 9);
        assert_eq!(r.allocated_bytes(), 2 * r.state_bytes());
        // Nothing cut: the live state stays.
        assert_eq!(r.truncate(0, 12), 9);
        assert_eq!(r.layers_mut(0)[0].ssm, [3.0; 3]);
        // Cut inside: back to the checkpoint, which is kept for the next rollback.
        assert_eq!(r.truncate(0, 7), 5);
        assert_eq!(r.layers_mut(0)[1].conv, [1.0; 2]);
        feed(&mut r, 1, 5.0);
        assert_eq!(r.truncate(0, 5), 5);
        assert_eq!(r.layers_mut(0)[1].ssm, [1.0; 3]);
        // Cut before every checkpoint: from scratch.
        assert_eq!(r.truncate(0, 4), 0);
        assert_eq!(r.layers_mut(0)[0].ssm, [0.0; 3]);
        r.release(0);
        assert_eq!(r.allocated_bytes(), 0);
    }

    #[test]
    fn a_slot_keeps_its_latest_checkpoints_only() {
        let mut r = slots();
        for k in 1..=3 {
            feed(&mut r, 2, 1.0);
            let snap = r.layers_mut(0).to_vec();
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
