//! Download throughput on loopback: Influence's downloader (resolve → CDN redirect, sha256 while
//! writing, fsync, atomic placement in the cache) against `curl -L` fetching the same URL into a
//! file, both from the in-process fake hub.
//!
//! Run without rebuilding dependencies in release mode:
//! `cargo bench --profile dev --bench download [-- --mb 200 --runs 5]`
//! Target: ratio (ours / curl) ≥ 0.8.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use influence::downloads::{self, DownloadEvent, DownloadSpec, ManagerConfig};
use influence::hub::HubClient;
use sha2::Digest;
use support::fake_hub::{content, FakeHub, FakeRepo};

const REPO: &str = "bench/big-GGUF";
const FILE: &str = "big.Q8_0.gguf";

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mb = arg(&args, "--mb", 200);
    let runs = arg(&args, "--runs", 5).max(1);
    let size = mb * 1024 * 1024;
    // The fake hub gets its own runtime, so the downloader does not share worker threads with
    // the server any more than curl (a separate process) does.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let hub = server_rt.block_on(
        FakeHub::builder()
            .repo(FakeRepo::new(REPO).file(FILE, content("bench", size)))
            .start(),
    );
    // For reference: how fast this machine hashes, the work the downloader adds to curl's.
    let data = content("bench", size);
    let t = Instant::now();
    let digest = sha2::Sha256::digest(&data);
    let hash_time = t.elapsed();
    drop(data);
    assert_eq!(hex::encode(digest), hub.file(REPO, FILE).sha256);
    let url = format!("{}/{REPO}/resolve/main/{FILE}", hub.endpoint);
    let dir = tempfile::tempdir().unwrap();

    // Alternate the two so background load on a shared machine hits both alike.
    let mut curl = Vec::new();
    let mut ours = Vec::new();
    for i in 0..runs {
        let out = dir.path().join("curl.out");
        let t = Instant::now();
        let status = std::process::Command::new("curl")
            .args(["-s", "-f", "-L", "-o"])
            .arg(&out)
            .arg(&url)
            .status()
            .expect("curl must be installed for this benchmark");
        assert!(status.success(), "curl failed");
        curl.push(t.elapsed());
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size as u64);
        std::fs::remove_file(&out).unwrap();

        let cache = dir.path().join(format!("hub{i}"));
        let data = dir.path().join(format!("data{i}"));
        let client = HubClient::new(&hub.endpoint, None).unwrap();
        let cfg = ManagerConfig::new(client, cache.clone(), data);
        let t = Instant::now();
        rt.block_on(async {
            let (h, mut ev) = downloads::spawn(cfg).unwrap();
            let id = h.enqueue(DownloadSpec::new(REPO, FILE));
            loop {
                match ev.recv().await.expect("manager stopped") {
                    DownloadEvent::Done { id: d, .. } if d == id => break,
                    DownloadEvent::Failed { reason, .. } => panic!("download failed: {reason}"),
                    _ => {}
                }
            }
            h.shutdown().await;
        });
        ours.push(t.elapsed());
        std::fs::remove_dir_all(&cache).unwrap();
    }

    let mbps = |d: Duration| size as f64 / 1e6 / d.as_secs_f64();
    let best = |v: &[Duration]| *v.iter().min().unwrap();
    let (cb, ob) = (best(&curl), best(&ours));
    let (c, o) = (median(curl), median(ours));
    println!("download of {mb} MiB over loopback, {runs} alternating runs (median / best):");
    println!("  curl -L     {:>7.1} / {:>7.1} MB/s", mbps(c), mbps(cb));
    println!(
        "  influence   {:>7.1} / {:>7.1} MB/s   (sha256 while writing, fsync, cache placement)",
        mbps(o),
        mbps(ob)
    );
    println!(
        "  sha256 alone {:>7.1} MB/s (one core)",
        size as f64 / 1e6 / hash_time.as_secs_f64()
    );
    println!(
        "  ratio influence/curl: median {:.2}, best {:.2} (target >= 0.80)",
        mbps(o) / mbps(c),
        mbps(ob) / mbps(cb)
    );
}
