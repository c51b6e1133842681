//! Logs go to a file (never to the terminal the TUI draws on), written by a background thread.

use std::path::Path;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Lines the background writer's queue holds. tracing_appender's default (128,000) allocates
/// its whole queue up front, 4 MB, a tenth of a small model's memory; the writer thread empties
/// a few thousand lines long before a burst fills them. Past the limit lines are dropped (the
/// default lossy mode, kept), so logging never slows inference down.
const QUEUED_LINES: usize = 4096;

/// Starts logging into `dir/influence.log` (daily rotation). Keep the guard alive until exit so
/// the last lines are flushed. With `also_stderr`, headless modes mirror logs to stderr.
pub fn init(dir: &Path, level: &str, also_stderr: bool) -> std::io::Result<WorkerGuard> {
    std::fs::create_dir_all(dir)?;
    let appender = tracing_appender::rolling::daily(dir, "influence.log");
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .finish(appender);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},hyper=warn,reqwest=warn,h2=warn,tower=warn"
        ))
    });
    let file_layer = fmt::layer().with_writer(writer).with_ansi(false);
    let stderr_layer = also_stderr.then(|| fmt::layer().with_writer(std::io::stderr));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(file_layer)
        .with(stderr_layer)
        .try_init();
    Ok(guard)
}
