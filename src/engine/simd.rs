//! Which SIMD variant Influence's own matmul kernels (`q8.rs`, `kq.rs`, `legacy.rs`,
//! `mxfp4.rs`) run, chosen once at run time from the CPU's features: AVX-512 VNNI, else
//! AVX-VNNI, else AVX2.
//!
//! `INFLUENCE_KERNEL` overrides the choice for every own kernel: `0` (or `candle`) turns them off
//! and candle's kernels run instead, `avx2` forces the AVX2 variant, `avxvnni` the AVX-VNNI one,
//! `vnni256` the 256-bit VNNI kernels with the EVEX-encoded `vpdpbusd` (for measuring the
//! AVX-VNNI kernels on an AVX-512 machine, which lacks the VEX-encoded instruction), and
//! `avx512` asks for the AVX-512 one; a variant the CPU lacks is ignored. The older
//! `INFLUENCE_Q8_KERNEL` is still read when `INFLUENCE_KERNEL` is unset. Other architectures
//! (aarch64 included) always run candle's kernels.

/// The SIMD variants of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 F/BW/VL + VNNI: 64 bytes at a time, `vpdpbusd` / `vpdpwssd`.
    Avx512,
    /// AVX2 + AVX-VNNI (Intel since Alder Lake, AMD since Zen 5): the 256-bit VNNI kernels with
    /// the VEX-encoded `vpdpbusd`.
    AvxVnni,
    /// The same 256-bit VNNI kernels with the EVEX-encoded `vpdpbusd` (AVX-512 VNNI + VL), and
    /// otherwise only AVX2 instructions and 16 vector registers, as on an AVX-VNNI CPU: what
    /// tests and measures those kernels on AVX-512 machines. Never chosen by itself.
    Vnni256,
    /// AVX2 + FMA + F16C: 32 bytes at a time, `vpmaddubsw` / `vpmaddwd`.
    Avx2,
}

impl Kernel {
    /// How the variant is named in logs, warnings and `bench --json`'s `cpu_kernel`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "AVX-512 VNNI",
            Kernel::AvxVnni => "AVX-VNNI",
            Kernel::Vnni256 => "256-bit VNNI (EVEX)",
            Kernel::Avx2 => "AVX2",
        }
    }

    /// The instructions the variant needs beyond AVX2, FMA and F16C (for messages).
    #[cfg(test)]
    fn needs(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512f/bw/vl and avx512vnni",
            Kernel::AvxVnni => "avxvnni",
            Kernel::Vnni256 => "avx512vnni and avx512vl",
            Kernel::Avx2 => "avx2, fma and f16c",
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
        choose(&choice, supported)
    })
}

/// The variant for an override value, given which variants the CPU runs.
fn choose(choice: &str, runs: impl Fn(Kernel) -> bool) -> Option<Kernel> {
    let forced = match choice.trim().to_ascii_lowercase().as_str() {
        "0" | "off" | "candle" => return None,
        "avx2" => Some(Kernel::Avx2),
        "avxvnni" | "avx-vnni" => Some(Kernel::AvxVnni),
        "vnni256" => Some(Kernel::Vnni256),
        _ => None,
    };
    forced
        .into_iter()
        .chain([Kernel::Avx512, Kernel::AvxVnni, Kernel::Avx2])
        .find(|&k| runs(k))
}

