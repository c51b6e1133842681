//! The random-weight GGUF generator (`tests/support/synth.rs`, `examples/gen_gguf.rs`): its
//! files are reproducible, its blocks valid, its models load and decode greedily with clear
//! margins in the engine and through `influence run --json`.

#[path = "support/models.rs"]
mod models;
#[path = "support/synth.rs"]
mod synth;

use std::path::{Path, PathBuf};

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use candle_core::Device;
use influence::engine::tokenize::TextTokenizer;
use influence::engine::{EngineHandle, EngineOptions, GenEvent, GenParams, GenRequest, Prompt};
use synth::{Mix, Plan, QType, Rng, Role, Spec, LLAMA};

fn tiny(mix: Mix, seed: u64) -> Spec {
    Spec::preset(&LLAMA, "tiny", mix, seed).unwrap()
}

fn write(spec: Spec, dir: &Path, name: &str, threads: usize) -> (Plan, PathBuf) {
    let plan = Plan::new(spec).unwrap();
    let path = dir.join(name);
    let w = synth::write_file(&plan, &path, threads).unwrap();
    assert_eq!(w.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(w.bytes, plan.file_bytes());
    (plan, path)
}

#[test]
fn same_seed_gives_the_same_bytes_on_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let (_, a) = write(tiny(Mix::Q4KM, 7), dir.path(), "a.gguf", 1);
    let (_, b) = write(tiny(Mix::Q4KM, 7), dir.path(), "b.gguf", 3);
    let (_, c) = write(tiny(Mix::Q4KM, 8), dir.path(), "c.gguf", 2);
    let (a, b, c) = (
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        std::fs::read(c).unwrap(),
    );
    assert!(a == b, "same seed, different bytes");
    assert_eq!(a.len(), c.len());
    assert!(a != c, "another seed gave the same bytes");
    assert!(!dir.path().join("a.gguf.partial").exists());
}

/// llama.cpp's Q4_K_M (llama-quant.cpp, `use_more_bits`): Q6_K for attn_v and ffn_down on the
/// first and last eighth of the layers and every third layer between; Q6_K for the LM head,
/// which with tied embeddings is token_embd.
#[test]
fn q4_k_m_mix_follows_llama_quantize() {
    let q6_layers = |plan: &Plan, suffix: &str| -> Vec<usize> {
        plan.tensors
            .iter()
            .filter(|t| t.name.ends_with(suffix))
            .filter(|t| t.qtype == QType::Q6K)
            .map(|t| t.layer)
            .collect()
    };
    let p8 = Plan::new(Spec::preset(&LLAMA, "8b", Mix::Q4KM, 0).unwrap()).unwrap();
    let want8 = vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31];
    assert_eq!(q6_layers(&p8, "attn_v.weight"), want8);
    assert_eq!(q6_layers(&p8, "ffn_down.weight"), want8);
    let ty = |p: &Plan, n: &str| p.tensors.iter().find(|t| t.name == n).unwrap().qtype;
    assert_eq!(ty(&p8, "token_embd.weight"), QType::Q4K);
    assert_eq!(ty(&p8, "output.weight"), QType::Q6K);
    assert_eq!(ty(&p8, "blk.5.attn_v.weight"), QType::Q4K);
    assert_eq!(ty(&p8, "blk.0.attn_q.weight"), QType::Q4K);
    assert_eq!(ty(&p8, "blk.0.ffn_gate.weight"), QType::Q4K);
    assert_eq!(ty(&p8, "blk.0.attn_norm.weight"), QType::F32);
    assert_eq!(p8.tensors.len(), 2 + 32 * 9 + 1);
    // Within a few MB of the real Llama-3.1-8B Q4_K_M files (4.92 GB with their vocabulary).
    let gb = p8.file_bytes() as f64 / 1e9;
    assert!((4.88..4.93).contains(&gb), "{gb} GB");

    let p1 = Plan::new(Spec::preset(&LLAMA, "1b", Mix::Q4KM, 0).unwrap()).unwrap();
    let want1 = vec![0, 1, 4, 7, 10, 13, 14, 15];
    assert_eq!(q6_layers(&p1, "attn_v.weight"), want1);
    assert_eq!(q6_layers(&p1, "ffn_down.weight"), want1);
    assert_eq!(
        ty(&p1, "token_embd.weight"),
        QType::Q6K,
        "tied: the LM head's type"
    );
    assert!(p1.tensors.iter().all(|t| t.name != "output.weight"));

    let q8 = Plan::new(Spec::preset(&LLAMA, "8b", Mix::Q8_0, 0).unwrap()).unwrap();
    assert!(q8.tensors.iter().all(|t| t.qtype
        == if t.dims.len() == 1 {
            QType::F32
        } else {
            QType::Q8_0
        }));

    // Rows that are not whole 256-blocks fall back as llama-quantize does.
    let mut odd = tiny(Mix::Q4KM, 0);
    odd.shape.ffn = 320;
    let p = Plan::new(odd).unwrap();
    assert_eq!(
        ty(&p, "blk.1.ffn_down.weight"),
        QType::Q8_0,
        "Q6_K falls back to Q8_0"
    );
    assert_eq!(
        ty(&p, "blk.0.ffn_gate.weight"),
        QType::Q4K,
        "rows of hidden = 256"
    );
}

/// candle's type for a generator type; `None` for MXFP4, which candle 0.11 does not know.
fn candle_dtype(q: QType) -> Option<GgmlDType> {
    Some(match q {
        QType::F32 => GgmlDType::F32,
        QType::F16 => GgmlDType::F16,
        QType::Q4_0 => GgmlDType::Q4_0,
        QType::Q4_1 => GgmlDType::Q4_1,
        QType::Q5_0 => GgmlDType::Q5_0,
        QType::Q5_1 => GgmlDType::Q5_1,
        QType::Q8_0 => GgmlDType::Q8_0,
        QType::Q4K => GgmlDType::Q4K,
        QType::Q5K => GgmlDType::Q5K,
        QType::Q6K => GgmlDType::Q6K,
        QType::Mxfp4 => return None,
    })
}

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt()
}

/// Random blocks read back through candle's dequantization: finite, centred, with the RMS
/// asked for; the generator's own decoder (which builds the LM head) agrees with candle's;
/// and its encoder round-trips with the error each format allows.
#[test]
fn every_quant_type_dequantizes_to_finite_values_of_the_expected_magnitude() {
    let (rows, cols) = (16usize, 1024usize);
    for q in QType::ALL {
        for sigma in [0.02f32, 1.0] {
            let mut rng = Rng::new(42);
            let mut bytes = vec![0u8; rows * q.row_bytes(cols)];
            for row in bytes.chunks_exact_mut(q.row_bytes(cols)) {
                synth::random_row(q, &mut rng, sigma, row);
            }
            let mut mine = vec![0f32; rows * cols];
            for (row, out) in bytes
                .chunks_exact(q.row_bytes(cols))
                .zip(mine.chunks_exact_mut(cols))
            {
                synth::dequantize_row(q, row, out);
            }
            // MXFP4 has no candle decoder to compare with: the engine's unit tests check its
            // own MXFP4 decoder against ggml's block format.
            let got: Vec<f32> = match candle_dtype(q) {
                Some(dt) => qtensor_from_ggml(dt, &bytes, vec![rows, cols], &Device::Cpu)
                    .unwrap()
                    .dequantize(&Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
                None => mine.clone(),
            };
            assert!(got.iter().all(|v| v.is_finite()), "{q}: non-finite value");
            if q == QType::Q8_0 {
                let levels = bytes.chunks_exact(34).flat_map(|b| &b[2..]);
                assert!(levels.clone().all(|&l| l != 0x80), "Q8_0 level -128");
                assert!(levels.clone().any(|&l| l == 0x81) && levels.clone().any(|&l| l == 0x7F));
            }
            let r = rms(&got);
            // MXFP4's scales are powers of two: the nearest is within a factor of √2.
            let (lo, hi) = if q == QType::Mxfp4 {
                (0.7, 1.42)
            } else {
                (0.85, 1.2)
            };
            assert!(
                (lo * sigma..hi * sigma).contains(&r),
                "{q}: RMS {r}, asked {sigma}"
            );
            // Q4_0's levels are -8..=7 (mean -0.5 of a step, 0.11 sigma), as in real files.
            let mean = got.iter().sum::<f32>() / got.len() as f32;
            assert!(mean.abs() < 0.12 * sigma, "{q}: mean {mean}");
            for (i, (a, b)) in mine.iter().zip(&got).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * sigma.max(b.abs()),
                    "{q}: value {i} decodes to {a}, candle says {b}"
                );
            }

            let mut again = vec![0u8; bytes.len()];
            for (x, out) in mine
                .chunks_exact(cols)
                .zip(again.chunks_exact_mut(q.row_bytes(cols)))
            {
                synth::quantize_row(q, x, out);
            }
            let mut back = vec![0f32; rows * cols];
            for (row, out) in again
                .chunks_exact(q.row_bytes(cols))
                .zip(back.chunks_exact_mut(cols))
            {
                synth::dequantize_row(q, row, out);
            }
            let err: Vec<f32> = back.iter().zip(&mine).map(|(a, b)| a - b).collect();
            let allowed = match q {
                QType::F32 => 0.0,
                QType::F16 | QType::Q8_0 | QType::Q6K => 0.03,
                QType::Q5_0 | QType::Q5_1 | QType::Q5K => 0.08,
                // E2M1's steps reach a third of the block maximum.
                QType::Mxfp4 => 0.25,
                _ => 0.16,
            };
            assert!(
                rms(&err) <= allowed * r,
                "{q}: re-encoding error {} of RMS {r}",
                rms(&err)
            );
        }
    }
}

