//! What both kinds of recurrent layer (Mamba's in `ssm`, Gated DeltaNet's in `delta_net`)
//! share: a sequence of the batch as they see it, and the host-side helpers their scans use
//! (the state lives in host memory, the CPU decoder's device).

use candle_core::Tensor;

use super::super::EngineError;
use super::Loader;

/// One sequence of a batch as the recurrent layers see it.
#[derive(Debug, Clone, Copy)]
pub struct SsmSeq {
    pub slot: usize,
    /// First row in the batch, and rows.
    pub offset: usize,
    pub t: usize,
    /// Keep a checkpoint of the state before this chunk's last token (the end of a prompt: a
    /// regenerated answer or the next turn resumes there).
    pub checkpoint: bool,
}

/// A small tensor as a host vector of exactly `want` values.
pub fn host_vec(l: &mut Loader, name: &str, want: usize) -> Result<Vec<f32>, EngineError> {
    let v = l
        .dense(name)?
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    if v.len() != want {
        return Err(l.corrupt(&format!(
            "tensor `{name}` has {} values, the layer's shape needs {want}",
            v.len()
        )));
    }
    Ok(v)
}

/// `log(1 + e^x)`, linear above 20 (ggml_compute_softplus_f32).
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        (1.0 + x.exp()).ln()
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `x` (1, rows, n) as a host vector.
pub fn host(x: &Tensor) -> candle_core::Result<Vec<f32>> {
    x.flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()
}
