//! Effects: what `update` asks the outside world to do, and the runner that does it.

use super::library::{LibraryEffect, LibraryMsg};
use super::msg::Msg;
use crate::config::theme::Theme;
use crate::library::{Library, LibraryRoots};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    LoadTheme(String),
    Library(LibraryEffect),
}

/// Turns effects into IO and background tasks; results come back as `Msg`s.
pub struct EffectRunner {
    tx: UnboundedSender<Msg>,
    config_dir: PathBuf,
    library_roots: LibraryRoots,
}

impl EffectRunner {
    pub fn new(
        tx: UnboundedSender<Msg>,
        config_dir: PathBuf,
        library_roots: LibraryRoots,
    ) -> EffectRunner {
        EffectRunner {
            tx,
            config_dir,
            library_roots,
        }
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
                Effect::Library(e) => self.library(e),
            }
        }
    }

    /// Library work reads whole files (verify) or walks folders (scan): always off the loop.
    fn library(&mut self, effect: LibraryEffect) {
        let tx = self.tx.clone();
        let send = move |m: LibraryMsg| {
            let _ = tx.send(Msg::Library(m));
        };
        let roots = self.library_roots.clone();
        let job = move || match effect {
            LibraryEffect::Scan => {
                let lib = Library::scan(&roots);
                send(LibraryMsg::Scanned {
                    models: Arc::new(lib.models().to_vec()),
                    warnings: lib.warnings().to_vec(),
                });
            }
            LibraryEffect::Verify(model) => {
                let mut last = Instant::now();
                let name = model.name.clone();
                let report = crate::library::verify(&model, &mut |done, total| {
                    // A few updates per second are plenty for a progress line.
                    if last.elapsed() >= Duration::from_millis(200) {
                        last = Instant::now();
                        send(LibraryMsg::VerifyProgress {
                            model: name.clone(),
                            done,
                            total,
                        });
                    }
                });
                send(LibraryMsg::Verified(report));
            }
            LibraryEffect::PlanDelete(model) => {
                let lib = Library::scan(&roots);
                let plan = lib.delete_plan(&model).map_err(|e| e.to_string());
                send(LibraryMsg::DeletePlanned(plan));
            }
            LibraryEffect::Delete(plan) => {
                let result = plan
                    .execute()
                    .map(|()| plan.bytes_freed)
                    .map_err(|e| e.to_string());
                send(LibraryMsg::Deleted {
                    model: plan.model.clone(),
                    result,
                });
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("library".into())
            .spawn(job)
        {
            tracing::error!("cannot start a library thread: {e}");
        }
    }
}