fn engine() -> EngineHandle {
    EngineHandle::spawn(EngineOptions {
        threads: 2,
        max_loaded: 1,
        ..EngineOptions::default()
    })
}

/// Greedy ids and, per step, the gap between the two most likely tokens' log-probabilities.
fn greedy(e: &EngineHandle, model: &Path, prompt: Prompt, n: usize) -> (Vec<u32>, Vec<f32>) {
    let (ids, _, gaps) = greedy_top2(e, model, prompt, n);
    (ids, gaps)
}

/// The tiny models load, decode the same tokens twice, and each step's winner stands clear:
/// with a separate LM head it is the token the seeded map puts after the previous one, with
/// tied embeddings the previous token again (see `synth::Scales`).
///
/// The ids are llama.cpp `0c1e570`'s on the same files: `llama-server -m FILE`, then POST
/// `/completion` with `{"prompt": "the quick brown fox", "n_predict": 16, "temperature": 0,
/// "samplers": ["top_k"], "top_k": 1, "return_tokens": true}`, its `tokens`. The files'
/// sha256 is pinned too: a change to the generator changes every recorded golden.
#[test]
fn tiny_models_decode_llama_cpp_s_greedy_tokens_with_clear_margins() {
    let dir = tempfile::tempdir().unwrap();
    let mut tied = tiny(Mix::Q8_0, 3);
    tied.shape.tied = true;
    let cases = [
        (
            tiny(Mix::Q4KM, 3),
            "untied-q4km.gguf",
            vec![
                27, 716, 1009, 873, 712, 951, 954, 290, 296, 780, 28, 686, 424, 159, 806, 149,
            ],
            Some("9fc204f23243ce221b6c1f8c33313c5b02fcfc94ba18af442a1dcf8fa0eddc1e"),
        ),
        (tied, "tied-q8.gguf", vec![669; 16], None),
    ];
    for (spec, name, want, sha) in cases {
        let (plan, path) = write(spec, dir.path(), name, 2);
        if let Some(sha) = sha {
            use sha2::Digest;
            let got = hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()));
            assert_eq!(got, sha, "{name}: the generator's bytes changed");
        }
        let e = engine();
        let prompt = || Prompt::Raw("the quick brown fox".into());
        let (ids, gaps) = greedy(&e, &path, prompt(), 16);
        assert_eq!(ids, want, "{name}");
        let (again, _) = greedy(&engine(), &path, prompt(), 16);
        assert_eq!(ids, again, "{name}: not deterministic");
        let min_gap = gaps.iter().copied().fold(f32::INFINITY, f32::min);
        assert!(min_gap > 1.0, "{name}: top-2 gaps {gaps:?}");
        let tok = TextTokenizer::from_gguf_path(&path).unwrap();
        let last = *tok.encode("the quick brown fox").unwrap().last().unwrap();
        let mut prev = last;
        for &id in &ids {
            if plan.spec.shape.tied {
                assert_eq!(id, last, "{name}: {ids:?}");
            } else {
                assert_eq!(plan.next_src[id as usize], prev, "{name}: {ids:?}");
            }
            prev = id;
        }
    }
}

/// Greedy ids, and per step the runner-up's id and the top-2 log-probability gap.
fn greedy_top2(
    e: &EngineHandle,
    model: &Path,
    prompt: Prompt,
    n: usize,
) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let mut params = GenParams::greedy(n);
    params.logprobs = Some(2);
    let mut gen = e.generate(GenRequest {
        model: model.to_path_buf(),
        prompt,
        params,
    });
    let (mut ids, mut second, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(ev) = gen.events.blocking_recv() {
        match ev {
            GenEvent::Token { id, logprob, .. } => {
                let lp = logprob.expect("logprobs were asked for");
                assert_eq!(lp.top[0].id, id, "greedy takes the most likely token");
                ids.push(id);
                second.push(lp.top[1].id);
                gaps.push(lp.top[0].logprob - lp.top[1].logprob);
            }
            GenEvent::Done(_) => return (ids, second, gaps),
            GenEvent::Failed(e) => panic!("{}: {e}", model.display()),
            GenEvent::Started { .. } => {}
        }
    }
    panic!("the engine stopped");
}

