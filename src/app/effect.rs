//! Effects: what `update` asks the outside world to do, and the runner that does it.

use super::msg::Msg;
use crate::config::theme::Theme;
use std::path::PathBuf;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    LoadTheme(String),
    Chat(super::chat::ChatEffect),
}

/// Turns effects into IO and background tasks; results come back as `Msg`s.
pub struct EffectRunner {
    tx: UnboundedSender<Msg>,
    config_dir: PathBuf,
    chat: Option<super::chat::runner::ChatRunner>,
}

impl EffectRunner {
    pub fn new(tx: UnboundedSender<Msg>, config_dir: PathBuf) -> EffectRunner {
        EffectRunner {
            tx,
            config_dir,
            chat: None,
        }
    }

    /// Gives the runner the engine and conversation store the chat works with.
    pub fn with_chat(mut self, chat: super::chat::runner::ChatRunner) -> EffectRunner {
        self.chat = Some(chat);
        self
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
                Effect::Chat(e) => match self.chat.as_mut() {
                    Some(chat) => chat.run(e, &self.tx),
                    None => tracing::warn!(?e, "chat effect without a chat runner"),
                },
            }
        }
    }
}
