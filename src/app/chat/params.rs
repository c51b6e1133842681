//! The Parameters sidebar: generation parameters edited in place with validation, and
//! per-model presets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::{ContextPolicy, GenParams};

/// The editable fields, in sidebar order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Temperature,
    TopP,
    TopK,
    MinP,
    RepeatPenalty,
    MaxTokens,
    Seed,
    Context,
    SystemPrompt,
}

impl Field {
    pub const ALL: [Field; 9] = [
        Field::Temperature,
        Field::TopP,
        Field::TopK,
        Field::MinP,
        Field::RepeatPenalty,
        Field::MaxTokens,
        Field::Seed,
        Field::Context,
        Field::SystemPrompt,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Field::Temperature => "Temperature",
            Field::TopP => "Top-p",
            Field::TopK => "Top-k",
            Field::MinP => "Min-p",
            Field::RepeatPenalty => "Repeat pen.",
            Field::MaxTokens => "Max tokens",
            Field::Seed => "Seed",
            Field::Context => "Context",
            Field::SystemPrompt => "System prompt",
        }
    }

    /// The key used by `/set`.
    pub fn key(self) -> &'static str {
        match self {
            Field::Temperature => "temperature",
            Field::TopP => "top_p",
            Field::TopK => "top_k",
            Field::MinP => "min_p",
            Field::RepeatPenalty => "repeat_penalty",
            Field::MaxTokens => "max_tokens",
            Field::Seed => "seed",
            Field::Context => "context",
            Field::SystemPrompt => "system",
        }
    }

    /// Accepts the `/set` key, its dashed form and the label.
    pub fn parse(s: &str) -> Option<Field> {
        let s = s.trim().to_ascii_lowercase().replace('-', "_");
        Field::ALL.into_iter().find(|f| {
            f.key() == s
                || f.label().to_ascii_lowercase().replace(['-', ' '], "_") == s
                || (s == "ctx" && *f == Field::Context)
                || (s == "system_prompt" && *f == Field::SystemPrompt)
        })
    }
}

/// What a preset stores for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preset {
    pub params: GenParams,
    #[serde(default)]
    pub system_prompt: String,
    /// Context budget in tokens; 0 = the model's own context.
    #[serde(default)]
    pub context: usize,
}

/// `<data_dir>/presets.json`: model name → preset.
pub type Presets = BTreeMap<String, Preset>;

#[derive(Debug, Clone, Default)]
pub struct ParamsState {
    pub params: GenParams,
    pub system_prompt: String,
    /// Context budget in tokens for the meter and its warning; 0 = the model's context.
    pub context: usize,
    pub selected: usize,
    /// The text being typed into the selected field.
    pub editing: Option<String>,
    /// Why the last edit was refused.
    pub error: Option<String>,
    pub presets: Presets,
    /// The model whose preset is being edited (the loaded model's name).
    pub preset_for: Option<String>,
}

impl ParamsState {
    /// Built from the `[chat]` config section and the engine's context policy.
    pub fn from_config(c: &crate::config::Config) -> ParamsState {
        let params = GenParams {
            temperature: c.chat.temperature,
            top_p: c.chat.top_p,
            top_k: c.chat.top_k,
            min_p: c.chat.min_p,
            repeat_penalty: c.chat.repeat_penalty,
            max_tokens: c.chat.max_tokens,
            seed: c.chat.seed.trim().parse().ok(),
            context_policy: if c.engine.context_policy == "drop-oldest" {
                ContextPolicy::DropOldest
            } else {
                ContextPolicy::Error
            },
            ..GenParams::default()
        };
        ParamsState {
            params,
            system_prompt: c.chat.system_prompt.clone(),
            ..ParamsState::default()
        }
    }

    pub fn field(&self) -> Field {
        Field::ALL[self.selected.min(Field::ALL.len() - 1)]
    }

    /// The field's value as shown and as offered for editing.
    pub fn value(&self, f: Field) -> String {
        let p = &self.params;
        match f {
            Field::Temperature => format!("{:.2}", p.temperature),
            Field::TopP => format!("{:.2}", p.top_p),
            Field::TopK => p.top_k.to_string(),
            Field::MinP => format!("{:.2}", p.min_p),
            Field::RepeatPenalty => format!("{:.2}", p.repeat_penalty),
            Field::MaxTokens => p.max_tokens.to_string(),
            Field::Seed => p.seed.map_or_else(|| "random".into(), |s| s.to_string()),
            Field::Context => {
                if self.context == 0 {
                    "model".into()
                } else {
                    self.context.to_string()
                }
            }
            Field::SystemPrompt => self.system_prompt.clone(),
        }
    }