/// Each newer family, generated tiny (`gen_gguf --family F --preset tiny --quant q4_k_m
/// --seed 7`), decodes llama.cpp `0c1e570`'s greedy tokens, and at every step the same
/// runner-up with the same top-2 log-probability gap within 0.25 nats. The winner follows the
/// generator's token map whatever the layers do, but the runner-up (granitemoe has two steps
/// where the engines name different runner-ups at the same gap: near ties with the third
/// token) and the gap come out of
/// every layer: a wrong scale, norm, soft-cap, window, RoPE skip, expert weight, convolution
/// tap, decay or group moves them (this test found the sliding window one position too wide).
///
/// Recorded with `llama-server -m F.gguf -t 2 -c 512`, then POST `/completion` with
/// `{"prompt": "the quick brown fox", "n_predict": 16, "temperature": 0, "samplers": ["top_k"],
/// "top_k": 1, "repeat_penalty": 1.0, "return_tokens": true, "n_probs": 2}`: `tokens`, and
/// from `completion_probabilities` each step's second `top_logprobs` id and the first two's
/// log-probability difference (the server reports 15 steps where a token ends mid-character).
#[test]
fn newer_families_decode_llama_cpp_s_tokens_runner_ups_and_gaps() {
    #[rustfmt::skip]
    let cases: &[Golden] = &[
        (
            "granite", "tiny",
            &[310, 229, 388, 823, 363, 318, 693, 442, 635, 840, 245, 252, 503, 733, 574, 179],
            &[614, 44, 815, 146, 226, 6, 122, 819, 853, 651, 275, 537, 361, 659, 517],
            &[12.651, 12.036, 12.129, 10.636, 10.816, 11.396, 11.609, 10.796, 12.148, 10.128, 11.908, 10.839, 12.896, 12.154, 14.497],
        ),
        (
            "smollm3", "tiny",
            &[310, 229, 388, 823, 363, 318, 693, 442, 635, 840, 245, 252, 503, 733, 574, 179],
            &[80, 889, 878, 921, 596, 918, 583, 342, 411, 651, 275, 634, 409, 812, 434],
            &[10.154, 6.521, 9.614, 4.491, 7.18, 5.544, 7.03, 5.041, 8.583, 8.716, 9.141, 5.421, 8.161, 7.745, 10.947],
        ),
        (
            "gemma2", "tiny",
            &[669, 669, 669, 669, 669, 669, 669, 669, 669, 669, 669, 669, 669, 669, 669, 669],
            &[502, 924, 924, 744, 924, 924, 924, 744, 744, 744, 744, 744, 744, 744, 744, 744],
            &[3.451, 3.664, 3.388, 3.633, 3.542, 3.837, 3.929, 3.912, 3.898, 3.857, 3.841, 3.839, 3.852, 3.835, 3.803, 3.774],
        ),
        (
            "olmo2", "tiny",
            &[310, 229, 388, 823, 363, 318, 693, 442, 635, 840, 245, 252, 503, 733, 574, 179],
            &[381, 904, 317, 278, 1013, 413, 122, 216, 783, 752, 658, 537, 220, 107, 634],
            &[4.079, 4.926, 4.639, 3.957, 2.887, 6.768, 3.764, 3.538, 6.071, 2.87, 4.91, 4.786, 5.843, 4.915, 4.76],
        ),
        (
            "granitemoe", "tiny",
            &[310, 229, 388, 823, 363, 318, 693, 442, 635, 840, 245, 252, 503, 733, 574, 179],
            &[614, 50, 815, 146, 342, 917, 113, 788, 853, 668, 386, 537, 361, 917, 634],
            &[12.801, 12.978, 12.509, 11.349, 11.658, 11.751, 12.351, 11.824, 12.435, 11.302, 11.21, 11.402, 12.822, 12.145, 14.544],
        ),
        (
            "qwen3moe", "tiny",
            &[310, 229, 388, 823, 363, 318, 693, 442, 635, 840, 245, 252, 503, 733, 574, 179],
            &[70, 75, 922, 116, 337, 634, 952, 266, 266, 437, 386, 537, 354, 659, 634],
            &[9.701, 9.806, 11.88, 7.932, 9.572, 9.25, 10.767, 10.455, 9.771, 7.239, 9.853, 9.79, 11.629, 10.421, 12.16],
        ),
        (
            "gemma4", "tiny",
            &[706, 706, 706, 706, 706, 706, 706, 706, 706, 706, 706, 706, 706, 706, 706, 706],
            &[288, 532, 591, 102, 413, 136, 303, 684, 684, 303, 417, 417, 303, 303, 417, 417],
            &[3.129, 2.293, 1.629, 0.902, 1.26, 1.598, 1.291, 2.058, 2.122, 2.282, 2.806, 2.736, 2.593, 2.542, 2.256, 2.473],
        ),
        // Llama 3.1 RoPE scaling through `rope_freqs`: without the factors step 9's gap is
        // 4.077 and its runner-up 275 (the plain tiny file's).
        (
            "llama", "tiny-rope-freqs",
            &[310, 229, 388, 823, 363, 318, 693, 442, 635, 840, 245, 252, 503, 733, 574, 179],
            &[182, 125, 614, 828, 226, 262, 122, 819, 688, 651, 433, 537, 571, 659, 819],
            &[8.811, 7.473, 8.959, 6.402, 7.806, 8.468, 8.89, 6.607, 7.922, 4.925, 9.097, 7.161, 10.956, 9.011, 10.008],
        ),
        // Mixtral-style experts in a llama file.
        (
            "llama", "tiny-moe",
            &[310, 229, 388, 823, 363, 318, 693, 442, 635, 840, 245, 252, 503, 733, 574, 179],
            &[0, 189, 922, 116, 688, 634, 958, 603, 266, 437, 386, 41, 338, 659, 634],
            &[9.694, 10.201, 11.96, 7.882, 9.145, 8.99, 11.053, 10.068, 9.564, 6.668, 9.905, 10.243, 11.486, 9.83, 12.162],
        ),
        // Phi-4-shaped: the phi3 layout's fused projections, no sliding window.
        (
            "phi3", "tiny",
            &[303, 435, 581, 402, 256, 492, 825, 628, 240, 818, 913, 298, 1001, 622, 774, 957],
            &[89, 640, 988, 633, 807, 872, 865, 728, 978, 390, 218, 259, 424, 750, 156, 1],
            &[10.711, 7.466, 11.365, 9.458, 10.525, 8.267, 8.471, 9.379, 6.812, 9.256, 8.721, 7.468, 4.795, 9.397, 9.324, 8.405],
        ),
        // Phi-4-mini-shaped: tied, partial rotation, longrope short factors and attn factor.
        (
            "phi3", "tiny-mini",
            &[669, 669, 669, 669, 669, 669, 669, 669, 669, 669, 669, 669, 669, 669, 669, 669],
            &[466, 466, 466, 466, 466, 466, 466, 466, 466, 466, 466, 466, 466, 466, 372, 372],
            &[7.728, 7.651, 7.615, 7.544, 7.254, 6.969, 6.737, 6.774, 6.955, 7.13, 7.361, 7.319, 7.336, 7.377, 7.33, 7.23],
        ),
        (
            "mamba", "tiny",
            &[310, 229, 388, 823, 363, 318, 693, 442, 635, 840, 245, 252, 503, 733, 574, 179],
            &[435, 997, 940, 146, 995, 361, 442, 558, 207, 576, 133, 308, 262, 493, 821],
            &[9.932, 9.944, 10.961, 8.55, 8.103, 9.834, 9.652, 7.571, 9.11, 7.991, 8.205, 6.817, 8.039, 10.328, 10.905],
        ),
        (
            "mamba2", "tiny",
            &[310, 229, 388, 823, 363, 318, 693, 442, 635, 840, 245, 252, 503, 733, 574, 179],
            &[704, 807, 92, 48, 340, 936, 790, 192, 853, 548, 743, 493, 385, 936, 808],
            &[9.738, 8.618, 9.08, 7.653, 8.547, 10.482, 9.927, 7.508, 8.766, 7.845, 8.678, 8.558, 10.777, 9.562, 12.398],
        ),
        // Granite 4.0 hybrid: Mamba-2 layers 0 and 2, attention (without RoPE) at 1 and 3,
        // Granite's multipliers; dense FFNs.
        (
            "granitehybrid", "tiny",
            &[310, 229, 388, 823, 363, 318, 693, 442, 635, 840, 245, 252, 503, 733, 574, 179],
            &[614, 869, 815, 114, 474, 760, 113, 854, 853, 157, 386, 537, 385, 774, 655],
            &[11.613, 10.59, 10.826, 9.132, 10.52, 11.185, 11.6, 9.735, 10.858, 10.575, 11.3, 10.114, 11.626, 11.356, 13.91],
        ),
        // The same layers with routed experts plus a shared expert (Granite 4.0 H Tiny/Small).
        (
            "granitehybrid", "tiny-moe",
            &[310, 229, 388, 823, 363, 318, 693, 442, 635, 840, 245, 252, 503, 733, 574, 179],
            &[70, 659, 815, 57, 949, 918, 578, 649, 853, 668, 386, 428, 963, 917, 54],
            &[11.156, 11.416, 10.695, 9.699, 10.226, 10.531, 9.647, 9.378, 10.363, 8.651, 9.73, 10.5, 11.382, 10.81, 13.114],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let e = engine();
    for case in cases {
        assert_llama_cpp_golden(&e, dir.path(), Mix::Q4KM, case, None, 0.25);
    }
}

/// Qwen3.5, generated tiny (`gen_gguf --family qwen35 --preset tiny --quant q4_k_m --seed 7`,
/// and `--family qwen35moe`): three Gated DeltaNet layers (4 value heads over 2 key heads)
/// then one gated attention layer with a quarter of each head turned under interleaved
/// M-RoPE. Decodes llama.cpp `0c1e570`'s greedy tokens, runner-ups and top-2 gaps: the
/// convolution, the L2 norms, β, the decay, the head grouping, the gated norm, the attention
/// output gate and (MoE) the shared expert's sigmoid gate all move them.
///
/// Recorded as the newer families' goldens are: `llama-server -m F.gguf -t 2 -c 512 --port P`,
/// then POST `/completion` with `{"prompt": "the quick brown fox", "n_predict": 16,
/// "temperature": 0, "samplers": ["top_k"], "top_k": 1, "repeat_penalty": 1.0,
/// "return_tokens": true, "n_probs": 2}` (15 steps reported: the last token's probabilities
/// come with the stop).
#[test]
fn qwen35_families_decode_llama_cpp_s_tokens_runner_ups_and_gaps() {
    #[rustfmt::skip]
    let cases: &[Golden] = &[
        (
            "qwen35", "tiny",
            &[310, 229, 388, 823, 363, 318, 693, 442, 635, 840, 245, 252, 503, 733, 574, 179],
            &[614, 458, 972, 326, 547, 655, 578, 854, 901, 189, 275, 537, 491, 774, 655],
            &[9.537, 8.784, 9.04, 6.583, 5.0, 7.657, 7.732, 6.076, 7.27, 7.478, 9.311, 4.438, 7.989, 6.893, 9.892],
        ),
        (
            "qwen35moe", "tiny",
            &[310, 229, 388, 823, 363, 318, 693, 442, 635, 840, 245, 252, 503, 733, 574, 179],
            &[136, 453, 636, 325, 91, 259, 578, 459, 853, 601, 522, 103, 539, 917, 179],
            &[10.441, 9.585, 10.013, 7.503, 7.522, 9.266, 7.017, 7.85, 10.054, 4.506, 7.674, 7.852, 8.312, 7.874, 10.639],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let e = engine();
    for case in cases {
        assert_llama_cpp_golden(&e, dir.path(), Mix::Q4KM, case, None, 0.25);
    }
}

/// A family, its preset, its greedy ids, runner-ups and top-2 gaps as llama.cpp recorded them.
type Golden = (
    &'static str,
    &'static str,
    &'static [u32],
    &'static [u32],
    &'static [f32],
);

/// Generates the family's tiny file in `mix` from seed 7 and checks the engine's greedy
/// decode of "the quick brown fox" against llama.cpp's `golden`. `steps`: the steps llama.cpp's
/// probabilities belong to, where the server left out steps in the middle (a token ending
/// mid-character reports at the step that completes it); `None`: the first ones.
fn assert_llama_cpp_golden(
    e: &EngineHandle,
    dir: &Path,
    mix: Mix,
    golden: &Golden,
    steps: Option<&[usize]>,
    tolerance: f32,
) {
    let &(fam, preset, ids, runner_ups, gaps) = golden;
    let spec = Spec::preset(synth::family(fam).unwrap(), preset, mix, 7).unwrap();
    let (_, path) = write(spec, dir, &format!("{fam}-{preset}.gguf"), 2);
    let prompt = Prompt::Raw("the quick brown fox".into());
    let (got, second, got_gaps) = greedy_top2(e, &path, prompt, 16);
    assert_eq!(got, ids, "{fam} {preset}: greedy tokens");
    let (second, got_gaps): (Vec<u32>, Vec<f32>) = match steps {
        Some(steps) => steps.iter().map(|&s| (second[s], got_gaps[s])).unzip(),
        None => (second, got_gaps),
    };
    // Where the second and third tokens are within float noise of each other the two
    // engines may name either; more than two such steps is not noise.
    let differ = second
        .iter()
        .zip(runner_ups)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differ <= 2,
        "{fam} {preset}: runner-ups {:?}, llama.cpp {runner_ups:?}",
        &second[..runner_ups.len()]
    );
    for (step, (g, want)) in got_gaps.iter().zip(gaps).enumerate() {
        assert!(
            (g - want).abs() < tolerance,
            "{fam} {preset} step {step}: top-2 gap {g} where llama.cpp has {want}"
        );
    }
}

/// Gemma 4 26B-A4B-shaped (`gen_gguf --family gemma4 --preset tiny-moe --quant q4_k_m --seed
/// 7`): each layer's GELU MLP beside 8 routed GELU experts (2 per token; gate and up in one
/// stacked tensor) with per-expert output scales, the router on its own scaled norm of the
/// input, a norm on each branch. Decodes llama.cpp `0c1e570`'s greedy tokens, runner-ups and
/// top-2 gaps, recorded as the newer families' goldens are (same server command and request).
///
/// The gaps are held to 0.35 nats, not 0.25: ggml computes GELU through an f16 table, so its
/// activations differ from exact GELU by about 1e-3, and a token whose second and third
/// experts are that close is routed differently by the two engines (llama.cpp itself moves
/// these gaps by up to 0.8 nats with a q8_0 KV cache). The engine stays within 0.3. Leaving
/// the experts' scales out of the engine, or routing on the experts' input instead of the
/// router's own scaled norm, changes more than two runner-ups and fails; llama.cpp on this
/// file with every expert scale at 1 moves the gaps by up to 0.9 nats, past 0.35 at 8 steps.
#[test]
fn gemma4_moe_decodes_llama_cpp_s_tokens_runner_ups_and_gaps() {
    #[rustfmt::skip]
    let golden: Golden = (
        "gemma4", "tiny-moe",
        &[706, 706, 706, 706, 706, 706, 706, 706, 706, 706, 706, 706, 706, 706, 706, 706],
        &[288, 45, 45, 717, 169, 54, 284, 45, 45, 45, 45, 716, 54, 54, 54, 54],
        &[2.707, 2.654, 2.046, 1.942, 2.356, 3.2, 1.994, 3.576, 3.356, 2.8, 2.654, 2.828, 2.789, 2.768, 2.929, 2.953],
    );
    let dir = tempfile::tempdir().unwrap();
    assert_llama_cpp_golden(&engine(), dir.path(), Mix::Q4KM, &golden, None, 0.35);
}

/// gpt-oss, generated tiny in llama-quantize's MXFP4_MOE mix (`gen_gguf --family gpt-oss
/// --preset tiny --quant mxfp4_moe --seed 7`: experts in MXFP4, the other matrices Q8_0),
/// decodes llama.cpp `0c1e570`'s greedy tokens with its runner-ups and top-2 gaps. Its
/// 11-token prompt and 16 steps run past the sliding window of 8, so the window, the
/// attention sinks, the biases, YaRN, the router's softmax over the chosen experts and the
/// clamped SwiGLU all move the gaps. Recorded as the newer families' goldens are (same
/// server command and request); the server reports 13 steps: steps 1, 6 and 7 end
/// mid-character.
#[test]
fn gpt_oss_decodes_llama_cpp_s_tokens_runner_ups_and_gaps() {
    #[rustfmt::skip]
    let golden: Golden = (
        "gpt-oss",
        "tiny",
        &[646, 147, 920, 872, 713, 962, 153, 178, 1004, 878, 994, 963, 327, 369, 936, 1003],
        &[558, 193, 836, 962, 88, 782, 430, 484, 798, 676, 86, 410, 598],
        &[4.06, 7.63, 6.688, 6.537, 6.422, 5.541, 8.944, 4.826, 3.032, 7.798, 5.462, 5.936, 7.444],
    );
    let dir = tempfile::tempdir().unwrap();
    let steps = [0, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15];
    assert_llama_cpp_golden(
        &engine(),
        dir.path(),
        Mix::Mxfp4Moe,
        &golden,
        Some(&steps),
        0.25,
    );
}

/// A harmony vocabulary (gpt-oss) stops at the end of a turn, `<|return|>` or `<|call|>`, and
/// not at `<|end|>`, which ends the reasoning message before the answer.
#[test]
fn harmony_vocabularies_stop_at_the_turn_s_end_not_the_message_s() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::preset(&synth::GPT_OSS, "tiny", Mix::Mxfp4Moe, 7).unwrap();
    let (_, path) = write(spec, dir.path(), "gpt-oss.gguf", 1);
    let tok = TextTokenizer::from_gguf_path(&path).unwrap();
    let id = |t: &str| {
        let ids = tok.encode(t).unwrap();
        assert_eq!(ids.len(), 1, "{t} is one control token");
        ids[0]
    };
    assert!(tok.is_stop(id("<|return|>")));
    assert!(tok.is_stop(id("<|call|>")));
    assert!(!tok.is_stop(id("<|end|>")));
    assert!(!tok.is_stop(id("<|message|>")));
}

/// A named harmony call's arguments are what gpt-oss writes after its call header: on a harmony
/// vocabulary (o200k-style pieces, control tokens) a schema constraint holds random weights to
/// well-formed arguments, which then end the output.
#[test]
fn a_harmony_vocabulary_writes_schema_arguments_under_a_constraint() {
    use influence::engine::Constraint;
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::preset(&synth::GPT_OSS, "tiny", Mix::Mxfp4Moe, 7).unwrap();
    let (_, path) = write(spec, dir.path(), "gpt-oss.gguf", 1);
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["city", "days"],
        "additionalProperties": false
    });
    let params = GenParams {
        constraint: Some(Box::new(Constraint::schema(schema, "tool_choice"))),
        ..GenParams::greedy(48)
    };
    let out = engine()
        .generate(GenRequest {
            model: path.clone(),
            prompt: Prompt::Raw(
                "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
                    .into(),
            ),
            params,
        })
        .collect_blocking()
        .unwrap();
    let args: serde_json::Value =
        serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{e}: {:?}", out.text));
    assert!(
        matches!(args["city"].as_str(), Some("Paris" | "Rome")),
        "{args}"
    );
    let days = args["days"].as_i64().unwrap();
    assert!((1..=9).contains(&days), "{args}");
    assert_eq!(args.as_object().unwrap().len(), 2, "{args}");
}

