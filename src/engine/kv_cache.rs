//! Per-layer key/value cache: one buffer per tensor, grown by doubling up to the context length,
//! written in place with `slice_set` and truncatable to any prefix (for prompt-prefix reuse).

use candle_core::{DType, Result, Tensor};

/// Smallest allocation, in positions; avoids regrowing for short chats.
const MIN_CAPACITY: usize = 256;

#[derive(Debug)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    capacity: usize,
    max: usize,
}

impl KvCache {
    /// An empty cache that may hold up to `max` positions.
    pub fn new(max: usize) -> Self {
        Self {
            k: None,
            v: None,
            len: 0,
            capacity: 0,
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Forgets every position from `n` on; the memory is kept for reuse.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// Forgets every position and frees the buffers.
    pub fn release(&mut self) {
        self.k = None;
        self.v = None;
        self.len = 0;
        self.capacity = 0;
    }

    /// Caps how far the buffers may grow (a sequence's reservation): growth by doubling then
    /// never allocates past what the engine's KV budget granted.
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(self.len);
    }

    /// Bytes the K and V buffers hold (allocated, used or not).
    pub fn bytes(&self) -> usize {
        [&self.k, &self.v]
            .iter()
            .filter_map(|t| t.as_ref())
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Positions the buffers can hold without growing.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn grow(&mut self, need: usize, like: &Tensor) -> Result<()> {
        if need > self.max {
            candle_core::bail!(
                "KV cache overflow: {need} positions requested, context is {}",
                self.max
            );
        }
        let new_cap = need.max(self.capacity * 2).max(MIN_CAPACITY).min(self.max);
        let (b, h, _, d) = like.dims4()?;
        let alloc = |old: &Option<Tensor>| -> Result<Tensor> {
            let t = Tensor::zeros((b, h, new_cap, d), DType::F32, like.device())?;
            if let (Some(old), true) = (old, self.len > 0) {
                t.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            Ok(t)
        };
        let k = alloc(&self.k)?;
        let v = alloc(&self.v)?;
        self.k = Some(k);
        self.v = Some(v);
        self.capacity = new_cap;
        Ok(())
    }

    /// Views of every position held, (1, kv_heads, len, head_dim), for a layer that reads this
    /// cache without writing to it (Gemma 4's shared-KV layers).
    pub fn view(&self) -> Result<(Tensor, Tensor)> {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) if self.len > 0 => {
                Ok((k.narrow(2, 0, self.len)?, v.narrow(2, 0, self.len)?))
            }
            _ => candle_core::bail!("a shared KV cache was read before its layer wrote it"),
        }
    }

    /// Appends `k`, `v` of shape (1, kv_heads, seq, head_dim) and returns views of the whole
    /// cache (1, kv_heads, len, head_dim).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let seq = k.dim(2)?;
        let need = self.len + seq;
        if need > self.capacity {
            self.grow(need, k)?;
        }
        let (kc, vc) = match (&self.k, &self.v) {
            (Some(k), Some(v)) => (k, v),
            _ => candle_core::bail!("KV cache buffers missing after allocation"),
        };
        kc.slice_set(&k.contiguous()?, 2, self.len)?;
        vc.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = need;
        Ok((kc.narrow(2, 0, self.len)?, vc.narrow(2, 0, self.len)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(vals: &[f32], seq: usize) -> Tensor {
        Tensor::from_slice(vals, (1, 1, seq, 1), &Device::Cpu).unwrap()
    }

    #[test]
    fn append_grow_truncate() {
        let mut c = KvCache::new(1000);
        let first: Vec<f32> = (0..300).map(|i| i as f32).collect();
        c.append(&t(&first, 300), &t(&first, 300)).unwrap();
        assert_eq!(c.len(), 300);
        let (k, _) = c.append(&t(&[1000.0], 1), &t(&[1000.0], 1)).unwrap();
        let k: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(k.len(), 301);
        assert_eq!(k[299], 299.0);
        assert_eq!(k[300], 1000.0);
        c.truncate(10);
        let (k, v) = c.append(&t(&[7.0], 1), &t(&[8.0], 1)).unwrap();
        let k: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
        let v: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(k.len(), 11);
        assert_eq!(k[9], 9.0);
        assert_eq!(k[10], 7.0);
        assert_eq!(v[10], 8.0);
    }

    #[test]
    fn refuses_past_max() {
        let mut c = KvCache::new(4);
        let x = t(&[0.0; 5], 5);
        assert!(c.append(&x, &x).is_err());
    }
}
