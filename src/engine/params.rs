//! Sampling and context parameters of a generation, with validation that names the bad field.

use serde::{Deserialize, Serialize};

/// What to do when prompt + `max_tokens` does not fit the model's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextPolicy {
    /// Refuse with [`super::EngineError::ContextOverflow`].
    #[default]
    Error,
    /// Drop the oldest non-system messages until it fits (chat prompts only).
    DropOldest,
}

/// Generation parameters. `Default` follows llama.cpp's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling mass; 1 = off.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Drop tokens whose probability is below `min_p` × the top probability; 0 = off.
    pub min_p: f32,
    /// Penalty applied to tokens seen in the last `repeat_last_n` tokens; 1 = off.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub max_tokens: usize,
    /// Fixed seed for reproducible sampling; `None` = random.
    pub seed: Option<u64>,
    /// Strings that end the generation (not emitted).
    pub stop: Vec<String>,
    pub context_policy: ContextPolicy,
    /// A grammar the output must match (structured output, forced tool calls). Set by the API
    /// per request, never saved with presets.
    #[serde(skip)]
    pub constraint: Option<Box<super::constraint::Constraint>>,
    /// Report each token's log-probability and this many most likely alternatives (at most
    /// [`MAX_TOP_LOGPROBS`]); `None` = off. Per request, never saved.
    #[serde(skip)]
    pub logprobs: Option<u8>,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            max_tokens: 512,
            seed: None,
            stop: Vec::new(),
            context_policy: ContextPolicy::Error,
            constraint: None,
            logprobs: None,
        }
    }
}

/// Upper bounds, shared by validation messages and clap help.
pub const MAX_TEMPERATURE: f32 = 2.0;
pub const MAX_REPEAT_PENALTY: f32 = 5.0;
pub const MAX_STOP_STRINGS: usize = 16;
pub const MAX_TOKENS_LIMIT: usize = 1_000_000;
pub const MAX_TOP_LOGPROBS: usize = 20;

impl GenParams {
    /// Greedy decoding with no repeat penalty: deterministic, for tests and comparisons.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            repeat_penalty: 1.0,
            max_tokens,
            ..Self::default()
        }
    }

    /// Checks every field; the error names the field, the value and the allowed range.
    pub fn validate(&self) -> Result<(), String> {
        fn in_range(name: &str, v: f32, lo: f32, hi: f32, note: &str) -> Result<(), String> {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err(format!(
                    "{name} = {v} is out of range; allowed {lo}..={hi}{note}"
                ))
            }
        }
        in_range(
            "temperature",
            self.temperature,
            0.0,
            MAX_TEMPERATURE,
            " (0 = greedy)",
        )?;
        in_range("top_p", self.top_p, 0.0, 1.0, " (1 = off)")?;
        in_range("min_p", self.min_p, 0.0, 1.0, " (0 = off)")?;
        if !(self.repeat_penalty.is_finite()
            && self.repeat_penalty > 0.0
            && self.repeat_penalty <= MAX_REPEAT_PENALTY)
        {
            return Err(format!(
                "repeat_penalty = {} is out of range; allowed greater than 0 up to {MAX_REPEAT_PENALTY} (1 = off)",
                self.repeat_penalty
            ));
        }
        if self.max_tokens == 0 || self.max_tokens > MAX_TOKENS_LIMIT {
            return Err(format!(
                "max_tokens = {} is out of range; allowed 1..={MAX_TOKENS_LIMIT}",
                self.max_tokens
            ));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(format!(
                "stop has {} entries; allowed at most {MAX_STOP_STRINGS}",
                self.stop.len()
            ));
        }
        if let Some(n) = self.logprobs.filter(|n| *n as usize > MAX_TOP_LOGPROBS) {
            return Err(format!(
                "top_logprobs = {n} is out of range; allowed 0..={MAX_TOP_LOGPROBS}"
            ));
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err("stop contains an empty string; allowed: non-empty strings".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        GenParams::default().validate().unwrap();
        GenParams::greedy(16).validate().unwrap();
    }

    #[test]
    fn bad_fields_are_named_with_range() {
        let cases: Vec<(GenParams, &str)> = vec![
            (
                GenParams {
                    temperature: -0.1,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                GenParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                GenParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                GenParams {
                    min_p: -1.0,
                    ..Default::default()
                },
                "min_p",
            ),
            (
                GenParams {
                    repeat_penalty: 0.0,
                    ..Default::default()
                },
                "repeat_penalty",
            ),
            (
                GenParams {
                    max_tokens: 0,
                    ..Default::default()
                },
                "max_tokens",
            ),
            (
                GenParams {
                    stop: vec![String::new()],
                    ..Default::default()
                },
                "stop",
            ),
        ];
        for (p, field) in cases {
            let err = p.validate().unwrap_err();
            assert!(err.starts_with(field), "{err} should name {field}");
            assert!(
                err.contains("allowed"),
                "{err} should give the allowed range"
            );
        }
    }

    #[test]
    fn serde_fills_defaults() {
        let p: GenParams = serde_json::from_str(r#"{"temperature":0,"stop":["\n"]}"#).unwrap();
        assert_eq!(p.temperature, 0.0);
        assert_eq!(p.top_k, 40);
        assert_eq!(p.stop, vec!["\n".to_string()]);
        let p: GenParams = serde_json::from_str(r#"{"context_policy":"drop_oldest"}"#).unwrap();
        assert_eq!(p.context_policy, ContextPolicy::DropOldest);
    }
}
