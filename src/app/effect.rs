//! Effects: what `update` asks the outside world to do, and the runner that does it.

use super::msg::Msg;
use crate::config::theme::Theme;
use std::path::PathBuf;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    LoadTheme(String),
}

/// Turns effects into IO and background tasks; results come back as `Msg`s.
pub struct EffectRunner {
    tx: UnboundedSender<Msg>,
    config_dir: PathBuf,
}

impl EffectRunner {
    pub fn new(tx: UnboundedSender<Msg>, config_dir: PathBuf) -> EffectRunner {
        EffectRunner { tx, config_dir }
    }

    pub fn sender(&self) -> UnboundedSender<Msg> {
        self.tx.clone()
    }

    pub fn run(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::LoadTheme(name) => {
                    let msg = match Theme::load(&name, &self.config_dir) {
                        Ok(t) => Msg::ThemeLoaded(Box::new(t)),
                        Err(e) => Msg::ThemeFailed(e),
                    };
                    let _ = self.tx.send(msg);
                }
            }
        }
    }
}