/// Gemma 4's shared-KV layers read earlier layers' caches and hold none of their own: the tiny
/// file's three cache-owning layers take (2 sliding × 2 KV heads × 64 + 1 full × 1 × 128) × 2
/// floats a position, where six owning layers would take twice that. The engine reports what
/// its buffers really hold, so a shared layer that allocated would show.
#[test]
fn gemma4_shared_kv_layers_allocate_no_cache() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::preset(&synth::GEMMA4, "tiny", Mix::Q4KM, 7).unwrap();
    let (plan, path) = write(spec, dir.path(), "gemma4.gguf", 2);
    assert!(plan
        .tensors
        .iter()
        .all(|t| !t.name.starts_with("blk.3.attn_k")));
    let e = engine();
    let mut gen = e.generate(GenRequest {
        model: path,
        prompt: Prompt::Raw("the quick brown fox".into()),
        params: GenParams::greedy(16),
    });
    let mut prompt_tokens = 0;
    let mut generated = 0;
    while let Some(ev) = gen.events.blocking_recv() {
        match ev {
            GenEvent::Started {
                prompt_tokens: n, ..
            } => prompt_tokens = n,
            GenEvent::Token { .. } => generated += 1,
            GenEvent::Done(_) => break,
            GenEvent::Failed(e) => panic!("{e}"),
        }
    }
    assert_eq!(generated, 16);
    let per_position = (2 * 2 * 64 + 128) * 2 * 4;
    // The slot reserved the prompt and 16 new tokens, and its buffers hold exactly that.
    assert_eq!(e.stats().kv_bytes, (prompt_tokens + 16) * per_position);
}

