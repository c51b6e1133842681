//! Small decoder ops tuned for the token-by-token path.

use candle_core::{Result, Tensor};

/// Below this many values a softmax runs on the calling thread.
const SERIAL_SOFTMAX_MAX: usize = 1 << 16;

/// Softmax over the last dimension, bit-identical to `candle_nn::ops::softmax_last_dim`.
///
/// candle-nn hands every softmax to rayon's pool, which costs a thread wake-up (a futex round
/// trip) per call: 30 per generated token on a 30-layer model, each far longer than the
/// softmax itself. Small inputs run here with candle's own reductions (max, sum), exp and
/// divide, so outputs do not change; large ones (prompt chunks) still go to candle-nn.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    use candle_core::cpu::kernels::VecOps;
    if x.elem_count() >= SERIAL_SOFTMAX_MAX || !x.device().is_cpu() {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let d = x.dim(candle_core::D::Minus1)?;
    let mut data = x.flatten_all()?.to_vec1::<f32>()?;
    for row in data.chunks_exact_mut(d) {
        let mut max = f32::NEG_INFINITY;
        // SAFETY: `row` holds `d` values, and `max` / `sum` are valid places for the results.
        unsafe { f32::vec_reduce_max(row.as_ptr(), &mut max, d) };
        for v in row.iter_mut() {
            *v = (*v - max).exp();
        }
        let mut sum = 0f32;
        // SAFETY: as above.
        unsafe { f32::vec_reduce_sum(row.as_ptr(), &mut sum, d) };
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
    Tensor::from_vec(data, x.shape(), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn softmax_matches_candle_nn_exactly() {
        let x = Tensor::from_vec(
            (0..4 * 37)
                .map(|i| (i as f32 * 0.91).cos() * 7.0)
                .collect::<Vec<_>>(),
            (2, 2, 37),
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