/// Whether this CPU has the instructions of `k`.
pub fn supported(k: Kernel) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        match k {
            Kernel::Avx512 => {
                avx2 && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            Kernel::AvxVnni => avx2 && is_x86_feature_detected!("avxvnni"),
            Kernel::Vnni256 => {
                avx2 && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            Kernel::Avx2 => avx2,
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
    [
        Kernel::Avx2,
        Kernel::AvxVnni,
        Kernel::Vnni256,
        Kernel::Avx512,
    ]
    .into_iter()
    .filter(|&k| {
        let ok = supported(k);
        if !ok {
            eprintln!(
                "not run: the {} variant (this CPU lacks {})",
                k.name(),
                k.needs()
            );
        }
        ok
    })
    .collect()
}

/// The integer dot products of the 256-bit kernels, one implementation per instruction set, so
/// a kernel is written once (generic over [`Dot256`], `#[inline(always)]`) and instantiated
/// under each variant's `#[target_feature]`.
#[cfg(target_arch = "x86_64")]
pub(super) mod dot256 {
    use std::arch::x86_64::*;

    /// Sums of 4 products of unsigned by signed bytes per 32-bit lane.
    pub(in crate::engine) trait Dot256 {
        /// Adds `Σ u0·s0 + Σ u1·s1` per lane (4 bytes of each) to the sum of `acc`'s two
        /// vectors. VNNI adds each product to its own vector: two dependency chains of
        /// `vpdpbusd`, whose latency one chain would wait on. AVX2 adds neighbouring products
        /// and the two vectors' pairs in 16 bits first (saturating), so its callers keep
        /// `|u0·s0 + u0'·s0'| + |u1·s1 + u1'·s1'|` within i16, and widens into `acc[0]`.
        ///
        /// # Safety
        /// The CPU must run the implementation's instructions.
        unsafe fn dot2(acc: &mut [__m256i; 2], u0: __m256i, s0: __m256i, u1: __m256i, s1: __m256i);
    }

    /// The VNNI instruction `vpdpbusd`: `acc + Σ u·s` per lane, exact (no 16-bit step).
    pub(in crate::engine) trait Vnni256: Dot256 {
        /// # Safety
        /// The CPU must run the implementation's instruction.
        unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
    }

    /// AVX2: `vpmaddubsw` (saturating 16-bit pairs) and `vpmaddwd` by ones.
    pub(in crate::engine) struct Avx2;
    /// AVX-VNNI: the VEX-encoded `vpdpbusd`.
    pub(in crate::engine) struct AvxVnni;
    /// AVX-512 VNNI + VL: the EVEX-encoded `vpdpbusd` on ymm registers.
    pub(in crate::engine) struct Evex;

    impl Dot256 for Avx2 {
        #[inline(always)]
        unsafe fn dot2(acc: &mut [__m256i; 2], u0: __m256i, s0: __m256i, u1: __m256i, s1: __m256i) {
            acc[0] = avx2_dot2(acc[0], u0, s0, u1, s1);
        }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn avx2_dot2(
        acc: __m256i,
        u0: __m256i,
        s0: __m256i,
        u1: __m256i,
        s1: __m256i,
    ) -> __m256i {
        let p = _mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1));
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }

    impl Dot256 for AvxVnni {
        #[inline(always)]
        unsafe fn dot2(acc: &mut [__m256i; 2], u0: __m256i, s0: __m256i, u1: __m256i, s1: __m256i) {
            acc[0] = Self::dpbusd(acc[0], u0, s0);
            acc[1] = Self::dpbusd(acc[1], u1, s1);
        }
    }

    impl Vnni256 for AvxVnni {
        #[inline(always)]
        unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            vex_dpbusd(acc, u, s)
        }
    }

    #[target_feature(enable = "avx2,avxvnni")]
    #[inline]
    unsafe fn vex_dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    }

    impl Dot256 for Evex {
        #[inline(always)]
        unsafe fn dot2(acc: &mut [__m256i; 2], u0: __m256i, s0: __m256i, u1: __m256i, s1: __m256i) {
            acc[0] = Self::dpbusd(acc[0], u0, s0);
            acc[1] = Self::dpbusd(acc[1], u1, s1);
        }
    }

    impl Vnni256 for Evex {
        #[inline(always)]
        unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            evex_dpbusd(acc, u, s)
        }
    }

    /// The EVEX `vpdpbusd` as the one instruction of an `asm!` block in an AVX2 function: the
    /// intrinsic would need AVX-512 F enabled for the whole kernel, and the compiler would then
    /// be free to use 32 vector registers and AVX-512 instructions, which AVX-VNNI CPUs lack.
    /// Here the kernels around it are the AVX-VNNI instance's code. (A build with
    /// `-C target-cpu=native` on an AVX-512 machine, as this repository's, enables AVX-512 F
    /// everywhere: then this instance and the AVX2 variant alike use 32 registers.)
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn evex_dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        let mut r = acc;
        // SAFETY: register operands only; the caller runs this on AVX-512 VNNI + VL CPUs.
        unsafe {
            std::arch::asm!(
                "vpdpbusd {r}, {u}, {s}",
                r = inout(ymm_reg) r,
                u = in(ymm_reg) u,
                s = in(ymm_reg) s,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        r
    }
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

/// One Q8_0 block of activations: `round(v · inv)` per value (rounding half away from zero,
/// as `f32::round`; NaN gives 0, as `as i8` does) into `dst`, and into `off` each 4 values'
/// sum times −128 (the weights' +128 offset, taken away in advance). The same bytes and sums
/// on every path: the vector one only reorders independent per-value operations.
pub fn quantize_block(src: &[f32; 32], inv: f32, dst: &mut [i8; 32], off: &mut [i32; 8]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { quantize_block_avx2(src, inv, dst, off) };
    }
    quantize_block_plain(src, inv, dst, off);
}

fn quantize_block_plain(src: &[f32; 32], inv: f32, dst: &mut [i8; 32], off: &mut [i32; 8]) {
    for (q, &v) in dst.iter_mut().zip(src) {
        *q = (v * inv).round() as i8;
    }
    for (o, q) in off.iter_mut().zip(dst.chunks_exact(4)) {
        *o = -128 * (q[0] as i32 + q[1] as i32 + q[2] as i32 + q[3] as i32);
    }
}