    /// Sets a field from text. Invalid input leaves every value as it was and says why.
    pub fn set(&mut self, f: Field, text: &str) -> Result<(), String> {
        let t = text.trim();
        let num = |t: &str| -> Result<f32, String> {
            t.parse::<f32>()
                .map_err(|_| format!("{} must be a number, not {t:?}", f.key()))
        };
        let int = |t: &str| -> Result<usize, String> {
            t.parse::<usize>()
                .map_err(|_| format!("{} must be a whole number, not {t:?}", f.key()))
        };
        let mut p = self.params.clone();
        match f {
            Field::Temperature => p.temperature = num(t)?,
            Field::TopP => p.top_p = num(t)?,
            Field::TopK => p.top_k = int(t)?,
            Field::MinP => p.min_p = num(t)?,
            Field::RepeatPenalty => p.repeat_penalty = num(t)?,
            Field::MaxTokens => p.max_tokens = int(t)?,
            Field::Seed => {
                p.seed = if t.is_empty() || t.eq_ignore_ascii_case("random") {
                    None
                } else {
                    Some(t.parse::<u64>().map_err(|_| {
                        format!("seed must be a whole number or \"random\", not {t:?}")
                    })?)
                }
            }
            Field::Context => {
                self.context = if t.is_empty() || t.eq_ignore_ascii_case("model") {
                    0
                } else {
                    let n = int(t)?;
                    if !(128..=1_048_576).contains(&n) {
                        return Err(format!(
                            "context = {n} is out of range; allowed 128..=1048576, or \"model\""
                        ));
                    }
                    n
                };
                return Ok(());
            }
            Field::SystemPrompt => {
                self.system_prompt = text.to_string();
                return Ok(());
            }
        }
        p.validate()?;
        self.params = p;
        Ok(())
    }

    pub fn preset(&self) -> Preset {
        Preset {
            params: self.params.clone(),
            system_prompt: self.system_prompt.clone(),
            context: self.context,
        }
    }

    /// Applies the preset saved for `model`, if any; returns whether one was applied.
    pub fn restore_for(&mut self, model: &str) -> bool {
        self.preset_for = Some(model.to_string());
        let Some(p) = self.presets.get(model).cloned() else {
            return false;
        };
        if p.params.validate().is_err() {
            return false;
        }
        // The policy is the engine's setting, not the preset's.
        let policy = self.params.context_policy;
        self.params = p.params;
        self.params.context_policy = policy;
        self.system_prompt = p.system_prompt;
        self.context = p.context;
        true
    }

    /// Records the current values as the loaded model's preset; returns the presets to save.
    pub fn remember(&mut self) -> Option<Presets> {
        let model = self.preset_for.clone()?;
        self.presets.insert(model, self.preset());
        Some(self.presets.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_input_keeps_the_old_value_and_says_why() {
        let mut p = ParamsState::default();
        assert!(p.set(Field::Temperature, "0.3").is_ok());
        assert_eq!(p.params.temperature, 0.3);
        let e = p.set(Field::Temperature, "9").unwrap_err();
        assert!(e.contains("temperature") && e.contains("allowed"), "{e}");
        assert_eq!(p.params.temperature, 0.3);
        let e = p.set(Field::TopK, "many").unwrap_err();
        assert!(e.contains("whole number"), "{e}");
        assert!(p.set(Field::Seed, "42").is_ok());
        assert_eq!(p.params.seed, Some(42));
        assert!(p.set(Field::Seed, "random").is_ok());
        assert_eq!(p.params.seed, None);
        assert!(p.set(Field::Context, "12").is_err());
        assert!(p.set(Field::Context, "4096").is_ok());
        assert_eq!(p.value(Field::Context), "4096");
    }

    #[test]
    fn presets_restore_per_model() {
        let mut p = ParamsState {
            preset_for: Some("a".into()),
            ..ParamsState::default()
        };
        p.set(Field::MaxTokens, "77").unwrap();
        let saved = p.remember().unwrap();
        assert_eq!(saved["a"].params.max_tokens, 77);
        p.set(Field::MaxTokens, "5").unwrap();
        assert!(!p.restore_for("b"));
        assert_eq!(p.params.max_tokens, 5);
        assert!(p.restore_for("a"));
        assert_eq!(p.params.max_tokens, 77);
        assert_eq!(Field::parse("top-p"), Some(Field::TopP));
        assert_eq!(Field::parse("Repeat_penalty"), Some(Field::RepeatPenalty));
    }
}
