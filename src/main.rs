use clap::Parser;
use influence::cli::{Cli, Command};
use influence::{commands, config};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = |k: &str| std::env::var(k).ok();
    let cwd = std::env::current_dir().ok();
    let loaded = match config::load_with_dotenv(
        &env,
        cwd.as_deref(),
        cli.config.as_deref(),
        &cli.flag_overrides(),
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("influence: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    // Variables read outside the config (proxies, RUST_LOG, the remote API key, kernel switches)
    // see the `.env` values too. No thread has started yet, so changing the environment is safe.
    for (k, v) in loaded.dotenv.missing_from(&env) {
        std::env::set_var(k, v);
    }
    if loaded.config.engine.requant_q8 && std::env::var_os("INFLUENCE_REQUANT_Q8").is_none() {
        // The engine reads this once when it loads a model; set it before any thread starts.
        std::env::set_var("INFLUENCE_REQUANT_Q8", "1");
    }
    // The engine reads the KV cache type when it loads a model (`engine.kv_cache`, or the
    // INFLUENCE_KV_CACHE it was already read from); set it before any thread starts.
    std::env::set_var("INFLUENCE_KV_CACHE", &loaded.config.engine.kv_cache);
    std::env::set_var(
        "INFLUENCE_GPU_LAYERS",
        loaded.config.engine.gpu_layers.to_string(),
    );
    let _log_guard =
        match influence::logging::init(&loaded.dirs.log_dir, &loaded.config.log_level, cli.serve) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!(
                    "influence: warning: cannot write logs to {}: {e}",
                    loaded.dirs.log_dir.display()
                );
                None
            }
        };
    let ctx = context(&loaded);
    let result = match cli.command {
        Some(Command::Search(a)) => commands::search::run(a, &ctx),
        Some(Command::Pull(a)) => commands::pull::run(a, &ctx),
        Some(Command::List(a)) => commands::list::run(a, &ctx),
        Some(Command::Show(a)) => commands::show::run(a, &ctx),
        Some(Command::Verify(a)) => commands::verify::run(a, &ctx),
        Some(Command::Rm(a)) => commands::rm::run(a, &ctx),
        Some(Command::Cp(a)) => commands::cp::run(a, &ctx),
        Some(Command::Import(a)) => commands::import::run(a, &ctx),
        Some(Command::Run(mut a)) => commands::resolve_model(&a.model, &ctx).and_then(|p| {
            a.model = p;
            // On a terminal the answer is drawn as the chat draws it, in the user's theme.
            let theme = influence::config::theme::Theme::load(
                &loaded.config.theme,
                &loaded.dirs.config_dir,
            )
            .map_err(anyhow::Error::msg)?;
            let styles = influence::app::chat::markdown_styles(&theme);
            commands::run::run(&a, &ctx, &styles)
        }),
        Some(Command::Embed(mut a)) => commands::resolve_model(&a.model, &ctx).and_then(|p| {
            a.model = p;
            commands::embed::run(&a, &ctx)
        }),
        Some(Command::Bench(mut a)) => commands::resolve_model(&a.model, &ctx).and_then(|p| {
            a.model = p;
            commands::bench::run(&a, &ctx)
        }),
        Some(Command::Ps(a)) => {
            let key = Some(loaded.config.server.api_key.clone()).filter(|k| !k.is_empty());
            commands::ps::run(a, &ctx, key)
        }
        Some(Command::Config) => {
            print!("{}", loaded.describe());
            // What `engine.device` resolves to on this machine with this build.
            let built = influence::engine::device::compiled_backends();
            let built = if built.is_empty() {
                "none (CPU only)".to_string()
            } else {
                built.join(", ")
            };
            match influence::engine::device::select(loaded.device()) {
                Ok(c) => println!(
                    "# device:      {} ({}); GPU backends built: {built}",
                    c.label, c.reason
                ),
                Err(e) => println!("# device:      unusable: {e}; GPU backends built: {built}"),
            }
            Ok(())
        }
        None if cli.serve => influence::serve::run(loaded, cli.model.clone()),
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

/// What subcommands need from the configuration.
fn context(loaded: &config::Loaded) -> commands::Context {
    commands::Context {
        hf_home: loaded.hf_home(),
        data_dir: loaded.dirs.data_dir.clone(),
        endpoint: loaded.config.hub.endpoint.clone(),
        token: loaded.token(),
        threads: loaded.threads(),
        device: loaded.device(),
        model_dirs: loaded.model_dirs(),
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
