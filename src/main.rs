use clap::Parser;
use influence::cli::{Cli, Command};
use influence::config;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = |k: &str| std::env::var(k).ok();
    let loaded = match config::load(&env, cli.config.as_deref(), &cli.flag_overrides()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("influence: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_guard =
        match influence::logging::init(&loaded.dirs.log_dir, &loaded.config.log_level, false) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!(
                    "influence: warning: cannot write logs to {}: {e}",
                    loaded.dirs.log_dir.display()
                );
                None
            }
        };
    let result = match cli.command {
        Some(Command::Config) => {
            print!("{}", loaded.describe());
            Ok(())
        }
        None => run_tui(loaded, cli.model),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("influence: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_tui(loaded: config::Loaded, model: Option<String>) -> anyhow::Result<()> {
    influence::tui::terminal::install_panic_hook();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(influence::tuiapp::run(loaded, model))
}
