//! `influence pull REPO [--output DIR]`: download a model (one GGUF quant, or a safetensors set)
//! into the Hugging Face cache, or as plain files under DIR, with progress on stderr.
//!
//! With `--output`, the same download manager fetches into a private cache inside DIR
//! (`DIR/.influence-downloads`, hidden from the library), so resuming and the sha256 check work
//! exactly as for the cache; each verified file is then renamed to `DIR/<path>` and DIR is added
//! to the library by reference.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context as _};

use crate::commands::Context;
use crate::downloads::{self, DownloadEvent, DownloadSpec, ManagerConfig, Progress};
use crate::hub::{
    fetch_shape, fit_for, gguf_need, group_gguf, human_bytes, select_files, validate_repo_id,
    HubClient, MemInfo, PullRequest,
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
    /// Write plain files under DIR instead of the Hugging Face cache; the library lists DIR.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
}

/// The private download cache inside an `--output` folder; its partial files make a rerun
/// resume.
pub const STAGING: &str = ".influence-downloads";

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
    let output = match &args.output {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the output folder {}", dir.display()))?;
            Some(std::fs::canonicalize(dir)?)
        }
        None => None,
    };
    let cache = output
        .as_ref()
        .map_or_else(|| ctx.hub_cache(), |d| d.join(STAGING));
    let device = ctx.device;
    let result = rt.block_on(pull(
        client,
        args,
        cache,
        queue_dir.clone(),
        output.clone(),
        device,
    ));
    let _ = std::fs::remove_dir_all(&queue_dir);
    result?;
    if let Some(dir) = output {
        let roots = ctx.library_roots();
        match crate::library::import(&roots, &dir) {
            Ok(_) | Err(crate::library::LibraryError::AlreadyListed { .. }) => {
                eprintln!("the library lists {}", dir.display());
            }
            // Only small files were asked for (`--file README.md`): nothing to list yet.
            Err(e @ crate::library::LibraryError::NotAModel { .. }) => {
                eprintln!("not added to the library: {e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Where a repo file goes under `--output`.
fn plain_path(dir: &std::path::Path, repo_path: &str) -> PathBuf {
    repo_path
        .split('/')
        .fold(dir.to_path_buf(), |p, part| p.join(part))
}

/// A file already under DIR with the size and hash the Hub lists needs no download.
fn already_there(dir: &std::path::Path, f: &crate::hub::RepoFile) -> bool {
    let target = plain_path(dir, &f.path);
    let Ok(meta) = std::fs::metadata(&target) else {
        return false;
    };
    if f.size.is_some_and(|n| n != meta.len()) {
        return false;
    }
    let expected = match (&f.lfs, &f.blob_id) {
        (Some(lfs), _) => crate::library::FileHash::Sha256(lfs.sha256.clone()),
        (None, Some(oid)) => crate::library::FileHash::GitSha1(oid.clone()),
        (None, None) => return false,
    };
    crate::library::file_matches(&target, &expected).unwrap_or(false)
}

/// Moves a verified download out of the private cache to `DIR/<path>` (same file system, so a
/// rename) and drops the snapshot link that pointed at it.
fn place(
    done: &std::path::Path,
    dir: &std::path::Path,
    repo_path: &str,
) -> anyhow::Result<PathBuf> {
    let blob = std::fs::canonicalize(done)
        .with_context(|| format!("the downloaded file {} vanished", done.display()))?;
    let target = plain_path(dir, repo_path);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::rename(&blob, &target)
        .with_context(|| format!("cannot move {} to {}", blob.display(), target.display()))?;
    let _ = std::fs::remove_file(done);
    Ok(target)
}

async fn pull(
    client: HubClient,
    args: PullArgs,
    cache: PathBuf,
    queue_dir: PathBuf,
    output: Option<PathBuf>,
    device: crate::engine::device::DeviceRequest,
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
    let groups = group_gguf(&files);
    // On a GPU the question is whether it fits the GPU's free memory.
    let device = crate::engine::device::select(device).ok();
    let gpu = device.as_ref().filter(|d| d.is_gpu());
    let mem = match gpu.and_then(|d| d.memory()) {
        Some((free, total)) => Some(MemInfo {
            total_bytes: total,
            available_bytes: free,
            host_available_bytes: MemInfo::read().map(|m| m.available_bytes),
        }),
        None => MemInfo::read(),
    };
    if let (Some(g), Some(mem)) = (groups.iter().find(|g| !g.is_projector), mem) {
        // The same estimate the Hub pane and the Library show, from the same header keys.
        let shape = match fetch_shape(&client, &info.id, &args.revision, &g.files[0].path).await {
            Ok(shape) => shape,
            Err(e) => {
                eprintln!("warning: cannot read the model's header for the memory estimate: {e}");
                None
            }
        };
        let (need, ctx) = gguf_need(g.total_size, g.quant, shape);
        let on = gpu.map_or_else(String::new, |d| format!(" on {}", d.label));
        eprintln!("memory{on}: {}", fit_for(need, ctx, mem).describe());
    }
    let (handle, mut events) =
        downloads::spawn(ManagerConfig::new(client, cache.clone(), queue_dir))?;
    let mut names = HashMap::new();
    for f in &files {
        if let Some(dir) = output.as_deref().filter(|d| already_there(d, f)) {
            eprintln!("have  {} (verified)", plain_path(dir, &f.path).display());
            continue;
        }
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
                let name = names.get(&id).cloned().unwrap_or_default();
                match output.as_deref().map(|d| place(&path, d, &name)) {
                    None => eprintln!("done  {}", path.display()),
                    Some(Ok(target)) => eprintln!("done  {}", target.display()),
                    Some(Err(e)) => {
                        eprintln!("failed {name}: {e:#}");
                        failures.push(format!("{name}: {e:#}"));
                    }
                }
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
            match &output {
                Some(dir) => {
                    // Nothing left to resume: the private cache goes.
                    let _ = std::fs::remove_dir_all(&cache);
                    eprintln!("pulled {} into {}", info.id, dir.display());
                }
                None => eprintln!("pulled {} into the Hugging Face cache", info.id),
            }
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
