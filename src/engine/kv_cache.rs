//! Per-layer key/value cache: one buffer per tensor, grown by doubling up to the context length,
//! written in place with `slice_set` and truncatable to any prefix (for prompt-prefix reuse).
//!
//! A sliding-window layer's cache keeps only what its window can still see: when its buffer is
//! full, the positions no later query attends to are dropped and the rest moved to the front,
//! so it stays near twice the window (or the window plus a prompt chunk) whatever the context.
//! Its views then start at [`KvCache::start`], not at position 0.
//!
//! Values are held in f32 (the default: what every path computes in) or f16 (`engine.kv_cache =
//! "f16"`, llama.cpp's and Ollama's default type: half the memory, each value rounded once when
//! it is stored). Views come back in the held type; readers widen f16 exactly to f32.

use candle_core::{DType, Result, Tensor};

pub use crate::config::kv::KvType;

/// The candle type of a cache holding `kind`.
fn dtype_of(kind: KvType) -> DType {
    match kind {
        KvType::F32 => DType::F32,
        KvType::F16 => DType::F16,
    }
}

/// Smallest allocation, in positions; avoids regrowing for short chats.
const MIN_CAPACITY: usize = 256;

/// The most positions a windowed cache of `window` holds when prompts come in chunks of at
/// most `chunk`: the window and one chunk, or twice the window, or the smallest allocation.
pub fn window_rows(window: usize, chunk: usize) -> usize {
    // Saturating: the window comes from a file's header.
    (window.max(1) - 1)
        .saturating_add(chunk)
        .max(window.saturating_mul(2))
        .max(MIN_CAPACITY)
}

#[derive(Debug)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    /// Positions seen: the next one appended is position `len`.
    len: usize,
    /// The first position the buffers hold (row 0); above 0 only with a window.
    start: usize,
    capacity: usize,
    max: usize,
    /// A sliding-window layer's window: a query at position `p` sees `p + 1 - window..=p`.
    window: Option<usize>,
    /// What the buffers hold.
    dtype: DType,
}

impl KvCache {
    /// An empty cache that may hold up to `max` positions.
    pub fn new(max: usize) -> Self {
        Self {
            k: None,
            v: None,
            len: 0,
            start: 0,
            capacity: 0,
            max,
            window: None,
            dtype: DType::F32,
        }
    }

    /// The same cache holding `kind` values.
    pub fn holding(mut self, kind: KvType) -> Self {
        self.hold(kind);
        self
    }

    /// Holds `kind` values from now on; what the buffers held is forgotten when that changes.
    pub fn hold(&mut self, kind: KvType) {
        if dtype_of(kind) != self.dtype {
            self.release();
            self.dtype = dtype_of(kind);
        }
    }

    /// An empty cache of a sliding-window layer: it holds only the positions a query within
    /// `window` of the newest can see.
    pub fn windowed(max: usize, window: usize) -> Self {
        Self {
            window: Some(window.max(1)),
            ..Self::new(max)
        }
    }

    /// Positions seen (held or dropped by the window).
    pub fn len(&self) -> usize {
        self.len
    }

    /// The first position the views hold.
    #[cfg(test)]
    pub fn start(&self) -> usize {
        self.start
    }

    /// The longest prefix of the first `n` positions this cache can be cut back to and still
    /// serve the next query: all `n`, unless the window already dropped positions that the
    /// query at `n` would see (then nothing).
    pub fn keepable(&self, n: usize) -> usize {
        // Nothing to cut (a hybrid's recurrent layers keep empty caches).
        if n >= self.len {
            return n;
        }
        match self.window {
            Some(w) if self.start > 0 && (n + 1).saturating_sub(w) < self.start => 0,
            _ => n,
        }
    }

