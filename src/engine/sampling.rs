//! Token sampling: repeat penalty, then greedy argmax (temperature 0) or
//! top-k → top-p → min-p → temperature → draw, with a seedable RNG.
//!
//! The filter order follows llama.cpp's default chain; top-p and min-p are measured on the
//! untempered distribution, temperature only reshapes what survives.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::GenParams;

pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    repeat_last_n: usize,
    rng: StdRng,
}

impl Sampler {
    pub fn new(p: &GenParams) -> Self {
        let rng = match p.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        Self {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            repeat_last_n: p.repeat_last_n,
            rng,
        }
    }

    /// Picks the next token. `history` holds the context so far (prompt + generated).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.apply_repeat_penalty(logits, history);
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        // Candidates sorted by logit, descending.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, l)| (i as u32, *l))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if self.top_k > 0 && self.top_k < cand.len() {
            cand.select_nth_unstable_by(self.top_k - 1, by_logit);
            cand.truncate(self.top_k);
        }
        cand.sort_unstable_by(by_logit);

        let probs = softmax(cand.iter().map(|c| c.1), 1.0);
        let mut keep = cand.len();
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if self.min_p > 0.0 {
            let floor = probs[0] * self.min_p;
            keep = keep.min(probs.iter().take_while(|p| **p >= floor).count().max(1));
        }
        cand.truncate(keep.max(1));

        let probs = softmax(cand.iter().map(|c| c.1), self.temperature);
        let r: f32 = self.rng.random();
        let mut acc = 0.0;
        for (c, p) in cand.iter().zip(&probs) {
            acc += p;
            if r < acc {
                return c.0;
            }
        }
        cand[cand.len() - 1].0
    }

    fn apply_repeat_penalty(&self, logits: &mut [f32], history: &[u32]) {
        if self.repeat_penalty == 1.0 || self.repeat_last_n == 0 {
            return;
        }
        let start = history.len().saturating_sub(self.repeat_last_n);
        let mut seen = std::collections::HashSet::new();
        for &id in &history[start..] {
            if !seen.insert(id) {
                continue;
            }
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 {
                    *l / self.repeat_penalty
                } else {
                    *l * self.repeat_penalty
                };
            }
        }
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-probability of `id` under `logits` (temperature 1), and the `top` most likely ids with
/// theirs, most likely first. Tokens at −∞ (masked) have no probability and are never listed.
pub fn logprobs(logits: &[f32], id: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|l| ((l - max) as f64).exp())
        .sum();
    let norm = max + sum.ln() as f32;
    let lp = |l: f32| {
        if l.is_finite() {
            l - norm
        } else {
            f32::NEG_INFINITY
        }
    };
    let chosen = logits
        .get(id as usize)
        .map_or(f32::NEG_INFINITY, |l| lp(*l));
    let mut best: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, l)| (i as u32, *l))
        .collect();
    let by = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
    if top > 0 && top < best.len() {
        best.select_nth_unstable_by(top - 1, by);
    }
    best.truncate(top);
    best.sort_unstable_by(by);
    (chosen, best.into_iter().map(|(i, l)| (i, lp(l))).collect())
}

fn softmax(logits: impl Iterator<Item = f32> + Clone, temperature: f32) -> Vec<f32> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.map(|l| ((l - max) / temperature).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32, seed: u64) -> GenParams {
        GenParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty: 1.0,
            seed: Some(seed),
            ..GenParams::default()
        }
    }

    fn draw_counts(p: &GenParams, logits: &[f32], n: usize) -> Vec<usize> {
        let mut s = Sampler::new(p);
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[s.sample(&mut logits.to_vec(), &[]) as usize] += 1;
        }
        counts
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let logits = [0.0, 1.0, f32::NEG_INFINITY, 2.0];
        let (lp, top) = logprobs(&logits, 1, 2);
        let z = (0f32.exp() + 1f32.exp() + 2f32.exp()).ln();
        assert!((lp - (1.0 - z)).abs() < 1e-5);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![3, 1]);
        assert!((top[0].1 - (2.0 - z)).abs() < 1e-5);
        let total: f32 = logprobs(&logits, 0, 4).1.iter().map(|t| t.1.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        assert_eq!(logprobs(&logits, 2, 0).0, f32::NEG_INFINITY);
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(&params(0.0, 0, 1.0, 0.0, 1));
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[]), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let c = draw_counts(&params(1.0, 1, 1.0, 0.0, 7), &[1.0, 2.0, 1.5], 50);
        assert_eq!(c, vec![0, 50, 0]);
    }

    #[test]
    fn top_k_limits_support() {
        let c = draw_counts(&params(1.0, 2, 1.0, 0.0, 7), &[1.0, 2.0, 1.9, 0.0], 400);
        assert_eq!(c[0] + c[3], 0);
        assert!(c[1] > 0 && c[2] > 0);
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // probs ≈ [0.64, 0.24, 0.09, 0.03]; top_p 0.8 keeps the first two.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let c = draw_counts(&params(1.0, 0, 0.8, 0.0, 3), &logits, 500);
        assert_eq!(c[2] + c[3], 0, "{c:?}");
        assert!(c[1] > 50, "{c:?}");
    }

    #[test]
    fn min_p_cuts_relative_to_top() {
        // p1/p0 = e^-1 ≈ 0.37 survives min_p 0.3; p2/p0 = e^-2 ≈ 0.14 does not.
        let logits = [3.0, 2.0, 1.0];
        let c = draw_counts(&params(1.0, 0, 1.0, 0.3, 5), &logits, 500);
        assert_eq!(c[2], 0, "{c:?}");
        assert!(c[1] > 0, "{c:?}");
    }

    #[test]
    fn same_seed_same_sequence() {
        let logits = [1.0, 1.1, 0.9, 1.05, 0.95];
        let p = params(1.0, 0, 1.0, 0.0, 42);
        assert_eq!(draw_counts(&p, &logits, 200), draw_counts(&p, &logits, 200));
        let mut a = Sampler::new(&p);
        let mut b = Sampler::new(&params(1.0, 0, 1.0, 0.0, 43));
        let sa: Vec<u32> = (0..32)
            .map(|_| a.sample(&mut logits.to_vec(), &[]))
            .collect();
        let sb: Vec<u32> = (0..32)
            .map(|_| b.sample(&mut logits.to_vec(), &[]))
            .collect();
        assert_ne!(sa, sb);
    }

    #[test]
    fn low_temperature_sharpens() {
        let logits = [1.0, 1.5];
        let hot = draw_counts(&params(2.0, 0, 1.0, 0.0, 9), &logits, 1000);
        let cold = draw_counts(&params(0.1, 0, 1.0, 0.0, 9), &logits, 1000);
        assert!(cold[1] > hot[1], "cold {cold:?} hot {hot:?}");
        assert!(cold[1] > 990, "{cold:?}");
    }

    #[test]
    fn repeat_penalty_changes_greedy_choice() {
        let p = GenParams {
            temperature: 0.0,
            repeat_penalty: 2.0,
            repeat_last_n: 4,
            ..GenParams::default()
        };
        let mut s = Sampler::new(&p);
        // token 0 (logit 2.0 → 1.0) falls below token 1 (1.5).
        assert_eq!(s.sample(&mut [2.0, 1.5, -1.0], &[0]), 1);
        // Outside the window the penalty does not apply.
        assert_eq!(s.sample(&mut [2.0, 1.5, -1.0], &[0, 2, 2, 2, 2]), 0);
        // Negative logits are pushed further down.
        assert_eq!(s.sample(&mut [-1.0, -1.5, -9.0], &[0]), 1);
    }
}