/// Whether the CPU has AVX2 (checked once).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static A: OnceLock<bool> = OnceLock::new();
    *A.get_or_init(|| is_x86_feature_detected!("avx2"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_block_avx2(src: &[f32; 32], inv: f32, dst: &mut [i8; 32], off: &mut [i32; 8]) {
    use std::arch::x86_64::*;
    let inv = _mm256_set1_ps(inv);
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let sign = _mm256_set1_ps(-0.0);
    let mut ints = [_mm256_setzero_si256(); 4];
    for (n, i) in ints.iter_mut().enumerate() {
        // SAFETY: `src` holds 32 values.
        let x = _mm256_mul_ps(unsafe { _mm256_loadu_ps(src.as_ptr().add(8 * n)) }, inv);
        // Half away from zero: truncate, then step away from zero where the exact remainder
        // reaches one half.
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
        let rem = _mm256_andnot_ps(sign, _mm256_sub_ps(x, t));
        let step = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(rem, half), one);
        let r = _mm256_add_ps(t, _mm256_or_ps(step, _mm256_and_ps(x, sign)));
        // NaN lanes become 0.
        let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(x, x));
        *i = _mm256_cvttps_epi32(r);
    }
    // Packing interleaves the 128-bit halves; the permute puts values back in order.
    let w01 = _mm256_packs_epi32(ints[0], ints[1]);
    let w23 = _mm256_packs_epi32(ints[2], ints[3]);
    let b = _mm256_packs_epi16(w01, w23);
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: `dst` holds 32 bytes.
    unsafe { _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, b) };
    let pairs = _mm256_maddubs_epi16(_mm256_set1_epi8(1), b);
    let quads = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
    let o = _mm256_mullo_epi32(quads, _mm256_set1_epi32(-128));
    // SAFETY: `off` holds 8 values.
    unsafe { _mm256_storeu_si256(off.as_mut_ptr() as *mut __m256i, o) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_blocks_match_the_plain_rounding() {
        // Ties at ±0.5, ±1.5 … (the scale 1 keeps them exact), large and tiny values, NaN.
        let mut blocks: Vec<([f32; 32], f32)> = Vec::new();
        let ties: [f32; 32] = std::array::from_fn(|i| (i as f32 - 16.0) + 0.5);
        blocks.push((ties, 1.0));
        let near: [f32; 32] = std::array::from_fn(|i| {
            let b = (i as f32 - 16.0) + 0.5;
            if i % 2 == 0 {
                f32::from_bits(b.to_bits() + 1)
            } else {
                f32::from_bits(b.to_bits() - 1)
            }
        });
        blocks.push((near, 1.0));
        let mut x = 0x2545_f491u32;
        for _ in 0..2000 {
            let v: [f32; 32] = std::array::from_fn(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 - 0.5) * 40.0
            });
            let amax = abs_max(&v);
            blocks.push((v, if amax > 0.0 { 127.0 / amax } else { 0.0 }));
        }
        let mut nan = ties;
        nan[3] = f32::NAN;
        blocks.push((nan, 1.0));
        blocks.push(([0.0; 32], 0.0));
        for (n, (v, inv)) in blocks.iter().enumerate() {
            let (mut a, mut oa) = ([0i8; 32], [0i32; 8]);
            let (mut b, mut ob) = ([0i8; 32], [0i32; 8]);
            quantize_block_plain(v, *inv, &mut a, &mut oa);
            quantize_block(v, *inv, &mut b, &mut ob);
            assert_eq!((a, oa), (b, ob), "block {n}");
        }
        #[cfg(target_arch = "x86_64")]
        if !avx2() {
            eprintln!("not run: the AVX2 block quantizer (this CPU lacks avx2)");
        }
    }

    #[test]
    fn override_values() {
        let all = |_| true;
        let avx512_box = |k| k != Kernel::AvxVnni;
        let avxvnni_box = |k| matches!(k, Kernel::AvxVnni | Kernel::Avx2);
        let avx2_box = |k| k == Kernel::Avx2;
        let none = |_| false;
        assert_eq!(choose("", all), Some(Kernel::Avx512));
        assert_eq!(choose("", avx512_box), Some(Kernel::Avx512));
        assert_eq!(choose("", avxvnni_box), Some(Kernel::AvxVnni));
        assert_eq!(choose("", avx2_box), Some(Kernel::Avx2));
        assert_eq!(choose("avx2", all), Some(Kernel::Avx2));
        assert_eq!(choose("AVX2", avx512_box), Some(Kernel::Avx2));
        assert_eq!(choose("avxvnni", all), Some(Kernel::AvxVnni));
        assert_eq!(choose("avxvnni", avxvnni_box), Some(Kernel::AvxVnni));
        assert_eq!(choose("vnni256", avx512_box), Some(Kernel::Vnni256));
        assert_eq!(choose("VNNI256", avx512_box), Some(Kernel::Vnni256));
        // A variant the CPU lacks falls back to the best one it has.
        assert_eq!(choose("avxvnni", avx512_box), Some(Kernel::Avx512));
        assert_eq!(choose("vnni256", avxvnni_box), Some(Kernel::AvxVnni));
        assert_eq!(choose("avx512", avxvnni_box), Some(Kernel::AvxVnni));
        assert_eq!(choose("avx512", avx2_box), Some(Kernel::Avx2));
        assert_eq!(choose("0", all), None);
        assert_eq!(choose("candle", all), None);
        assert_eq!(choose("", none), None);
        assert_eq!(choose("avx2", none), None);
        // The EVEX instance is only ever asked for.
        assert_eq!(choose("", |k| k == Kernel::Vnni256), None);
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