    /// Forgets every position from `n` on; the memory is kept for reuse. `n` should be
    /// [`KvCache::keepable`]: a cut the window cannot serve forgets everything.
    pub fn truncate(&mut self, n: usize) {
        let n = self.keepable(n);
        self.len = self.len.min(n);
        if self.len == 0 {
            self.start = 0;
        }
    }

    /// Forgets every position and frees the buffers.
    pub fn release(&mut self) {
        self.k = None;
        self.v = None;
        self.len = 0;
        self.start = 0;
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

    /// Makes room for `rows` buffer rows (positions from `start`).
    fn grow(&mut self, rows: usize, like: &Tensor) -> Result<()> {
        let held = self.len - self.start;
        let limit = self.max - self.start;
        // A windowed cache slides instead of doubling: room for twice its window, or what one
        // chunk needs beyond it.
        let grown = match self.window {
            Some(w) => w.saturating_mul(2),
            None => self.capacity * 2,
        };
        let new_cap = rows.max(grown).max(MIN_CAPACITY).min(limit);
        let (b, h, _, d) = like.dims4()?;
        let alloc = |old: &Option<Tensor>| -> Result<Tensor> {
            let t = zeroed((b, h, new_cap, d), self.dtype, like.device())?;
            if let (Some(old), true) = (old, held > 0) {
                t.slice_set(&old.narrow(2, 0, held)?.contiguous()?, 2, 0)?;
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

    /// Before `seq` new positions: drops, from a windowed cache whose buffer they would
    /// overflow, the positions none of their queries sees, moving the rest to row 0.
    fn slide(&mut self, seq: usize) -> Result<()> {
        let Some(w) = self.window else {
            return Ok(());
        };
        // The first new query, at position `len`, sees `len + 1 - w` on.
        let keep_from = (self.len + 1).saturating_sub(w).max(self.start);
        if self.len + seq - self.start <= self.capacity || keep_from == self.start {
            return Ok(());
        }
        let (from, kept) = (keep_from - self.start, self.len - keep_from);
        for t in [&self.k, &self.v].into_iter().flatten() {
            if kept > 0 {
                t.slice_set(&t.narrow(2, from, kept)?.force_contiguous()?, 2, 0)?;
            }
        }
        self.start = keep_from;
        Ok(())
    }

    /// Views of every position held, (1, kv_heads, len − start, head_dim), for a layer that
    /// reads this cache without writing to it (Gemma 4's shared-KV layers).
    pub fn view(&self) -> Result<(Tensor, Tensor)> {
        let held = self.len - self.start;
        match (&self.k, &self.v) {
            (Some(k), Some(v)) if held > 0 => Ok((k.narrow(2, 0, held)?, v.narrow(2, 0, held)?)),
            _ => candle_core::bail!("a shared KV cache was read before its layer wrote it"),
        }
    }

    /// Appends `k`, `v` of shape (1, kv_heads, seq, head_dim) and returns views of the
    /// positions held, `start..len` (1, kv_heads, len − start, head_dim).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let seq = k.dim(2)?;
        let need = self.len + seq;
        if need > self.max {
            candle_core::bail!(
                "KV cache overflow: {need} positions requested, context is {}",
                self.max
            );
        }
        self.slide(seq)?;
        let rows = need - self.start;
        if rows > self.capacity {
            self.grow(rows, k)?;
        }
        let (kc, vc) = match (&self.k, &self.v) {
            (Some(k), Some(v)) => (k, v),
            _ => candle_core::bail!("KV cache buffers missing after allocation"),
        };
        let at = self.len - self.start;
        let held = |x: &Tensor| x.to_dtype(self.dtype)?.contiguous();
        kc.slice_set(&held(k)?, 2, at)?;
        vc.slice_set(&held(v)?, 2, at)?;
        self.len = need;
        Ok((kc.narrow(2, 0, rows)?, vc.narrow(2, 0, rows)?))
    }
}

/// A KV view in f32, for the paths that read f32: an f16 cache's values widened (exactly). On
/// the host each head's positions (contiguous in the cache's views) are widened eight at a time
/// with F16C; candle's cast widens value by value, which made f16 decode past 512 positions
/// (candle's attention path) 3.5x slower than f32 on SmolLM2.
pub fn widened(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 => Ok(x.clone()),
        DType::F16 if x.device().is_cpu() => match widen_heads(x)? {
            Some(t) => Ok(t),
            None => x.to_dtype(DType::F32),
        },
        _ => x.to_dtype(DType::F32),
    }
}

/// [`widened`] for a host f16 view whose heads each hold their positions contiguously; `None`
/// for any other layout.
fn widen_heads(x: &Tensor) -> Result<Option<Tensor>> {
    use candle_core::{CpuStorage, Storage};
    use half::slice::HalfFloatSliceExt;
    let (b, h, n, d) = x.dims4()?;
    let st = x.layout().stride().to_vec();
    if b != 1 || st[3] != 1 || st[2] != d {
        return Ok(None);
    }
    let (guard, layout) = x.storage_and_layout();
    let Storage::Cpu(CpuStorage::F16(data)) = &*guard else {
        return Ok(None);
    };
    let start = layout.start_offset();
    let mut out = vec![0f32; h * n * d];
    for (g, dst) in out.chunks_exact_mut(n * d).enumerate() {
        let Some(src) = data.get(start + g * st[1]..start + g * st[1] + n * d) else {
            return Ok(None);
        };
        src.convert_to_f32_slice(dst);
    }
    drop(guard);
    Tensor::from_vec(out, (1, h, n, d), x.device()).map(Some)
}

/// A zero buffer whose untouched pages cost no memory on the host: candle fills an f16 zero
/// tensor value by value (every page resident at once), where zeroed u16 memory comes from the
/// allocator's zero pages like an f32 one.
fn zeroed(
    shape: (usize, usize, usize, usize),
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    if dtype == DType::F16 && device.is_cpu() {
        use half::vec::HalfBitsVecExt;
        let (b, h, n, d) = shape;
        let bits = vec![0u16; b * h * n * d];
        return Tensor::from_vec(bits.reinterpret_into::<half::f16>(), shape, device);
    }
    Tensor::zeros(shape, dtype, device)
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

    /// A windowed cache's views end with the same positions a full cache's do, and its
    /// buffer stops growing at twice the window (or the smallest allocation).
    #[test]
    fn a_windowed_cache_keeps_the_window_s_positions() {
        let w = 8;
        let (mut win, mut full) = (KvCache::windowed(1000, w), KvCache::new(1000));
        let mut p = 0;
        // Single positions, then chunks that straddle a slide.
        for seq in std::iter::repeat_n(1, 300).chain([5, 9, 3, 40, 1, 1]) {
            let vals: Vec<f32> = (p..p + seq).map(|i| i as f32).collect();
            let (kw, vw) = win.append(&t(&vals, seq), &t(&vals, seq)).unwrap();
            let (kf, _) = full.append(&t(&vals, seq), &t(&vals, seq)).unwrap();
            p += seq;
            let kw: Vec<f32> = kw.flatten_all().unwrap().to_vec1().unwrap();
            let vw: Vec<f32> = vw.flatten_all().unwrap().to_vec1().unwrap();
            let kf: Vec<f32> = kf.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(win.len(), p);
            assert_eq!(kw.len(), p - win.start());
            // Every position the chunk's first query sees is held, in order.
            assert!(win.start() + w <= p - seq + 1 || win.start() == 0);
            assert_eq!(kw, kf[win.start()..]);
            assert_eq!(vw, kw);
            assert!(
                win.capacity() <= MIN_CAPACITY.max(w - 1 + 40),
                "{}",
                win.capacity()
            );
        }
        assert!(win.start() > 0);
        assert!(win.bytes() < full.bytes());
    }

    #[test]
    fn a_windowed_cache_cuts_back_only_where_its_window_can_serve() {
        let w = 8;
        let mut c = KvCache::windowed(1000, w);
        for i in 0..300 {
            c.append(&t(&[i as f32], 1), &t(&[i as f32], 1)).unwrap();
        }
        let start = c.start();
        assert!(start > 0);
        // The query at `n` sees `n + 1 - w..n`: held from `start + w - 1` on.
        assert_eq!(c.keepable(299), 299);
        assert_eq!(c.keepable(start + w - 1), start + w - 1);
        assert_eq!(c.keepable(start + w - 2), 0);
        assert_eq!(c.keepable(5000), 5000);
        // An empty cache never holds a cut back.
        assert_eq!(KvCache::windowed(1000, w).keepable(40), 40);
        c.truncate(start + w);
        assert_eq!(c.len(), start + w);
        let (k, _) = c.append(&t(&[-1.0], 1), &t(&[-1.0], 1)).unwrap();
        let k: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(k.last(), Some(&-1.0));
        assert_eq!(k[k.len() - 2], (start + w - 1) as f32);
        c.truncate(3);
        assert_eq!((c.len(), c.start()), (0, 0));
        // A full cache cuts anywhere.
        let mut f = KvCache::new(1000);
        f.append(&t(&[0.0; 300], 300), &t(&[0.0; 300], 300))
            .unwrap();
        assert_eq!(f.keepable(3), 3);
    }

    /// An f16 cache holds each value rounded once, in half the bytes, and reads back what it
    /// stored; switching the type forgets what was held.
    #[test]
    fn an_f16_cache_holds_rounded_values_in_half_the_bytes() {
        let vals: Vec<f32> = (0..300).map(|i| 1.0 + i as f32 / 3.0).collect();
        let (mut full, mut half) = (KvCache::new(1000), KvCache::new(1000).holding(KvType::F16));
        full.append(&t(&vals, 300), &t(&vals, 300)).unwrap();
        let (k, v) = half.append(&t(&vals, 300), &t(&vals, 300)).unwrap();
        assert_eq!((k.dtype(), v.dtype()), (DType::F16, DType::F16));
        assert_eq!(half.bytes() * 2, full.bytes());
        let (k, _) = half.append(&t(&[0.1], 1), &t(&[0.2], 1)).unwrap();
        let k: Vec<f32> = k
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let rounded = |x: f32| half::f16::from_f32(x).to_f32();
        let want: Vec<f32> = vals.iter().chain(&[0.1]).map(|&x| rounded(x)).collect();
        assert_eq!(k, want);
        assert_ne!(k[1], vals[1], "1 + 1/3 is not an f16 value");
        half.hold(KvType::F32);
        assert_eq!((half.len(), half.bytes()), (0, 0));
    }

    /// The fast widening gives candle's cast's values, for a narrowed view of a cache buffer.
    #[test]
    fn widening_a_view_head_by_head_matches_candle_s_cast() {
        let vals: Vec<f32> = (0..3 * 40 * 5)
            .map(|i| (i as f32 * 0.37).sin() * 9.0)
            .collect();
        let buf = Tensor::from_vec(vals, (1, 3, 40, 5), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let view = buf.narrow(2, 0, 27).unwrap();
        assert!(widen_heads(&view).unwrap().is_some());
        let ours: Vec<f32> = widened(&view)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let cast = view.to_dtype(DType::F32).unwrap();
        let theirs: Vec<f32> = cast.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(ours, theirs);
        // Another layout takes candle's cast.
        let t = buf.transpose(2, 3).unwrap();
        assert!(widen_heads(&t).unwrap().is_none());
        assert_eq!(widened(&t).unwrap().dims(), t.dims());
    }

    #[test]
    fn refuses_past_max() {
        let mut c = KvCache::new(4);
        let x = t(&[0.0; 5], 5);
        assert!(c.append(&x, &x).is_err());
    }
}
