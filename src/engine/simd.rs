//! Which SIMD variant Influence's own matmul kernels (`q8.rs`, `kq.rs`, `legacy.rs`) run, chosen
//! once at run time from the CPU's features.
//!
//! `INFLUENCE_KERNEL` overrides the choice for every own kernel: `0` (or `candle`) turns them off
//! and candle's kernels run instead, `avx2` forces the AVX2 variant on an AVX-512 machine, and
//! `avx512` asks for the AVX-512 one (ignored where the CPU lacks it). The older
//! `INFLUENCE_Q8_KERNEL` is still read when `INFLUENCE_KERNEL` is unset. Other architectures
//! (aarch64 included) always run candle's kernels.

/// The SIMD variants of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 F/BW/VL + VNNI: 64 bytes at a time, `vpdpbusd` / `vpdpwssd`.
    Avx512,
    /// AVX2 + FMA + F16C: 32 bytes at a time, `vpmaddubsw` / `vpmaddwd`.
    Avx2,
}

impl Kernel {
    /// How the variant is named in logs, warnings and `INFLUENCE_KERNEL`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "AVX-512 VNNI",
            Kernel::Avx2 => "AVX2",
        }
    }
}

/// The variant this CPU runs, if any (see the module docs for the override).
pub fn kernel() -> Option<Kernel> {
    use std::sync::OnceLock;
    static K: OnceLock<Option<Kernel>> = OnceLock::new();
    *K.get_or_init(|| {
        let choice = std::env::var("INFLUENCE_KERNEL")
            .or_else(|_| std::env::var("INFLUENCE_Q8_KERNEL"))
            .unwrap_or_default();
        choose(&choice, supported(Kernel::Avx512), supported(Kernel::Avx2))
    })
}

/// The variant for an override value and the CPU's features.
fn choose(choice: &str, avx512: bool, avx2: bool) -> Option<Kernel> {
    match choice.trim().to_ascii_lowercase().as_str() {
        "0" | "off" | "candle" => None,
        "avx2" if avx2 => Some(Kernel::Avx2),
        _ if avx512 => Some(Kernel::Avx512),
        _ if avx2 => Some(Kernel::Avx2),
        _ => None,
    }
}

/// Whether this CPU has the instructions of `k`.
pub fn supported(k: Kernel) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match k {
            Kernel::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            Kernel::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = k;
        false
    }
}

/// Every variant, for tests: those this CPU runs, and the reason for each it cannot.
#[cfg(test)]
pub fn variants_for_tests() -> Vec<Kernel> {
    [Kernel::Avx2, Kernel::Avx512]
        .into_iter()
        .filter(|&k| {
            let ok = supported(k);
            if !ok {
                eprintln!(
                    "not run: the {} variant (this CPU lacks its instructions)",
                    k.name()
                );
            }
            ok
        })
        .collect()
}

/// The largest |x| of `xs` (0 for none; NaNs ignored, as `f32::max` does), in 8 independent
/// lanes so the compiler vectorizes it: the same value as a left-to-right fold, since max
/// does not depend on order.
pub fn abs_max(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    // Fixed-size chunks, so the 8 lanes become one vector (over slices the compiler vectorized
    // across chunks, with gathers).
    let (chunks, rest) = xs.as_chunks::<8>();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    let tail = rest.iter().fold(0f32, |a, v| a.max(v.abs()));
    lanes.iter().fold(tail, |a, &l| a.max(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_values() {
        assert_eq!(choose("", true, true), Some(Kernel::Avx512));
        assert_eq!(choose("avx2", true, true), Some(Kernel::Avx2));
        assert_eq!(choose("AVX2", true, true), Some(Kernel::Avx2));
        assert_eq!(choose("0", true, true), None);
        assert_eq!(choose("candle", true, true), None);
        assert_eq!(choose("avx512", false, true), Some(Kernel::Avx2));
        assert_eq!(choose("", false, true), Some(Kernel::Avx2));
        assert_eq!(choose("", false, false), None);
        assert_eq!(choose("avx2", false, false), None);
    }

    #[test]
    fn abs_max_is_the_fold_s_value() {
        for n in [0usize, 1, 7, 8, 9, 32, 77] {
            let xs: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.5) * 0.3).collect();
            let fold = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert_eq!(abs_max(&xs).to_bits(), fold.to_bits(), "n = {n}");
        }
        assert_eq!(abs_max(&[f32::NAN, -2.0, 1.0]), 2.0);
    }
}
