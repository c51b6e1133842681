//! `e^x` for slices of f32, eight at a time, with the same bits as the C library's `expf`.
//!
//! The SwiGLU gate (`silu`) and the softmax call `f32::exp` once per value: ~6 million calls
//! per 128-token prompt on SmolLM2-135M, 2-3 % of its time, one value per call. glibc's `expf`
//! (since 2.28, from Arm's optimized routines) is a fixed sequence of double-precision
//! operations: scale by N/ln 2 with a fused multiply-add onto a rounding shift, a 32-entry
//! table of 2^(i/32), a cubic, one multiply, one rounding to f32. Done on 8 lanes with the same
//! constants and the same fused operations, every result is the one `expf` returns, so the
//! ops that use this stay bit-identical to candle's (which calls `f32::exp`).
//!
//! That holds only where the C library computes exactly that sequence. The first call checks
//! the vector path against `f32::exp` on a spread of inputs (every exponent, rounding-sensitive
//! mantissas, both signs); if any differs — another C library, another version — every call
//! takes `f32::exp` instead. Values outside the main range (|x| ≥ ~88, infinities, NaN) take
//! `f32::exp` per value too.

/// `xs[i] = e^xs[i]` for every value.
pub fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut rest = xs;
        match vector() {
            Some(Vector::Avx512) => {
                let (chunks, tail) = rest.as_chunks_mut::<8>();
                for c in chunks {
                    // SAFETY: `vector` found the CPU's AVX-512F.
                    unsafe { avx512::exp8(c) };
                }
                rest = tail;
            }
            Some(Vector::Avx2) => {
                let (chunks, tail) = rest.as_chunks_mut::<8>();
                for c in chunks {
                    // SAFETY: `vector` found the CPU's AVX2 and FMA.
                    unsafe { avx2::exp8(c) };
                }
                rest = tail;
            }
            None => {}
        }
        for v in rest {
            *v = v.exp();
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for v in xs {
        *v = v.exp();
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vector {
    Avx512,
    Avx2,
}

/// The vector path this CPU and C library run, if any (checked once).
#[cfg(target_arch = "x86_64")]
fn vector() -> Option<Vector> {
    use std::sync::OnceLock;
    static V: OnceLock<Option<Vector>> = OnceLock::new();
    *V.get_or_init(|| {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = avx2 && is_x86_feature_detected!("avx512f");
        [(avx512, Vector::Avx512), (avx2, Vector::Avx2)]
            .into_iter()
            .find(|&(has, v)| has && agrees(v))
            .map(|(_, v)| v)
    })
}

/// Inputs the check runs: every float exponent of the main range with several mantissas
/// each (near halfway cases of the table index and of the final rounding among them), both
/// signs, and values next to the range's edges.
#[cfg(target_arch = "x86_64")]
fn probes() -> Vec<f32> {
    let mut xs = Vec::new();
    for exp_bits in 0u32..=0x85 {
        for m in [
            0u32, 1, 0x2a_aaab, 0x40_0000, 0x55_5555, 0x7f_ffff, 0x12_3457, 0x6d_cba9,
        ] {
            let v = f32::from_bits((exp_bits << 23) | m);
            xs.extend([v, -v]);
        }
    }
    let mut x = 0x9e37_79b9u32;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        xs.push((x as f32 / u32::MAX as f32 - 0.5) * 200.0);
    }
    xs.extend([88.0, 88.7, -87.9, -88.0, -103.0, -104.0, 0.0, -0.0]);
    while !xs.len().is_multiple_of(8) {
        xs.push(1.0);
    }
    xs
}

/// Whether `v` gives `f32::exp`'s bits on every probe.
#[cfg(target_arch = "x86_64")]
fn agrees(v: Vector) -> bool {
    let xs = probes();
    let mut ys = xs.clone();
    let (chunks, _) = ys.as_chunks_mut::<8>();
    for c in chunks {
        // SAFETY: the caller checked the CPU's features for `v`.
        unsafe {
            match v {
                Vector::Avx512 => avx512::exp8(c),
                Vector::Avx2 => avx2::exp8(c),
            }
        }
    }
    xs.iter()
        .zip(&ys)
        .all(|(x, y)| x.exp().to_bits() == y.to_bits())
}

/// glibc's `__exp2f_data`: 2^(i/32) as bits less i << 47, the shift that rounds to an
/// integer, N/ln 2 and the cubic's coefficients (scaled for N = 32).
#[cfg(target_arch = "x86_64")]
mod data {
    pub const TAB: [u64; 32] = [
        0x3ff0000000000000,
        0x3fefd9b0d3158574,
        0x3fefb5586cf9890f,
        0x3fef9301d0125b51,
        0x3fef72b83c7d517b,
        0x3fef54873168b9aa,
        0x3fef387a6e756238,
        0x3fef1e9df51fdee1,
        0x3fef06fe0a31b715,
        0x3feef1a7373aa9cb,
        0x3feedea64c123422,
        0x3feece086061892d,
        0x3feebfdad5362a27,
        0x3feeb42b569d4f82,
        0x3feeab07dd485429,
        0x3feea47eb03a5585,
        0x3feea09e667f3bcd,
        0x3fee9f75e8ec5f74,
        0x3feea11473eb0187,
        0x3feea589994cce13,
        0x3feeace5422aa0db,
        0x3feeb737b0cdc5e5,
        0x3feec49182a3f090,
        0x3feed503b23e255d,
        0x3feee89f995ad3ad,
        0x3feeff76f2fb5e47,
        0x3fef199bdd85529c,
        0x3fef3720dcef9069,
        0x3fef5818dcfba487,
        0x3fef7c97337b9b5f,
        0x3fefa4afa2a490da,
        0x3fefd0765b6e4540,
    ];
    /// 0x1.8p52.
    pub const SHIFT: u64 = 0x4338000000000000;
    /// 0x1.71547652b82fep+5 (N / ln 2).
    pub const INV_LN2_N: u64 = 0x40471547652b82fe;
    /// 0x1.c6af84b912394p-20, 0x1.ebfce50fac4f3p-13, 0x1.62e42ff0c52d6p-6.
    pub const C: [u64; 3] = [0x3ebc6af84b912394, 0x3f2ebfce50fac4f3, 0x3f962e42ff0c52d6];
    /// Inputs whose `(bits >> 20) & 0x7ff` exceeds this (|x| ≥ ~88, inf, NaN) take the
    /// scalar function.
    pub const TOP_MAX: i32 = 0x42a;
}

/// The eight values as a vector when every one is inside the main range; otherwise computes
/// them with `f32::exp` (|x| ≥ ~88, infinities, NaN: the C library's special cases) and
/// returns `None`.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn in_range(x: &mut [f32; 8]) -> Option<std::arch::x86_64::__m256> {
    use std::arch::x86_64::*;
    // SAFETY: `x` holds 8 values; the caller vouches for AVX2.
    unsafe {
        let v = _mm256_loadu_ps(x.as_ptr());
        let top = _mm256_and_si256(
            _mm256_srli_epi32::<20>(_mm256_castps_si256(v)),
            _mm256_set1_epi32(0x7ff),
        );
        if _mm256_movemask_epi8(_mm256_cmpgt_epi32(top, _mm256_set1_epi32(data::TOP_MAX))) == 0 {
            return Some(v);
        }
    }
    for v in x.iter_mut() {
        *v = v.exp();
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::data::*;
    use std::arch::x86_64::*;

    /// Eight values in place.
    ///
    /// # Safety
    /// The CPU must have AVX-512F (and the AVX2 it implies).
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn exp8(x: &mut [f32; 8]) {
        // SAFETY: the CPU has AVX2 (the caller's promise).
        let Some(v) = (unsafe { super::in_range(x) }) else {
            return;
        };
        let xd = _mm512_cvtps_pd(v);
        let inv = _mm512_set1_pd(f64::from_bits(INV_LN2_N));
        let shift = _mm512_set1_pd(f64::from_bits(SHIFT));
        let kd = _mm512_fmadd_pd(inv, xd, shift);
        let ki = _mm512_castpd_si512(kd);
        let kd = _mm512_sub_pd(kd, shift);
        let r = _mm512_fmsub_pd(inv, xd, kd);
        // SAFETY: TAB holds 32 values, 8 per load.
        let t = unsafe {
            let tab = TAB.as_ptr() as *const __m512i;
            let idx = _mm512_and_si512(ki, _mm512_set1_epi64(31));
            let lo = _mm512_permutex2var_epi64(
                _mm512_loadu_si512(tab),
                idx,
                _mm512_loadu_si512(tab.add(1)),
            );
            let hi = _mm512_permutex2var_epi64(
                _mm512_loadu_si512(tab.add(2)),
                idx,
                _mm512_loadu_si512(tab.add(3)),
            );
            let upper = _mm512_test_epi64_mask(idx, _mm512_set1_epi64(16));
            _mm512_mask_blend_epi64(upper, lo, hi)
        };
        let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
        let c0 = _mm512_set1_pd(f64::from_bits(C[0]));
        let c1 = _mm512_set1_pd(f64::from_bits(C[1]));
        let c2 = _mm512_set1_pd(f64::from_bits(C[2]));
        let z = _mm512_fmadd_pd(c0, r, c1);
        let r2 = _mm512_mul_pd(r, r);
        let y = _mm512_fmadd_pd(c2, r, _mm512_set1_pd(1.0));
        let y = _mm512_fmadd_pd(z, r2, y);
        let y = _mm512_mul_pd(y, s);
        // SAFETY: `x` holds 8 values.
        unsafe { _mm256_storeu_ps(x.as_mut_ptr(), _mm512_cvtpd_ps(y)) };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::data::*;
    use std::arch::x86_64::*;

    /// Eight values in place, as two halves of four doubles.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp8(x: &mut [f32; 8]) {
        // SAFETY: the CPU has AVX2 (the caller's promise).
        let Some(v) = (unsafe { super::in_range(x) }) else {
            return;
        };
        let inv = _mm256_set1_pd(f64::from_bits(INV_LN2_N));
        let shift = _mm256_set1_pd(f64::from_bits(SHIFT));
        let c0 = _mm256_set1_pd(f64::from_bits(C[0]));
        let c1 = _mm256_set1_pd(f64::from_bits(C[1]));
        let c2 = _mm256_set1_pd(f64::from_bits(C[2]));
        let half = |h: __m128| -> __m128 {
            let xd = _mm256_cvtps_pd(h);
            let kd = _mm256_fmadd_pd(inv, xd, shift);
            let ki = _mm256_castpd_si256(kd);
            let kd = _mm256_sub_pd(kd, shift);
            let r = _mm256_fmsub_pd(inv, xd, kd);
            let idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
            // SAFETY: every index is below 32, inside TAB.
            let t = unsafe { _mm256_i64gather_epi64::<8>(TAB.as_ptr() as *const i64, idx) };
            let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
            let z = _mm256_fmadd_pd(c0, r, c1);
            let r2 = _mm256_mul_pd(r, r);
            let y = _mm256_fmadd_pd(c2, r, _mm256_set1_pd(1.0));
            let y = _mm256_fmadd_pd(z, r2, y);
            _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
        };
        let lo = half(_mm256_castps256_ps128(v));
        let hi = half(_mm256_extractf128_ps::<1>(v));
        // SAFETY: `x` holds 8 values.
        unsafe { _mm256_storeu_ps(x.as_mut_ptr(), _mm256_set_m128(hi, lo)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 61st float (70 million inputs across all signs, exponents and NaNs) through each
    /// vector path the CPU runs, against `f32::exp`.
    #[test]
    fn vector_paths_give_the_c_library_s_bits() {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let paths = [
                (avx2 && is_x86_feature_detected!("avx512f"), Vector::Avx512),
                (avx2, Vector::Avx2),
            ];
            let mut ran = 0;
            for (has, v) in paths {
                if !has {
                    eprintln!("not run: the {v:?} exp (this CPU lacks it)");
                    continue;
                }
                assert!(
                    agrees(v),
                    "the {v:?} exp differs from this C library's expf on the probes"
                );
                let mut buf = [0f32; 8];
                let mut bits = 0u32;
                let mut n = 0u64;
                loop {
                    for b in buf.iter_mut() {
                        *b = f32::from_bits(bits);
                        bits = bits.wrapping_add(61);
                    }
                    let xs = buf;
                    // SAFETY: `has` checked the CPU's features for `v`.
                    unsafe {
                        match v {
                            Vector::Avx512 => avx512::exp8(&mut buf),
                            Vector::Avx2 => avx2::exp8(&mut buf),
                        }
                    }
                    for (x, y) in xs.iter().zip(&buf) {
                        let want = x.exp();
                        assert!(
                            want.to_bits() == y.to_bits() || (want.is_nan() && y.is_nan()),
                            "{v:?}: exp({x:e}) = {y:e}, expf gives {want:e}"
                        );
                    }
                    n += 8;
                    if n >= (1u64 << 32) / 61 {
                        break;
                    }
                }
                ran += 1;
            }
            // Where this C library agrees, the public function takes a vector path.
            if ran > 0 {
                assert!(vector().is_some());
            }
        }
        let mut xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.21).collect();
        let want: Vec<u32> = xs.iter().map(|x| x.exp().to_bits()).collect();
        exp_in_place(&mut xs);
        assert_eq!(xs.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
    }
}