/// The library's memory estimate for a Gemma 4 file counts the KV cache the engine really
/// allocates: the engine's own layout from the header (two head widths, per-layer KV heads,
/// the listed sliding layers keeping only their window's rows, shared-KV layers holding
/// nothing). The dense tiny file's caches are 2 sliding (2 KV heads × 64) and 1 full (1 × 128);
/// the MoE file's 4 sliding and 2 full. A prompt past the windowed caches' 256 rows makes the
/// window count: the estimate's KV bytes equal the bytes the engine's buffers hold.
#[test]
fn gemma4_memory_estimate_counts_the_kv_cache_the_engine_allocates() {
    use influence::library::memory::{ModelShape, Windowed};
    let dir = tempfile::tempdir().unwrap();
    let floats = 2 * 2 * 64;
    for (preset, sliding, full) in [("tiny", 2, 1), ("tiny-moe", 4, 2)] {
        let spec = Spec::preset(&synth::GEMMA4, preset, Mix::Q4KM, 7).unwrap();
        let (_, path) = write(spec, dir.path(), &format!("gemma4-{preset}.gguf"), 2);
        let header = influence::library::gguf::read_header(&path).unwrap();
        let shape = ModelShape::from_metadata(&header.metadata).unwrap();
        // The Hub and `pull` read the same shape from the header's first 256 KB.
        let bytes = std::fs::read(&path).unwrap();
        let prefix = &bytes[..bytes.len().min(256 * 1024)];
        let head = influence::library::gguf::read_metadata_prefix(prefix).unwrap();
        assert_eq!(ModelShape::from_metadata(&head), Some(shape), "{preset}");
        assert_eq!(
            shape.kv_bytes_per_token,
            (sliding + full) * floats as u64 * 4,
            "{preset}"
        );
        assert_eq!(
            shape.windowed,
            Some(Windowed {
                window: 8,
                kv_bytes_per_token: sliding * floats as u64 * 4
            }),
            "{preset}"
        );
        let e = engine();
        let text = "the quick brown fox jumps over the lazy dog. ".repeat(40);
        let mut gen = e.generate(GenRequest {
            model: path,
            prompt: Prompt::Raw(text),
            params: GenParams::greedy(4),
        });
        let mut positions = 0;
        loop {
            match gen.events.blocking_recv() {
                Some(GenEvent::Started { prompt_tokens, .. }) => positions = prompt_tokens + 4,
                Some(GenEvent::Done(_)) => break,
                Some(GenEvent::Failed(e)) => panic!("{preset}: {e}"),
                Some(_) => {}
                None => panic!("{preset}: the engine stopped"),
            }
        }
        let rows = influence::engine::window_rows(8, influence::engine::PREFILL_CHUNK);
        assert!(positions > rows, "{preset}: {positions} positions");
        let held = e.stats().kv_bytes as u64;
        assert_eq!(shape.kv_bytes(positions as u64), held, "{preset}");
        // Every cache at every position would be more.
        assert!(
            held < shape.kv_bytes_per_token * positions as u64,
            "{preset}"
        );
    }
}

/// Gemma 4 metadata that cannot describe a model is refused at load with the key or layer at
/// fault, never a panic: too many shared-KV layers, a sliding-window pattern of the wrong
/// length, KV heads that do not divide the query heads.
#[test]
fn gemma4_metadata_that_cannot_work_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, synth::Meta, &str); 3] = [
        (
            "gemma4.attention.shared_kv_layers",
            synth::Meta::U32(5),
            "at least 2 must own one",
        ),
        (
            "gemma4.attention.sliding_window_pattern",
            synth::Meta::Array(7, vec![synth::Meta::Bool(true); 4]),
            "gemma4.attention.sliding_window_pattern",
        ),
        (
            "gemma4.attention.head_count_kv",
            synth::Meta::i32s([2, 2, 3, 2, 2, 1]),
            "invalid head counts 4/3",
        ),
    ];
    let e = engine();
    for (i, (key, value, want)) in cases.into_iter().enumerate() {
        let spec = Spec::preset(&synth::GEMMA4, "tiny", Mix::Q8_0, 7).unwrap();
        let mut plan = Plan::new(spec).unwrap();
        let slot = plan.metadata.iter_mut().find(|(k, _)| k == key).unwrap();
        slot.1 = value;
        let path = dir.path().join(format!("bad{i}.gguf"));
        synth::write_file(&plan, &path, 2).unwrap();
        let mut gen = e.generate(GenRequest {
            model: path,
            prompt: Prompt::Raw("hi".into()),
            params: GenParams::greedy(2),
        });
        let err = loop {
            match gen.events.blocking_recv() {
                Some(GenEvent::Failed(err)) => break err.to_string(),
                Some(GenEvent::Done(_)) | None => panic!("{key}: the bad file loaded"),
                Some(_) => {}
            }
        };
        assert!(err.contains(want), "{key}: {err}");
    }
}

/// A Granite hybrid whose per-layer KV heads mark no layer as attention, or list the wrong
/// number of layers, or give heads that do not divide the query heads, is refused at load with
/// what is wrong, never a panic.
#[test]
fn granite_hybrid_metadata_that_cannot_work_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, synth::Meta, &str); 3] = [
        (
            "granitehybrid.attention.head_count_kv",
            synth::Meta::i32s([0, 0, 0, 0]),
            "no attention layer",
        ),
        (
            "granitehybrid.attention.head_count_kv",
            synth::Meta::i32s([0, 2, 0]),
            "granitehybrid.attention.head_count_kv",
        ),
        (
            "granitehybrid.attention.head_count_kv",
            synth::Meta::i32s([0, 3, 0, 2]),
            "invalid head counts 4/3",
        ),
    ];
    let e = engine();
    for (i, (key, value, want)) in cases.into_iter().enumerate() {
        let spec = Spec::preset(&synth::GRANITEHYBRID, "tiny", Mix::Q8_0, 7).unwrap();
        let mut plan = Plan::new(spec).unwrap();
        let slot = plan.metadata.iter_mut().find(|(k, _)| k == key).unwrap();
        slot.1 = value;
        let path = dir.path().join(format!("bad{i}.gguf"));
        synth::write_file(&plan, &path, 2).unwrap();
        let mut gen = e.generate(GenRequest {
            model: path,
            prompt: Prompt::Raw("hi".into()),
            params: GenParams::greedy(2),
        });
        let err = loop {
            match gen.events.blocking_recv() {
                Some(GenEvent::Failed(err)) => break err.to_string(),
                Some(GenEvent::Done(_)) | None => panic!("case {i}: the bad file loaded"),
                Some(_) => {}
            }
        };
        assert!(err.contains(want), "case {i}: {err}");
    }
}

/// A Gemma 4 vocabulary (`tokenizer.ggml.model = gemma4`: merges over UTF-8, `▁` for spaces,
/// byte fallback, BOS always) encodes as llama.cpp does and decodes back. The ids are llama.cpp
/// `0c1e570`'s on the tiny gemma4 file: `llama-server -m F.gguf`, then POST `/tokenize` with
/// `{"content": TEXT, "add_special": true, "parse_special": true}`.
#[test]
fn gemma4_vocabulary_tokenizes_as_llama_cpp_does() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::preset(&synth::GEMMA4, "tiny", Mix::Q4KM, 7).unwrap();
    let (_, path) = write(spec, dir.path(), "gemma4.gguf", 2);
    let tok = TextTokenizer::from_gguf_path(&path).unwrap();
    let cases: [(&str, &[u32]); 4] = [
        (
            "the quick brown fox",
            &[1020, 276, 505, 309, 847, 381, 294, 274, 705, 270, 298, 706],
        ),
        (
            "hello world\n\nnew  line\n",
            &[
                1020, 264, 434, 619, 315, 700, 608, 10, 10, 270, 445, 256, 304, 540, 261, 10,
            ],
        ),
        (
            " leading space",
            &[1020, 304, 261, 322, 540, 263, 311, 272, 321, 261],
        ),
        (
            "<|turn>user\nhi<turn|>",
            &[1020, 1022, 857, 440, 10, 509, 1023],
        ),
    ];
    for (text, want) in cases {
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "{text:?}");
        assert_eq!(tok.decode(&ids[1..]).unwrap(), text, "{text:?}");
    }
}

