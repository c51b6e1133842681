//! `influence pull REPO`: download a model (one GGUF quant, or a safetensors set) into the
//! Hugging Face cache, with progress on stderr.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context as _};

use crate::commands::Context;
use crate::downloads::{self, DownloadEvent, DownloadSpec, ManagerConfig, Progress};
use crate::hub::{
    fit_for, group_gguf, human_bytes, select_files, validate_repo_id, HubClient, MemInfo,
    PullRequest,
};

/// Download a model from the Hub into the Hugging Face cache.
#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    /// Repository id, e.g. `bartowski/Llama-3.2-1B-Instruct-GGUF`.
    pub repo: String,
    /// Exact file(s) to download instead of the automatic choice (repeatable).
    #[arg(long = "file", short = 'f')]
    pub files: Vec<String>,
    /// GGUF quantization to download, e.g. `Q4_K_M` (default: a balanced one).
    #[arg(long, short = 'q')]
    pub quant: Option<String>,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
}

pub fn run(args: PullArgs, ctx: &Context) -> anyhow::Result<()> {
    validate_repo_id(&args.repo)?;
    let client = HubClient::new(&ctx.endpoint, ctx.token.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    // A queue of its own per run, so a script never resumes the TUI's downloads; resuming a
    // file across runs still works because the listing gives its sha256 (the partial's name).
    let queue_dir = ctx
        .data_dir
        .join("cli-pull")
        .join(std::process::id().to_string());
    let result = rt.block_on(pull(client, args, ctx.hub_cache(), queue_dir.clone()));
    let _ = std::fs::remove_dir_all(&queue_dir);
    result
}

async fn pull(
    client: HubClient,
    args: PullArgs,
    cache: PathBuf,
    queue_dir: PathBuf,
) -> anyhow::Result<()> {
    let info = client.model_info(&args.repo, Some(&args.revision)).await?;
    for p in &info.rejected_paths {
        eprintln!("warning: ignoring unsafe file name from the Hub: {p:?}");
    }
    let request = PullRequest {
        files: args.files.clone(),
        quant: args.quant.clone(),
    };
    let files = select_files(&info, &request)?;
    let total: u64 = files.iter().filter_map(|f| f.size).sum();
    eprintln!(
        "{}: {} file(s), {}",
        info.id,
        files.len(),
        human_bytes(total)
    );
    let gguf_bytes: u64 = group_gguf(&files).iter().map(|g| g.total_size).sum();
    if gguf_bytes > 0 {
        if let Some(mem) = MemInfo::read() {
            eprintln!("memory: {}", fit_for(gguf_bytes, mem).describe());
        }
    }
    let (handle, mut events) = downloads::spawn(ManagerConfig::new(client, cache, queue_dir))?;
    let mut names = HashMap::new();
    for f in &files {
        let id = handle.enqueue(DownloadSpec::from_file(&info.id, &args.revision, f));
        names.insert(id, f.path.clone());
    }
    let tty = std::io::stderr().is_terminal();
    let mut pending: HashSet<u64> = names.keys().copied().collect();
    let mut failures = Vec::new();
    let mut last: HashMap<u64, Progress> = HashMap::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while !pending.is_empty() {
        let ev = tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
            _ = &mut ctrl_c => {
                handle.shutdown().await;
                clear_line(tty);
                bail!("interrupted; run the same command again to resume");
            }
        };
        match ev {
            DownloadEvent::Progress(p) => {
                last.insert(p.id, p);
                if tty {
                    draw(&names, &last);
                }
            }
            DownloadEvent::Retrying {
                id, wait, reason, ..
            } => {
                clear_line(tty);
                eprintln!(
                    "{}: {reason}; retrying in {:.1} s",
                    names.get(&id).map_or("?", String::as_str),
                    wait.as_secs_f64()
                );
            }
            DownloadEvent::Done { id, path } => {
                pending.remove(&id);
                last.remove(&id);
                clear_line(tty);
                eprintln!("done  {}", path.display());
            }
            DownloadEvent::Failed { id, reason } => {
                pending.remove(&id);
                last.remove(&id);
                clear_line(tty);
                let name = names.get(&id).cloned().unwrap_or_default();
                eprintln!("failed {name}: {reason}");
                failures.push(format!("{name}: {reason}"));
            }
            DownloadEvent::Notice { message } => eprintln!("{message}"),
            _ => {}
        }
    }
    handle.shutdown().await;
    clear_line(tty);
    match failures.len() {
        0 => {
            eprintln!("pulled {} into the Hugging Face cache", info.id);
            Ok(())
        }
        1 => bail!("{}", failures[0]),
        n => bail!("{n} files failed:\n{}", failures.join("\n")),
    }
}

fn clear_line(tty: bool) {
    if tty {
        eprint!("\r\x1b[K");
    }
}

fn draw(names: &HashMap<u64, String>, last: &HashMap<u64, Progress>) {
    let mut parts = Vec::new();
    let mut ids: Vec<&u64> = last.keys().collect();
    ids.sort();
    for id in ids {
        let p = &last[id];
        let name = names.get(id).map_or("?", String::as_str);
        let short = name.rsplit('/').next().unwrap_or(name);
        let pct = if p.total > 0 {
            p.bytes as f64 * 100.0 / p.total as f64
        } else {
            0.0
        };
        let eta = p
            .eta
            .map(|d| format!(" ETA {}s", d.as_secs()))
            .unwrap_or_default();
        parts.push(format!(
            "{short} {pct:.0}% {}/{} {}/s{eta}",
            human_bytes(p.bytes),
            human_bytes(p.total),
            human_bytes(p.bytes_per_sec as u64)
        ));
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K{}", parts.join(" | "));
    let _ = err.flush();
}