/// A vocabulary that declares o200k's pre-tokenizer (`gpt-4o`, as real gpt-oss files do)
/// splits text as llama.cpp does: the generated vocabulary has merges across each place where
/// o200k's split differs from GPT-2's and Llama 3's (digit runs, a case change inside a word,
/// `I'm`, a tab before a word, punctuation before a newline, `é`), so another split gives other
/// ids. Recorded from llama.cpp `0c1e570`: `llama-server -m gpt-oss.gguf -t 2 -c 512 --port P`
/// on `gen_gguf --family gpt-oss --preset tiny --quant mxfp4_moe --seed 7`, then POST /tokenize
/// `{"content": TEXT, "add_special": true, "parse_special": true}`.
#[test]
fn gpt_4o_vocabulary_tokenizes_as_llama_cpp_does() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::preset(&synth::GPT_OSS, "tiny", Mix::Mxfp4Moe, 7).unwrap();
    let (_, path) = write(spec, dir.path(), "gpt-oss.gguf", 1);
    let tok = TextTokenizer::from_gguf_path(&path).unwrap();
    #[rustfmt::skip]
    let cases: [(&str, &[u32]); 5] = [
        (
            "I'm helloWorld: 12345 items!\n\tdone",
            &[968, 76, 263, 397, 582, 54, 663, 571, 25, 220, 958, 18, 961, 264, 83, 398, 82, 970, 197, 374, 624],
        ),
        (
            " caf\u{e9}  na\u{ef}ve \u{dc}ber 1234567;;; //path",
            &[258, 287, 976, 220, 269, 64, 127, 107, 832, 220, 127, 250, 312, 81, 220, 958, 18, 961, 21, 22, 974, 26, 220, 975, 79, 301, 71],
        ),
        (
            "HELLO world's DON'T stop. \nnext\r\n\n  x = 42",
            &[39, 36, 43, 43, 46, 278, 663, 571, 6, 82, 220, 35, 46, 45, 6, 51, 274, 83, 661, 13, 972, 77, 409, 83, 201, 198, 198, 220, 279, 220, 28, 220, 19, 17],
        ),
        (
            "<|start|>user<|message|>hi 2024<|end|>",
            &[1020, 820, 403, 1022, 472, 220, 17, 15, 17, 19, 1021],
        ),
        (
            "aB1 the quick brown fox",
            &[64, 33, 16, 275, 468, 272, 810, 344, 257, 81, 668, 77, 261, 669],
        ),
    ];
    for (text, want) in cases {
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "{text:?}");
        assert_eq!(tok.decode(&ids).unwrap(), text, "{text:?}");
    }
}

#[test]
fn synthetic_vocabulary_round_trips_text_and_knows_its_control_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, path) = write(tiny(Mix::Q8_0, 0), dir.path(), "t.gguf", 1);
    let tok = TextTokenizer::from_gguf_path(&path).unwrap();
    let text = "Hello, world! It's 2024:\n\tcafé ümlaut 🦀";
    let ids = tok.encode(text).unwrap();
    let vocab = plan.spec.shape.vocab as u32;
    assert_eq!(ids[0], tok.bos_id.unwrap(), "Llama 3 files add BOS");
    assert_eq!(tok.decode(&ids[1..]).unwrap(), text);
    assert!(ids.len() < text.len(), "merges apply: {ids:?}");
    let eot = tok.encode("<|eot_id|>").unwrap();
    assert_eq!(eot.len(), 2, "BOS + one control token: {eot:?}");
    assert!(tok.is_stop(eot[1]));
    assert_eq!(tok.eos_id, Some(eot[1]));
    assert!(eot[1] >= vocab - 6);
    assert_eq!(tok.decode(&[256]).unwrap(), " a", "the first merge");
    assert_eq!(
        tok.decode(&[256 + 26]).unwrap(),
        "aa",
        "the first letter pair"
    );
    // Filler words decode to text too: a space and letters.
    let filler = tok.decode(&[vocab - 10]).unwrap();
    let letters = &filler[1..filler.len() - 1];
    assert!(
        filler.starts_with(' ')
            && letters.len() >= 3
            && letters.chars().all(|c| c.is_ascii_lowercase())
            && filler.ends_with(|c: char| c.is_ascii_digit()),
        "{filler:?}"
    );
    // A word in the prompt that looks like a filler is still built from merges.
    let word = tok.encode(&filler).unwrap();
    assert!(word.len() > 2, "{filler:?} → {word:?}");
}

#[test]
fn tokenizer_from_a_real_file_is_copied_whole() {
    let smol = models::smollm();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = tiny(Mix::Q8_0, 0);
    spec.vocabulary = Some(synth::vocabulary_from_gguf(&smol).unwrap());
    let (plan, path) = write(spec, dir.path(), "smol-vocab.gguf", 2);
    assert_eq!(plan.spec.shape.vocab, 49152);
    let theirs = TextTokenizer::from_gguf_path(&smol).unwrap();
    let ours = TextTokenizer::from_gguf_path(&path).unwrap();
    let text = "<|im_start|>user\nOnce upon a time, there was a little girl<|im_end|>";
    assert_eq!(ours.encode(text).unwrap(), theirs.encode(text).unwrap());
    assert_eq!(ours.stop_ids, theirs.stop_ids);
    let (ids, gaps) = greedy(&engine(), &path, Prompt::Raw("Once upon a time".into()), 8);
    assert_eq!(ids.len(), 8);
    assert!(gaps.iter().all(|&g| g > 1.0), "{gaps:?}");
    assert!(
        plan.next_src.iter().filter(|&&s| s == u32::MAX).count() > 0,
        "control rows"
    );
    let head = plan
        .tensors
        .iter()
        .find(|t| t.role == Role::Output)
        .unwrap();
    assert_eq!(head.dims, vec![256, 49152]);
}

/// `influence run --json` on a generated model: one line per token with its id and the two
/// most likely tokens, then the statistics; the ids are the engine's greedy ids.
#[test]
fn run_json_lists_token_ids_with_top_logprobs() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = write(tiny(Mix::Q4KM, 5), dir.path(), "m.gguf", 2);
    let out = assert_cmd::Command::cargo_bin("influence")
        .unwrap()
        .env_clear()
        .env("INFLUENCE_HOME", dir.path())
        .env("HF_HOME", dir.path().join("hf"))
        .env("HOME", dir.path())
        .current_dir(dir.path())
        .args(["run", "--model"])
        .arg(&path)
        .args([
            "--json",
            "--temperature",
            "0",
            "--repeat-penalty",
            "1",
            "--max-tokens",
            "6",
            "--raw",
            "the quick brown fox",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7, "{stdout}");
    let ids: Vec<u32> = lines[..6]
        .iter()
        .map(|l| {
            let top = l["top"].as_array().unwrap();
            assert_eq!(top.len(), 2, "{l}");
            assert_eq!(top[0]["id"], l["id"]);
            assert!(
                top[0]["logprob"].as_f64().unwrap() - top[1]["logprob"].as_f64().unwrap() > 1.0
            );
            l["id"].as_u64().unwrap() as u32
        })
        .collect();
    let done = &lines[6];
    assert_eq!(done["generated_tokens"], 6);
    assert_eq!(done["finish"], "length");
    let (want, _) = greedy(
        &engine(),
        &path,
        Prompt::Raw("the quick brown fox".into()),
        6,
    );
    assert_eq!(ids, want);
}

/// The library reads a mixture-of-experts file's expert counts and the parameters one token
/// reads, and `show` states both; the memory estimate counts every expert. Gemma 4's experts
/// (gate and up stacked in one tensor, a scale per expert) count as the others' do.
#[test]
fn the_library_counts_a_moe_model_s_total_and_active_parameters() {
    for (family, preset) in [("qwen3moe", "tiny"), ("gemma4", "tiny-moe")] {
        library_counts_moe_parameters(family, preset);
    }
}

fn library_counts_moe_parameters(family: &str, preset: &str) {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::preset(synth::family(family).unwrap(), preset, Mix::Q8_0, 1).unwrap();
    let (plan, path) = write(spec, dir.path(), "moe.gguf", 2);
    let elems = |t: &synth::PlannedTensor| t.dims.iter().product::<usize>() as u64;
    let total: u64 = plan.tensors.iter().map(elems).sum();
    let experts: u64 = plan
        .tensors
        .iter()
        .filter(|t| t.name.contains("_exps."))
        .map(elems)
        .sum();
    assert!(experts > total / 2, "{family}: most weights are experts");
    let active = total - experts + experts * 2 / 8;
    let cli = || {
        let mut c = assert_cmd::Command::cargo_bin("influence").unwrap();
        c.env_clear()
            .env("INFLUENCE_HOME", dir.path())
            .env("HF_HOME", dir.path().join("hf"))
            .env("HOME", dir.path())
            .current_dir(dir.path());
        c
    };
    cli().arg("import").arg(&path).assert().success();
    let out = cli().args(["show", "moe", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["info"]["parameters"], total);
    assert_eq!(v["info"]["experts"], 8);
    assert_eq!(v["info"]["experts_used"], 2);
    assert_eq!(v["info"]["active_parameters"], active);
    let weights = v["info"]["weight_bytes"].as_u64().unwrap();
    let file = std::fs::metadata(&path).unwrap().len();
    assert!(
        weights > file / 2,
        "every expert counts: {weights} of a {file}-byte file"
    );
    let text = cli().args(["show", "moe"]).output().unwrap().stdout;
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("Experts:       8, 2 per token, "), "{text}");
}

/// A greedy run's ids, how many prompt tokens it took from the slot's cache, its prompt's
/// length, and per step the top-2 log-probability gap (the winner follows the generator's
/// token map whatever the state holds; the gap shows the state).
struct Run {
    ids: Vec<u32>,
    cached: usize,
    prompt: usize,
    gaps: Vec<f32>,
}

fn start(
    e: &EngineHandle,
    model: &Path,
    prompt: Prompt,
    n: usize,
) -> influence::engine::Generation {
    let mut params = GenParams::greedy(n);
    params.logprobs = Some(2);
    e.generate(GenRequest {
        model: model.to_path_buf(),
        prompt,
        params,
    })
}

fn finish(mut gen: influence::engine::Generation) -> Run {
    let mut run = Run {
        ids: Vec::new(),
        cached: usize::MAX,
        prompt: 0,
        gaps: Vec::new(),
    };
    while let Some(ev) = gen.events.blocking_recv() {
        match ev {
            GenEvent::Token { id, logprob, .. } => {
                let lp = logprob.expect("logprobs were asked for");
                run.ids.push(id);
                run.gaps.push(lp.top[0].logprob - lp.top[1].logprob);
            }
            GenEvent::Started {
                cached_tokens,
                prompt_tokens,
                ..
            } => (run.cached, run.prompt) = (cached_tokens, prompt_tokens),
            GenEvent::Done(_) => return run,
            GenEvent::Failed(e) => panic!("{e}"),
        }
    }
    panic!("the engine stopped");
}

fn greedy_cached(e: &EngineHandle, model: &Path, prompt: Prompt, n: usize) -> Run {
    finish(start(e, model, prompt, n))
}

fn same_gaps(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() < 1e-3, "{what} step {k}: gap {x} vs {y}");
    }
}

/// A recurrent state cannot be cut back to any position, so a chat's later requests resume
/// from a checkpoint kept before a prompt's last token (or from the live state when they
/// extend it), never from a state holding tokens they do not have. A regenerated answer, the
/// next turn and an edited answer each give exactly the tokens and gaps of a fresh engine that
/// reads the whole conversation. A hybrid's attention layers (Granite 4.0 H's, Qwen3.5's beside
/// its Gated DeltaNet layers) go back with its state.
#[test]
fn mamba_turns_resumed_from_a_checkpoint_match_a_fresh_run() {
    use influence::engine::ChatMessage;
    let dir = tempfile::tempdir().unwrap();
    for fam in ["mamba2", "mamba", "granitehybrid", "qwen35", "qwen35moe"] {
        let spec = Spec::preset(synth::family(fam).unwrap(), "tiny", Mix::Q8_0, 5).unwrap();
        let (_, path) = write(spec, dir.path(), &format!("{fam}.gguf"), 2);
        let tok = TextTokenizer::from_gguf_path(&path).unwrap();
        // A long first turn, so each later request shares more than half of what the slot
        // holds and the scheduler brings it back to the same slot.
        let turn1 = vec![ChatMessage::user(
            "the quick brown fox jumps over the lazy dog while the committee reviews the report",
        )];
        let e = engine();
        let first = greedy_cached(&e, &path, Prompt::Chat(turn1.clone()), 8);
        assert_eq!(first.cached, 0, "{fam}");
        let p1 = first.prompt;
        let answer = tok.decode(&first.ids).unwrap();
        let mut turn2 = turn1.clone();
        turn2.push(ChatMessage::assistant(answer));
        turn2.push(ChatMessage::user("ok"));
        // An edited answer: the conversation leaves the slot's tokens inside the answer.
        let mut edited = turn1.clone();
        edited.push(ChatMessage::assistant("no"));
        edited.push(ChatMessage::user("ok"));
        let convs = [&turn1, &turn2, &edited];
        let resumed: Vec<Run> = convs
            .iter()
            .map(|c| greedy_cached(&e, &path, Prompt::Chat(c.to_vec()), 8))
            .collect();
        let cached: Vec<usize> = resumed.iter().map(|r| r.cached).collect();
        assert_eq!(
            cached[0],
            p1 - 1,
            "{fam}: the regenerated answer: {cached:?}"
        );
        assert!(
            cached[1] >= p1 - 1,
            "{fam}: turn 2 re-read turn 1: {cached:?}"
        );
        assert_eq!(cached[2], p1 - 1, "{fam}: the edited answer: {cached:?}");
        assert_eq!(resumed[0].ids, first.ids, "{fam}: regenerating turn 1");
        same_gaps(
            &resumed[0].gaps,
            &first.gaps,
            &format!("{fam}: regenerated"),
        );
        for (k, conv) in convs.iter().enumerate() {
            let fresh = greedy_cached(&engine(), &path, Prompt::Chat(conv.to_vec()), 8);
            assert_eq!(fresh.cached, 0);
            assert_eq!(resumed[k].ids, fresh.ids, "{fam}: conversation {k}");
            same_gaps(
                &resumed[k].gaps,
                &fresh.gaps,
                &format!("{fam}: conversation {k}"),
            );
        }
    }
}

/// A hybrid's recurrent state and its turn checkpoints live inside the KV budget, counted as
/// the positions of as many bytes: a request is refused when its prompt and answer fit but its
/// state does not (the error says so), and an idle slot's state and checkpoints are evicted
/// when a new sequence needs their room, where counting KV positions alone would keep both.
#[test]
fn granite_hybrid_state_and_checkpoints_count_against_the_kv_budget() {
    use influence::engine::EngineError;
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::preset(
        synth::family("granitehybrid").unwrap(),
        "tiny",
        Mix::Q8_0,
        5,
    )
    .unwrap();
    let (_, path) = write(spec, dir.path(), "granitehybrid.gguf", 2);
    let budget_engine = |kv_budget| {
        EngineHandle::spawn(EngineOptions {
            threads: 2,
            max_loaded: 1,
            parallel: 2,
            kv_budget,
            ..EngineOptions::default()
        })
    };
    let req = |text: &str| GenRequest {
        model: path.clone(),
        prompt: Prompt::Raw(text.into()),
        params: GenParams::greedy(8),
    };
    let (a, b) = ("the quick brown fox", "jumps over the lazy dog again");
    let tiny = budget_engine(1);
    let refused = |text| match tiny.generate(req(text)).collect_blocking() {
        Err(EngineError::KvBudget {
            need,
            prompt_tokens,
            max_tokens,
            state_positions,
            budget: 1,
        }) => {
            assert_eq!(need, prompt_tokens + max_tokens + state_positions);
            (need, state_positions)
        }
        other => panic!("expected a KV budget error, got {other:?}"),
    };
    let (need_a, state) = refused(a);
    let (need_b, _) = refused(b);
    assert!(state > 0, "the state counts: {state}");
    let err = tiny.generate(req(a)).collect_blocking().unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "+ {state} for the recurrent state and its turn checkpoints"
        )),
        "{err}"
    );
    // Room for both sequences' KV and one state: B fits beside A's idle slot only once A's
    // state and checkpoints are gone.
    let budget = need_a + need_b - state;
    let e = budget_engine(budget);
    assert!(!e
        .generate(req(a))
        .collect_blocking()
        .unwrap()
        .ids
        .is_empty());
    let idle = e.stats();
    assert!(
        idle.kv_used > need_a - state,
        "A's slot holds its state: {idle:?}"
    );
    assert!(!e
        .generate(req(b))
        .collect_blocking()
        .unwrap()
        .ids
        .is_empty());
    let s = e.stats();
    assert!(s.evictions >= 1, "A's state was evicted for B: {s:?}");
    assert!(s.kv_used <= budget, "{s:?}");
}

/// `show` names a Mamba file's layers and the state one sequence carries in place of a KV cache
/// (layers × (window of conv − 1 inputs over x, B and C, plus inner × state), in f32).
#[test]
fn the_library_shows_a_mamba_model_s_state_instead_of_kv() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::preset(synth::family("mamba2").unwrap(), "tiny", Mix::Q8_0, 1).unwrap();
    let ssm = spec.shape.ssm;
    let per_layer =
        (ssm.conv - 1) * (ssm.inner + 2 * ssm.groups * ssm.state) + ssm.inner * ssm.state;
    let state = (spec.shape.layers * per_layer * 4) as u64;
    let (_, path) = write(spec, dir.path(), "m2.gguf", 2);
    let cli = || {
        let mut c = assert_cmd::Command::cargo_bin("influence").unwrap();
        c.env_clear()
            .env("INFLUENCE_HOME", dir.path())
            .env("HF_HOME", dir.path().join("hf"))
            .env("HOME", dir.path())
            .current_dir(dir.path());
        c
    };
    cli().arg("import").arg(&path).assert().success();
    let out = cli().args(["show", "m2", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["info"]["state_bytes"], state);
    assert_eq!(v["info"]["layer_kind"], "Mamba-2 (state space)");
    let text = cli().args(["show", "m2"]).output().unwrap().stdout;
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("Layers:        2 Mamba-2 (state space), no KV cache"),
        "{text}"
    );
    assert!(text.contains("State:"), "{text}");
}

/// `show` names a Granite hybrid's mix of layers, the state of its Mamba-2 layers and the KV
/// shape of its attention layers (tiny: layers 0 and 2 recurrent, 1 and 3 attention).
#[test]
fn the_library_shows_a_granite_hybrid_s_layer_mix_state_and_kv() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::preset(
        synth::family("granitehybrid").unwrap(),
        "tiny",
        Mix::Q8_0,
        1,
    )
    .unwrap();
    let ssm = spec.shape.ssm;
    let per_layer =
        (ssm.conv - 1) * (ssm.inner + 2 * ssm.groups * ssm.state) + ssm.inner * ssm.state;
    let state = (2 * per_layer * 4) as u64;
    let (_, path) = write(spec, dir.path(), "gh.gguf", 2);
    let cli = || {
        let mut c = assert_cmd::Command::cargo_bin("influence").unwrap();
        c.env_clear()
            .env("INFLUENCE_HOME", dir.path())
            .env("HF_HOME", dir.path().join("hf"))
            .env("HOME", dir.path())
            .current_dir(dir.path());
        c
    };
    cli().arg("import").arg(&path).assert().success();
    let out = cli().args(["show", "gh", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["info"]["state_bytes"], state);
    assert_eq!(
        v["info"]["layer_kind"],
        "2 Mamba-2 (state space) + 2 attention"
    );
    let text = cli().args(["show", "gh"]).output().unwrap().stdout;
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains(
            "Layers:        4: 2 Mamba-2 (state space) + 2 attention (KV heads 2, head dim 64)"
        ),
        "{text}"
    );
    assert!(text.contains("State:"), "{text}");
}

/// `show` names Qwen3.5's mix of layers (tiny: Gated DeltaNet at 0-2, gated attention at 3),
/// the state its DeltaNet layers carry per sequence (the convolution window over queries, keys
/// and values, and a head-width² matrix per value head, in f32) and its attention layers' KV
/// shape.
#[test]
fn the_library_shows_qwen35_s_layer_mix_state_and_kv() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::preset(synth::family("qwen35").unwrap(), "tiny", Mix::Q8_0, 1).unwrap();
    let ssm = spec.shape.ssm;
    let per_layer = (ssm.conv - 1) * (ssm.inner + 2 * ssm.groups * ssm.state)
        + ssm.rank * ssm.state * ssm.state;
    let state = (3 * per_layer * 4) as u64;
    let (_, path) = write(spec, dir.path(), "q35.gguf", 2);
    let cli = || {
        let mut c = assert_cmd::Command::cargo_bin("influence").unwrap();
        c.env_clear()
            .env("INFLUENCE_HOME", dir.path())
            .env("HF_HOME", dir.path().join("hf"))
            .env("HOME", dir.path())
            .current_dir(dir.path());
        c
    };
    cli().arg("import").arg(&path).assert().success();
    let out = cli().args(["show", "q35", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["info"]["state_bytes"], state);
    assert_eq!(
        v["info"]["layer_kind"],
        "3 Gated DeltaNet (linear attention) + 1 attention"
    );
    let text = cli().args(["show", "q35"]).output().unwrap().stdout;
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains(
            "Layers:        4: 3 Gated DeltaNet (linear attention) + 1 attention (KV heads 2, \
             head dim 64)"
        ),
        "{text}"
    );
}

/// Mamba sequences decode in one batched step, each on its own state (and, in a Granite
/// hybrid, its own KV cache): four concurrent requests give exactly the tokens each gives alone.
#[test]
fn mamba_sequences_batched_give_the_tokens_each_gives_alone() {
    for fam in ["mamba2", "granitehybrid", "qwen35", "qwen35moe"] {
        batched_matches_alone(fam);
    }
}

fn batched_matches_alone(fam: &str) {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::preset(synth::family(fam).unwrap(), "tiny", Mix::Q8_0, 9).unwrap();
    let (_, path) = write(spec, dir.path(), "m2.gguf", 2);
    let engine = || {
        EngineHandle::spawn(EngineOptions {
            threads: 2,
            max_loaded: 1,
            parallel: 4,
            ..EngineOptions::default()
        })
    };
    let prompts = [
        "the quick brown fox",
        "1, 2, 3,",
        "hello there",
        "a b c d e f g",
    ];
    let raw = |p: &str| Prompt::Raw(p.into());
    let alone: Vec<Run> = prompts
        .iter()
        .map(|p| greedy_cached(&engine(), &path, raw(p), 16))
        .collect();
    let e = engine();
    let gens: Vec<_> = prompts
        .iter()
        .map(|p| start(&e, &path, raw(p), 16))
        .collect();
    let together: Vec<Run> = gens.into_iter().map(finish).collect();
    let stats = e.stats();
    assert!(
        stats.max_batch >= 2,
        "{fam}: not decoded together: {stats:?}"
    );
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.ids.len(), 16, "{fam} request {i}");
        assert_eq!(a.ids, t.ids, "{fam} request {i} changed when batched");
        let bits = |r: &Run| r.gaps.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(a),
            bits(t),
            "{fam} request {i}: batching changed its numbers"
        );
    }
}

/// The recurrent families' engine tests again with their state held as tensors and stepped by
/// tensor ops (the path a GPU decoder takes; `INFLUENCE_RECURRENT=tensor` takes it on the CPU):
/// llama.cpp's goldens for mamba, mamba2, granitehybrid, qwen35 and qwen35moe, turns resumed
/// from checkpoints, batched decode giving each sequence's tokens and numbers, and the state
/// counted in the KV budget. They run in a child process, which the variable is set for.
#[test]
fn recurrent_families_pass_their_tests_with_the_state_on_the_device_path() {
    let tests = [
        "newer_families_decode_llama_cpp_s_tokens_runner_ups_and_gaps",
        "qwen35_families_decode_llama_cpp_s_tokens_runner_ups_and_gaps",
        "mamba_turns_resumed_from_a_checkpoint_match_a_fresh_run",
        "mamba_sequences_batched_give_the_tokens_each_gives_alone",
        "granite_hybrid_state_and_checkpoints_count_against_the_kv_budget",
    ];
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("INFLUENCE_RECURRENT", "tensor")
        .arg("--exact")
        .args(tests)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("test result: ok. {} passed", tests.len())),
        "not every test ran: {stdout}"
    );
}
