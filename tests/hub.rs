//! Hub client, download manager and CLI against the in-process fake hub (tests/support).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use influence::downloads::{self, DownloadEvent, DownloadHandle, DownloadSpec, ManagerConfig};
use influence::hub::{select_files, HubClient, HubError, PullRequest, SearchQuery, Sort};
use sha2::{Digest, Sha256};
use support::fake_hub::{start_standard, Countdown, FakeHub, FakeRepo, Origin};
use tokio::sync::mpsc::UnboundedReceiver;

const GGUF: &str = "acme/tiny-llama-GGUF";
const BERT: &str = "acme/mini-bert";
const GATED: &str = "gatekeeper/locked-GGUF";

struct Env {
    hub: FakeHub,
    _dir: tempfile::TempDir,
    cache: PathBuf,
    data: PathBuf,
}

async fn env() -> Env {
    let hub = start_standard().await;
    let dir = tempfile::tempdir().unwrap();
    Env {
        cache: dir.path().join("hf/hub"),
        data: dir.path().join("data"),
        hub,
        _dir: dir,
    }
}

impl Env {
    fn client(&self, token: Option<&str>) -> HubClient {
        HubClient::new(&self.hub.endpoint, token.map(str::to_string)).unwrap()
    }

    fn config(&self, token: Option<&str>) -> ManagerConfig {
        let mut c = ManagerConfig::new(self.client(token), self.cache.clone(), self.data.clone());
        c.backoff_base = Duration::from_millis(20);
        c.backoff_max = Duration::from_millis(200);
        c.stall_timeout = Duration::from_secs(5);
        c.progress_interval = Duration::from_millis(20);
        c
    }

    fn snapshot(&self, repo: &str, path: &str) -> PathBuf {
        let r = self.hub.repo(repo);
        self.cache
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("snapshots")
            .join(&r.sha)
            .join(path)
    }

    fn blobs(&self, repo: &str) -> Vec<String> {
        let dir = self
            .cache
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("blobs");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn assert_file_ok(&self, repo: &str, path: &str) {
        let snap = self.snapshot(repo, path);
        let want = self.hub.file(repo, path);
        let got =
            std::fs::read(&snap).unwrap_or_else(|e| panic!("{} missing: {e}", snap.display()));
        assert_eq!(got.len() as u64, want.size(), "{path} size");
        assert_eq!(
            hex::encode(Sha256::digest(&got)),
            want.sha256,
            "{path} content"
        );
        let link = std::fs::read_link(&snap).expect("snapshot entry is a symlink");
        assert!(
            link.is_relative(),
            "symlink must be relative: {}",
            link.display()
        );
        assert!(link.ends_with(Path::new("blobs").join(want.etag())));
    }
}

/// Collects events until every id in `ids` is done or failed.
async fn wait_all(
    events: &mut UnboundedReceiver<DownloadEvent>,
    ids: &[u64],
) -> (HashMap<u64, Result<PathBuf, String>>, Vec<DownloadEvent>) {
    let mut results = HashMap::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    while results.len() < ids.len() {
        let ev = tokio::select! {
            ev = events.recv() => ev.expect("manager stopped"),
            _ = &mut deadline => panic!("downloads did not finish; events so far: {seen:#?}"),
        };
        match &ev {
            DownloadEvent::Done { id, path } if ids.contains(id) => {
                results.insert(*id, Ok(path.clone()));
            }
            DownloadEvent::Failed { id, reason } if ids.contains(id) => {
                results.insert(*id, Err(reason.clone()));
            }
            _ => {}
        }
        seen.push(ev);
    }
    (results, seen)
}

fn enqueue_selection(
    handle: &DownloadHandle,
    info: &influence::hub::ModelInfo,
    req: &PullRequest,
) -> Vec<u64> {
    select_files(info, req)
        .unwrap()
        .iter()
        .map(|f| handle.enqueue(DownloadSpec::from_file(&info.id, "main", f)))
        .collect()
}

mod search {
    use super::*;

    #[tokio::test]
    async fn filters_sort_and_link_pagination() {
        let e = env().await;
        let c = e.client(None);
        let q = SearchQuery {
            search: Some("llama".into()),
            filters: vec!["gguf".into()],
            pipeline_tag: Some("text-generation".into()),
            sort: Some(Sort::Downloads),
            limit: Some(2),
            ..Default::default()
        };
        let mut page = c.search(&q).await.unwrap();
        let mut ids = Vec::new();
        let mut pages = 1;
        loop {
            assert!(page.models.len() <= 2);
            ids.extend(page.models.iter().map(|m| m.id.clone()));
            match page.next {
                Some(next) => {
                    assert!(next.starts_with(&e.hub.endpoint), "absolute Link: {next}");
                    page = c.search_next(&next).await.unwrap();
                    pages += 1;
                }
                None => break,
            }
        }
        assert_eq!(
            ids,
            [
                "bartowski/Llama-3-8B-GGUF",
                "TheBloke/Llama-2-7B-GGUF",
                "TheBloke/Llama-2-13B-GGUF",
                "bartowski/Llama-3.2-1B-GGUF",
                "acme/tiny-llama-GGUF",
            ]
        );
        assert_eq!(pages, 3);
        let first = &e.hub.log()[0];
        assert!(first.query.contains("filter=gguf") && first.query.contains("sort=downloads"));

        let by_author = c
            .search(&SearchQuery {
                author: Some("bartowski".into()),
                sort: Some(Sort::LastModified),
                ..Default::default()
            })
            .await
            .unwrap();
        let ids: Vec<&str> = by_author.models.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "bartowski/Llama-3.2-1B-GGUF",
                "bartowski/Llama-3-8B-GGUF",
                "bartowski/Qwen2.5-7B-GGUF"
            ]
        );
        let m = &by_author.models[0];
        assert_eq!(m.downloads, Some(30000));
        assert_eq!(m.pipeline_tag.as_deref(), Some("text-generation"));
        assert!(m
            .last_modified
            .as_deref()
            .unwrap()
            .starts_with("2025-06-10"));
    }

    #[tokio::test]
    async fn relative_link_is_followed_and_repeated_link_stops() {
        let e = env().await;
        let c = e.client(None);
        e.hub.faults().relative_link = true;
        let q = SearchQuery {
            filters: vec!["gguf".into()],
            limit: Some(3),
            ..Default::default()
        };
        let p1 = c.search(&q).await.unwrap();
        let next = p1.next.expect("relative Link resolved");
        assert!(next.starts_with(&e.hub.endpoint));
        let p2 = c.search_next(&next).await.unwrap();
        assert!(!p2.models.is_empty());
        assert_ne!(p1.models[0].id, p2.models[0].id);
        {
            let mut f = e.hub.faults();
            f.relative_link = false;
            f.repeat_link = true;
        }
        let p = c.search(&q).await.unwrap();
        assert!(
            p.next.is_none(),
            "a Link to the same page must end pagination"
        );
    }
}

mod info {
    use super::*;

    #[tokio::test]
    async fn sizes_lfs_sha256_and_flags() {
        let e = env().await;
        let c = e.client(None);
        let info = c.model_info(GGUF, None).await.unwrap();
        let repo = e.hub.repo(GGUF);
        assert_eq!(info.sha.as_deref(), Some(repo.sha.as_str()));
        assert_eq!(info.files.len(), repo.files.len());
        let q8 = info
            .files
            .iter()
            .find(|f| f.path == "tiny-llama.Q8_0.gguf")
            .unwrap();
        let want = e.hub.file(GGUF, "tiny-llama.Q8_0.gguf");
        assert_eq!(q8.size, Some(want.size()));
        assert_eq!(q8.lfs.as_ref().unwrap().sha256, want.sha256);
        let cfg = info.files.iter().find(|f| f.path == "config.json").unwrap();
        assert!(cfg.lfs.is_none());
        assert_eq!(
            cfg.etag(),
            Some(e.hub.file(GGUF, "config.json").git_sha1.as_str())
        );
        assert_eq!(info.license.as_deref(), Some("apache-2.0"));
        assert!(!info.gated.is_gated());
        let gated = c.model_info(GATED, None).await.unwrap();
        assert!(
            gated.gated.is_gated(),
            "gated metadata is readable and flagged"
        );

        let (tree, rejected) = c.list_files(GGUF, "main").await.unwrap();
        assert!(rejected.is_empty());
        assert_eq!(
            tree, info.files,
            "tree listing (paginated by 2) matches siblings"
        );
        assert!(
            e.hub
                .log()
                .iter()
                .filter(|l| l.path.contains("/tree/"))
                .count()
                > 2
        );
    }

    #[tokio::test]
    async fn errors_say_what_to_do() {
        let e = env().await;
        let anon = e.client(None);
        let bob = e.client(Some("hf_bob"));
        let err = anon.model_info("acme/nope", None).await.unwrap_err();
        assert!(matches!(err, HubError::RepoNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("HF_TOKEN"));
        let err = bob.model_info("acme/nope", None).await.unwrap_err();
        assert!(matches!(err, HubError::RepoNotFound { .. }), "{err:?}");
        let err = anon
            .model_info("alice/secret-model", None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, HubError::RepoNotFound { .. }),
            "private looks missing"
        );
        e.client(Some("hf_alice"))
            .model_info("alice/secret-model", None)
            .await
            .unwrap();
        let err = anon.model_info(GGUF, Some("v9")).await.unwrap_err();
        assert!(matches!(err, HubError::RevisionNotFound { .. }), "{err:?}");
        let err = anon
            .open_file(GGUF, "main", "nope.gguf", 0)
            .await
            .unwrap_err();
        assert!(matches!(err, HubError::EntryNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.gguf"));
        let err = e
            .client(Some("hf_wrong"))
            .model_info(GGUF, None)
            .await
            .unwrap_err();
        assert!(matches!(err, HubError::Unauthorized { .. }), "{err:?}");

        let err = anon
            .open_file(GATED, "main", "locked.Q4_0.gguf", 0)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, HubError::Gated { .. }), "{err:?}");
        assert!(
            msg.contains("HF_TOKEN") && msg.contains("huggingface-cli login"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("{}/{GATED}", e.hub.endpoint)),
            "{msg}"
        );
        let err = bob
            .open_file(GATED, "main", "locked.Q4_0.gguf", 0)
            .await
            .unwrap_err();
        assert!(
            matches!(err, HubError::Gated { .. }),
            "403 is gated too: {err:?}"
        );
        assert!(err.to_string().contains("not in the authorized list"));
    }

    #[tokio::test]
    async fn redirect_loop_and_non_hub_endpoint_are_reported() {
        let e = env().await;
        let c = e.client(None);
        e.hub.faults().redirect_loop = true;
        let err = c
            .open_file(GGUF, "main", "config.json", 0)
            .await
            .unwrap_err();
        assert!(matches!(err, HubError::RedirectLoop { .. }), "{err:?}");
        {
            let mut f = e.hub.faults();
            f.redirect_loop = false;
            f.strip_metadata_headers = true;
        }
        let err = c
            .open_file(GGUF, "main", "tiny-llama.Q4_K_M.gguf", 0)
            .await
            .unwrap_err();
        assert!(matches!(err, HubError::NotHubCompatible { .. }), "{err:?}");
        assert!(err.to_string().contains("X-Repo-Commit"));
        {
            let mut f = e.hub.faults();
            f.strip_metadata_headers = false;
            f.mirror_308_to = Some(e.hub.cdn.clone());
        }
        // A mirror bouncing to another host loses the Hub headers: say so, don't guess.
        let err = c
            .file_meta(GGUF, "main", "tiny-llama.Q4_K_M.gguf")
            .await
            .unwrap_err();
        assert!(matches!(err, HubError::NotHubCompatible { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&e.hub.endpoint),
            "names the endpoint: {err}"
        );
    }

    #[tokio::test]
    async fn unsafe_names_from_the_network_are_rejected() {
        let e = env().await;
        let bad = [
            "../../evil.gguf",
            "/etc/passwd",
            "a\\b.gguf",
            "x/\u{0}y.gguf",
        ];
        e.hub.faults().unsafe_paths = bad.iter().map(|s| s.to_string()).collect();
        let c = e.client(None);
        let info = c.model_info(GGUF, None).await.unwrap();
        assert_eq!(info.rejected_paths.len(), bad.len());
        assert!(info.files.iter().all(|f| !bad.contains(&f.path.as_str())));
        let (_, rejected) = c.list_files(GGUF, "main").await.unwrap();
        for p in bad {
            assert!(
                rejected.iter().any(|r| r == p),
                "{p:?} not rejected: {rejected:?}"
            );
        }
        for p in bad {
            let err = c.open_file(GGUF, "main", p, 0).await.unwrap_err();
            assert!(
                matches!(err, HubError::InvalidPath { .. }),
                "{p:?}: {err:?}"
            );
        }
    }
}

mod download {
    use super::*;

    #[tokio::test]
    async fn pulls_one_gguf_quant_with_its_small_files() {
        let e = env().await;
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let info = e.client(None).model_info(GGUF, None).await.unwrap();
        let req = PullRequest {
            quant: Some("Q2_K".into()),
            ..Default::default()
        };
        let ids = enqueue_selection(&h, &info, &req);
        let (res, _) = wait_all(&mut ev, &ids).await;
        assert!(res.values().all(|r| r.is_ok()), "{res:?}");
        for p in [
            "tiny-llama.Q2_K-00001-of-00002.gguf",
            "tiny-llama.Q2_K-00002-of-00002.gguf",
            "config.json",
            "README.md",
        ] {
            e.assert_file_ok(GGUF, p);
        }
        let q8 = e.hub.file(GGUF, "tiny-llama.Q8_0.gguf");
        assert!(
            !e.blobs(GGUF).contains(&q8.sha256),
            "other quants are not pulled"
        );
        assert!(!e.snapshot(GGUF, ".gitattributes").exists());
        let refs = e.cache.join("models--acme--tiny-llama-GGUF/refs/main");
        assert_eq!(std::fs::read_to_string(refs).unwrap(), e.hub.repo(GGUF).sha);
        // Nothing but finished blobs: no partial or temp files left behind.
        assert!(e.blobs(GGUF).iter().all(|b| b.len() == 64 || b.len() == 40));
        h.shutdown().await;
    }

    #[tokio::test]
    async fn pulls_a_safetensors_set() {
        let e = env().await;
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let info = e.client(None).model_info(BERT, None).await.unwrap();
        let ids = enqueue_selection(&h, &info, &PullRequest::default());
        let (res, _) = wait_all(&mut ev, &ids).await;
        assert!(res.values().all(|r| r.is_ok()), "{res:?}");
        for p in [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            e.assert_file_ok(BERT, p);
        }
        assert!(!e.snapshot(BERT, "pytorch_model.bin").exists());
        assert!(!e.snapshot(BERT, "onnx/model.onnx").exists());
        h.shutdown().await;
    }

    /// Repos with only PyTorch weights: the `.bin` set is pulled (one file, or every shard with
    /// its index), never training state or other formats.
    #[tokio::test]
    async fn pulls_pytorch_weights_when_there_is_no_safetensors() {
        use support::fake_hub::content;
        let kb = 1024;
        let hub = FakeHub::builder()
            .repo(
                FakeRepo::new("old/bert-bin")
                    .file("config.json", br#"{"model_type":"bert"}"#.to_vec())
                    .file("pytorch_model.bin", content("bin", 120 * kb))
                    .file("training_args.bin", content("args", 2 * kb))
                    .file("tf_model.h5", content("h5", 100 * kb))
                    .file("vocab.txt", b"[PAD]\n[UNK]\n".to_vec()),
            )
            .repo(
                FakeRepo::new("old/llama-shards")
                    .file("config.json", br#"{"model_type":"llama"}"#.to_vec())
                    .file("pytorch_model-00001-of-00002.bin", content("b1", 90 * kb))
                    .file("pytorch_model-00002-of-00002.bin", content("b2", 80 * kb))
                    .file(
                        "pytorch_model.bin.index.json",
                        br#"{"metadata":{},"weight_map":{}}"#.to_vec(),
                    )
                    .file("optimizer.bin", content("opt", 40 * kb))
                    .file("tokenizer.json", br#"{"version":"1.0"}"#.to_vec()),
            )
            .start()
            .await;
        let dir = tempfile::tempdir().unwrap();
        let e = Env {
            cache: dir.path().join("hf/hub"),
            data: dir.path().join("data"),
            hub,
            _dir: dir,
        };
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        for (repo, want, not) in [
            (
                "old/bert-bin",
                &["pytorch_model.bin", "config.json", "vocab.txt"][..],
                &["training_args.bin", "tf_model.h5"][..],
            ),
            (
                "old/llama-shards",
                &[
                    "pytorch_model-00001-of-00002.bin",
                    "pytorch_model-00002-of-00002.bin",
                    "pytorch_model.bin.index.json",
                    "config.json",
                    "tokenizer.json",
                ][..],
                &["optimizer.bin"][..],
            ),
        ] {
            let info = e.client(None).model_info(repo, None).await.unwrap();
            let ids = enqueue_selection(&h, &info, &PullRequest::default());
            assert_eq!(ids.len(), want.len(), "{repo}");
            let (res, _) = wait_all(&mut ev, &ids).await;
            assert!(res.values().all(|r| r.is_ok()), "{res:?}");
            for p in want {
                e.assert_file_ok(repo, p);
            }
            for p in not {
                assert!(!e.snapshot(repo, p).exists(), "{repo}: {p} was pulled");
            }
        }
        h.shutdown().await;
    }

    #[tokio::test]
    async fn resumes_after_a_cut_connection_with_range() {
        let e = env().await;
        e.hub.faults().truncate_after = Countdown::new(1, 200 * 1024);
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let id = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q8_0.gguf"));
        let (res, seen) = wait_all(&mut ev, &[id]).await;
        assert!(res[&id].is_ok(), "{res:?}");
        e.assert_file_ok(GGUF, "tiny-llama.Q8_0.gguf");
        assert!(seen
            .iter()
            .any(|e| matches!(e, DownloadEvent::Retrying { .. })));
        let ranged: Vec<_> = e
            .hub
            .log()
            .into_iter()
            .filter(|l| l.origin == Origin::Cdn && l.range.is_some())
            .collect();
        assert_eq!(ranged.len(), 1, "one resume request");
        let r = ranged[0].range.clone().unwrap();
        let from: u64 = r
            .strip_prefix("bytes=")
            .and_then(|s| s.strip_suffix('-'))
            .unwrap()
            .parse()
            .unwrap();
        assert!(from > 0 && from <= 200 * 1024, "resumed from {from}");
        assert_eq!(ranged[0].status, 206);
        h.shutdown().await;
    }

    #[tokio::test]
    async fn ignored_range_restarts_from_zero() {
        let e = env().await;
        {
            let mut f = e.hub.faults();
            f.truncate_after = Countdown::new(1, 100 * 1024);
            f.ignore_range = true;
        }
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let id = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q4_K_M.gguf"));
        let (res, _) = wait_all(&mut ev, &[id]).await;
        assert!(res[&id].is_ok(), "{res:?}");
        e.assert_file_ok(GGUF, "tiny-llama.Q4_K_M.gguf");
        let log = e.hub.log();
        let ranged = log
            .iter()
            .find(|l| l.origin == Origin::Cdn && l.range.is_some())
            .expect("a resume was attempted");
        assert_eq!(ranged.status, 200, "the server ignored the range");
        h.shutdown().await;
    }

    #[tokio::test]
    async fn corrupted_byte_is_detected_and_retried() {
        let e = env().await;
        e.hub.faults().corrupt_byte = Countdown::new(1, 12345);
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let id = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q4_K_M.gguf"));
        let (res, seen) = wait_all(&mut ev, &[id]).await;
        assert!(res[&id].is_ok(), "{res:?}");
        e.assert_file_ok(GGUF, "tiny-llama.Q4_K_M.gguf");
        assert!(seen.iter().any(|e| matches!(e,
            DownloadEvent::Retrying { reason, .. } if reason.contains("checksum mismatch"))));
        h.shutdown().await;
    }

    #[tokio::test]
    async fn persistent_corruption_fails_and_leaves_nothing_in_the_snapshot() {
        let e = env().await;
        e.hub.faults().corrupt_byte = Countdown::new(10, 5);
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let path = "tiny-llama.Q4_K_M.gguf";
        let id = h.enqueue(DownloadSpec::new(GGUF, path));
        let (res, _) = wait_all(&mut ev, &[id]).await;
        let reason = res[&id].clone().unwrap_err();
        assert!(reason.contains("checksum mismatch"), "{reason}");
        assert!(!e.snapshot(GGUF, path).exists());
        assert!(
            e.blobs(GGUF).is_empty(),
            "no blob or partial: {:?}",
            e.blobs(GGUF)
        );
        h.shutdown().await;
    }

    #[tokio::test]
    async fn short_body_is_resumed() {
        let e = env().await;
        e.hub.faults().wrong_length = Countdown::new(1, 0);
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let id = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q4_K_M.gguf"));
        let (res, _) = wait_all(&mut ev, &[id]).await;
        assert!(res[&id].is_ok(), "{res:?}");
        e.assert_file_ok(GGUF, "tiny-llama.Q4_K_M.gguf");
        h.shutdown().await;
    }

    #[tokio::test]
    async fn rate_limit_waits_for_retry_after() {
        let e = env().await;
        e.hub.faults().rate_limit = Countdown::new(1, 1);
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let t0 = Instant::now();
        let id = h.enqueue(DownloadSpec::new(GGUF, "config.json"));
        let (res, seen) = wait_all(&mut ev, &[id]).await;
        assert!(res[&id].is_ok(), "{res:?}");
        let wait = seen
            .iter()
            .find_map(|e| match e {
                DownloadEvent::Retrying { wait, reason, .. } => Some((*wait, reason.clone())),
                _ => None,
            })
            .expect("a retry after the 429");
        assert_eq!(wait.0, Duration::from_secs(1), "Retry-After honoured");
        assert!(wait.1.contains("rate limited"), "{}", wait.1);
        assert!(t0.elapsed() >= Duration::from_millis(950));
        let statuses: Vec<u16> = e.hub.log().iter().map(|l| l.status).collect();
        assert_eq!(statuses, [429, 200, 200], "HEAD refused, then HEAD + GET");
        e.assert_file_ok(GGUF, "config.json");
        h.shutdown().await;
    }

    #[tokio::test]
    async fn server_errors_are_retried_with_backoff() {
        let e = env().await;
        e.hub.faults().fail_5xx = Countdown::new(2, 503);
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let id = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q4_K_M.gguf"));
        let (res, seen) = wait_all(&mut ev, &[id]).await;
        assert!(res[&id].is_ok(), "{res:?}");
        let retries = seen
            .iter()
            .filter(|e| matches!(e, DownloadEvent::Retrying { .. }))
            .count();
        assert_eq!(retries, 2);
        h.shutdown().await;
    }

    #[tokio::test]
    async fn stalled_stream_is_retried() {
        let e = env().await;
        e.hub.faults().stall_after = Countdown::new(1, 64 * 1024);
        let mut cfg = e.config(None);
        cfg.stall_timeout = Duration::from_millis(300);
        let (h, mut ev) = downloads::spawn(cfg).unwrap();
        let id = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q4_K_M.gguf"));
        let (res, seen) = wait_all(&mut ev, &[id]).await;
        assert!(res[&id].is_ok(), "{res:?}");
        assert!(seen.iter().any(|e| matches!(e,
            DownloadEvent::Retrying { reason, .. } if reason.contains("no data received"))));
        e.assert_file_ok(GGUF, "tiny-llama.Q4_K_M.gguf");
        h.shutdown().await;
    }

    #[tokio::test]
    async fn regular_file_via_resolve_cache_redirect_is_verified_by_git_sha1() {
        let e = env().await;
        e.hub.faults().resolve_cache_mode = true;
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let id = h.enqueue(DownloadSpec::new(BERT, "tokenizer.json"));
        let (res, _) = wait_all(&mut ev, &[id]).await;
        assert!(res[&id].is_ok(), "{res:?}");
        let f = e.hub.file(BERT, "tokenizer.json");
        assert!(!f.lfs);
        assert_eq!(e.blobs(BERT), vec![f.git_sha1.clone()]);
        e.assert_file_ok(BERT, "tokenizer.json");
        assert!(e
            .hub
            .log()
            .iter()
            .any(|l| l.path.starts_with("/api/resolve-cache/")));
        h.shutdown().await;
    }

    #[tokio::test]
    async fn gated_and_missing_repos_fail_with_their_messages() {
        let e = env().await;
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let gated = h.enqueue(DownloadSpec::new(GATED, "locked.Q4_0.gguf"));
        let missing = h.enqueue(DownloadSpec::new("acme/does-not-exist", "x.gguf"));
        let (res, seen) = wait_all(&mut ev, &[gated, missing]).await;
        let g = res[&gated].clone().unwrap_err();
        assert!(g.contains("gated") && g.contains("HF_TOKEN"), "{g}");
        assert!(g.contains(&format!("{}/{GATED}", e.hub.endpoint)), "{g}");
        let m = res[&missing].clone().unwrap_err();
        assert!(
            m.contains("not found") && m.contains("acme/does-not-exist"),
            "{m}"
        );
        assert!(
            !seen
                .iter()
                .any(|e| matches!(e, DownloadEvent::Retrying { .. })),
            "permanent errors are not retried"
        );
        h.shutdown().await;
    }

    #[tokio::test]
    async fn token_goes_to_the_hub_but_never_to_the_cdn() {
        let e = env().await;
        let (h, mut ev) = downloads::spawn(e.config(Some("hf_alice"))).unwrap();
        let id = h.enqueue(DownloadSpec::new(GATED, "locked.Q4_0.gguf"));
        let (res, _) = wait_all(&mut ev, &[id]).await;
        assert!(res[&id].is_ok(), "{res:?}");
        e.assert_file_ok(GATED, "locked.Q4_0.gguf");
        let log = e.hub.log();
        let hub: Vec<_> = log.iter().filter(|l| l.origin == Origin::Hub).collect();
        let cdn: Vec<_> = log.iter().filter(|l| l.origin == Origin::Cdn).collect();
        assert!(!hub.is_empty() && !cdn.is_empty());
        assert!(
            hub.iter().all(|l| l.authorization),
            "hub requests carry the token"
        );
        assert!(
            cdn.iter().all(|l| !l.authorization),
            "CDN never sees the token"
        );
        assert!(cdn
            .iter()
            .all(|l| l.accept_encoding.as_deref() == Some("identity")));
        h.shutdown().await;
    }

    #[tokio::test]
    async fn renamed_gated_repo_keeps_the_token_on_the_hub_origin() {
        let hub = FakeHub::builder()
            .repo(
                FakeRepo::new("org/new-name")
                    .file("m.Q4_0.gguf", support::fake_hub::content("renamed", 40_000))
                    .gated(&["alice"])
                    .renamed_from("org/old-name"),
            )
            .token("hf_alice", "alice")
            .start()
            .await;
        let dir = tempfile::tempdir().unwrap();
        let client = HubClient::new(&hub.endpoint, Some("hf_alice".into())).unwrap();
        let cfg = ManagerConfig::new(client, dir.path().join("hub"), dir.path().join("data"));
        let (h, mut ev) = downloads::spawn(cfg).unwrap();
        let id = h.enqueue(DownloadSpec::new("org/old-name", "m.Q4_0.gguf"));
        let (res, _) = wait_all(&mut ev, &[id]).await;
        let path = res[&id].clone().unwrap();
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            hub.file("org/new-name", "m.Q4_0.gguf").sha256
        );
        let log = hub.log();
        assert!(log
            .iter()
            .any(|l| l.status == 307 && l.path.contains("old-name")));
        assert!(
            log.iter()
                .filter(|l| l.origin == Origin::Hub)
                .all(|l| l.authorization),
            "same-origin redirects keep the token"
        );
        assert!(log
            .iter()
            .filter(|l| l.origin == Origin::Cdn)
            .all(|l| !l.authorization));
        h.shutdown().await;
    }

    #[tokio::test]
    async fn expired_cdn_signature_and_missing_content_range_recover() {
        let e = env().await;
        {
            let mut f = e.hub.faults();
            f.expire_signature = Countdown::new(1, 0);
            f.truncate_after = Countdown::new(1, 100 * 1024);
            f.omit_content_range = true;
        }
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let id = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q8_0.gguf"));
        let (res, seen) = wait_all(&mut ev, &[id]).await;
        assert!(res[&id].is_ok(), "{res:?}");
        e.assert_file_ok(GGUF, "tiny-llama.Q8_0.gguf");
        assert!(seen.iter().any(|e| matches!(e,
            DownloadEvent::Retrying { reason, .. } if reason.contains("refused"))));
        let cdn: Vec<u16> = e
            .hub
            .log()
            .iter()
            .filter(|l| l.origin == Origin::Cdn)
            .map(|l| l.status)
            .collect();
        // 403 (expired link), 200 cut short, 206 without Content-Range (unusable), 200 full.
        assert_eq!(cdn, [403, 200, 206, 200]);
        h.shutdown().await;
    }

    #[tokio::test]
    async fn offline_pull_of_a_cached_file_succeeds() {
        let e = env().await;
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let a = h.enqueue(DownloadSpec::new(GGUF, "config.json"));
        wait_all(&mut ev, &[a]).await;
        h.shutdown().await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let offline = HubClient::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let mut cfg = e.config(None);
        cfg.hub = offline;
        cfg.max_attempts = 1;
        let (h, mut ev) = downloads::spawn(cfg).unwrap();
        let b = h.enqueue(DownloadSpec::new(GGUF, "config.json"));
        let c = h.enqueue(DownloadSpec::new(GGUF, "README.md"));
        let (res, _) = wait_all(&mut ev, &[b, c]).await;
        assert!(res[&b].is_ok(), "cached file served offline: {res:?}");
        let err = res[&c].clone().unwrap_err();
        assert!(err.contains("cannot reach"), "{err}");
        h.shutdown().await;
    }

    #[tokio::test]
    async fn two_queued_downloads_run_at_once() {
        let e = env().await;
        e.hub.faults().slow = Some(300_000);
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let a = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q4_K_M.gguf"));
        let b = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q8_0.gguf"));
        let (res, seen) = wait_all(&mut ev, &[a, b]).await;
        assert!(res.values().all(|r| r.is_ok()), "{res:?}");
        // Both had made progress before either finished.
        let first_done = seen
            .iter()
            .position(|e| matches!(e, DownloadEvent::Done { .. }))
            .unwrap();
        let in_flight = |id: u64| {
            seen[..first_done]
                .iter()
                .any(|e| matches!(e, DownloadEvent::Progress(p) if p.id == id && p.bytes > 0))
        };
        assert!(
            in_flight(a) && in_flight(b),
            "both in flight before the first finished"
        );
        assert!(e.hub.max_concurrent_bodies() >= 2);
        h.shutdown().await;
    }

    #[tokio::test]
    async fn progress_is_throttled_and_complete() {
        let e = env().await;
        e.hub.faults().slow = Some(400_000);
        let mut cfg = e.config(None);
        cfg.progress_interval =
            ManagerConfig::new(e.client(None), "x".into(), "y".into()).progress_interval;
        let (h, mut ev) = downloads::spawn(cfg).unwrap();
        let t0 = Instant::now();
        let id = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q4_K_M.gguf"));
        let (res, seen) = wait_all(&mut ev, &[id]).await;
        assert!(res[&id].is_ok(), "{res:?}");
        let elapsed = t0.elapsed().as_secs_f64();
        let progress: Vec<_> = seen
            .iter()
            .filter_map(|e| match e {
                DownloadEvent::Progress(p) => Some(*p),
                _ => None,
            })
            .collect();
        // First (0 bytes) and last (complete) snapshots plus at most 4 per second in between.
        assert!(
            progress.len() as f64 <= elapsed * 4.0 + 3.0,
            "{} snapshots in {elapsed:.2} s",
            progress.len()
        );
        assert!(
            progress.len() >= 3,
            "some snapshots in between: {progress:?}"
        );
        assert!(progress.windows(2).all(|w| w[0].bytes <= w[1].bytes));
        let last = progress.last().unwrap();
        assert_eq!((last.bytes, last.total), (300 * 1024, 300 * 1024));
        assert!(progress
            .iter()
            .any(|p| p.bytes_per_sec > 0.0 && p.eta.is_some()));
        h.shutdown().await;
    }

    #[tokio::test]
    async fn restart_with_a_half_done_queue_finishes_it() {
        let e = env().await;
        e.hub.faults().slow = Some(400_000);
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let a = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q8_0.gguf"));
        let b = h.enqueue(DownloadSpec::new(BERT, "model-00001-of-00002.safetensors"));
        // Stop once the big file is partly on disk.
        loop {
            match tokio::time::timeout(Duration::from_secs(20), ev.recv()).await {
                Ok(Some(DownloadEvent::Progress(p))) if p.id == a && p.bytes >= 100_000 => break,
                Ok(Some(_)) => {}
                other => panic!("no progress: {other:?}"),
            }
        }
        h.shutdown().await;
        let saved = std::fs::read_to_string(e.data.join("downloads.json")).unwrap();
        assert!(
            saved.contains("tiny-llama.Q8_0.gguf") && saved.contains("queued"),
            "{saved}"
        );
        assert!(!e.snapshot(GGUF, "tiny-llama.Q8_0.gguf").exists());

        e.hub.faults().slow = None;
        e.hub.clear_log();
        let (h2, mut ev2) = downloads::spawn(e.config(None)).unwrap();
        let (res, seen) = wait_all(&mut ev2, &[a, b]).await;
        assert!(res.values().all(|r| r.is_ok()), "{res:?}");
        assert!(seen
            .iter()
            .any(|e| matches!(e, DownloadEvent::Queued { id, .. } if *id == a)));
        e.assert_file_ok(GGUF, "tiny-llama.Q8_0.gguf");
        e.assert_file_ok(BERT, "model-00001-of-00002.safetensors");
        assert!(
            e.hub
                .log()
                .iter()
                .any(|l| l.origin == Origin::Cdn
                    && l.range.as_deref().is_some_and(|r| r != "bytes=0-")),
            "the restart resumed with Range"
        );
        let c = h2.enqueue(DownloadSpec::new(GGUF, "config.json"));
        assert!(c > b, "ids are not reused after a restart");
        h2.shutdown().await;
    }

    #[tokio::test]
    async fn pause_resume_and_cancel() {
        let e = env().await;
        e.hub.faults().slow = Some(300_000);
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let a = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q8_0.gguf"));
        loop {
            match tokio::time::timeout(Duration::from_secs(20), ev.recv()).await {
                Ok(Some(DownloadEvent::Progress(p))) if p.id == a && p.bytes > 50_000 => break,
                Ok(Some(_)) => {}
                other => panic!("no progress: {other:?}"),
            }
        }
        h.pause(a);
        loop {
            if let Some(DownloadEvent::Paused { id }) = ev.recv().await {
                assert_eq!(id, a);
                break;
            }
        }
        let views = h.list().await.unwrap();
        assert_eq!(views[0].state, downloads::JobState::Paused);
        assert!(views[0].bytes > 50_000, "partial kept: {}", views[0].bytes);
        e.hub.faults().slow = None;
        h.resume(a);
        let (res, _) = wait_all(&mut ev, &[a]).await;
        assert!(res[&a].is_ok());
        e.assert_file_ok(GGUF, "tiny-llama.Q8_0.gguf");

        e.hub.faults().slow = Some(100_000);
        let b = h.enqueue(DownloadSpec::new(BERT, "model-00001-of-00002.safetensors"));
        loop {
            if let Some(DownloadEvent::Progress(p)) = ev.recv().await {
                if p.id == b && p.bytes > 0 {
                    break;
                }
            }
        }
        h.cancel(b);
        loop {
            if let Some(DownloadEvent::Cancelled { id }) = ev.recv().await {
                assert_eq!(id, b);
                break;
            }
        }
        assert!(h.list().await.unwrap().iter().all(|v| v.id != b));
        assert!(
            e.blobs(BERT).is_empty(),
            "cancel removes the partial: {:?}",
            e.blobs(BERT)
        );
        h.shutdown().await;
    }

    #[tokio::test]
    async fn path_traversal_is_refused_before_touching_disk() {
        let e = env().await;
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let bad = [
            DownloadSpec::new(GGUF, "../../../evil"),
            DownloadSpec::new(GGUF, "/etc/passwd"),
            DownloadSpec::new(GGUF, "dir\\..\\evil"),
            DownloadSpec::new("../../x", "a.gguf"),
            DownloadSpec {
                revision: "../../refs".into(),
                ..DownloadSpec::new(GGUF, "config.json")
            },
        ];
        let ids: Vec<u64> = bad.into_iter().map(|s| h.enqueue(s)).collect();
        let (res, _) = wait_all(&mut ev, &ids).await;
        for id in &ids {
            let r = res[id].clone().unwrap_err();
            assert!(r.contains("unsafe") || r.contains("invalid"), "{id}: {r}");
        }
        assert!(e.hub.log().is_empty(), "nothing was requested");
        assert!(!e.cache.exists(), "nothing was written");
        h.shutdown().await;
    }

    #[tokio::test]
    async fn hf_hub_crate_finds_what_we_downloaded() {
        let e = env().await;
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let a = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q4_K_M.gguf"));
        let b = h.enqueue(DownloadSpec::new(GGUF, "config.json"));
        let (res, _) = wait_all(&mut ev, &[a, b]).await;
        assert!(res.values().all(|r| r.is_ok()), "{res:?}");
        let cache = hf_hub::Cache::new(e.cache.clone());
        let repo = cache.repo(hf_hub::Repo::model(GGUF.to_string()));
        for f in ["tiny-llama.Q4_K_M.gguf", "config.json"] {
            let p = repo
                .get(f)
                .unwrap_or_else(|| panic!("hf-hub cannot see {f}"));
            let bytes = std::fs::read(p).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                e.hub.file(GGUF, f).sha256
            );
        }
        assert!(repo.get("tiny-llama.Q8_0.gguf").is_none());
        h.shutdown().await;
    }

    #[tokio::test]
    async fn the_same_blob_requested_twice_at_once_is_fetched_once() {
        let e = env().await;
        e.hub.faults().slow = Some(500_000);
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let a = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q4_K_M.gguf"));
        let b = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q4_K_M.gguf"));
        let (res, _) = wait_all(&mut ev, &[a, b]).await;
        assert!(res.values().all(|r| r.is_ok()), "{res:?}");
        let cdn = e
            .hub
            .log()
            .iter()
            .filter(|l| l.origin == Origin::Cdn)
            .count();
        assert_eq!(
            cdn, 1,
            "the second job waited on the blob lock and reused the result"
        );
        e.assert_file_ok(GGUF, "tiny-llama.Q4_K_M.gguf");
        h.shutdown().await;
    }

    #[tokio::test]
    async fn an_existing_blob_is_linked_without_downloading_again() {
        let e = env().await;
        let (h, mut ev) = downloads::spawn(e.config(None)).unwrap();
        let a = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q4_K_M.gguf"));
        wait_all(&mut ev, &[a]).await;
        e.hub.clear_log();
        let b = h.enqueue(DownloadSpec::new(GGUF, "tiny-llama.Q4_K_M.gguf"));
        let (res, _) = wait_all(&mut ev, &[b]).await;
        assert!(res[&b].is_ok());
        assert!(
            e.hub.log().iter().all(|l| l.origin == Origin::Hub),
            "no CDN transfer"
        );
        h.shutdown().await;
    }
}

mod cli {
    use super::*;
    use influence::commands::{pull, search, Context};

    fn ctx(endpoint: &str, dir: &Path, token: Option<&str>) -> Context {
        Context {
            hf_home: dir.join("hf"),
            data_dir: dir.join("data"),
            endpoint: endpoint.to_string(),
            token: token.map(str::to_string),
            threads: 1,
            device: Default::default(),
            model_dirs: vec![],
        }
    }

    fn pull_args(repo: &str, quant: Option<&str>) -> pull::PullArgs {
        pull::PullArgs {
            repo: repo.to_string(),
            files: vec![],
            quant: quant.map(str::to_string),
            revision: "main".into(),
            output: None,
        }
    }

    /// `influence pull --output DIR` through the real binary: plain files, a resumed partial,
    /// nothing downloaded again on a rerun, and the library listing DIR.
    #[test]
    fn pull_output_writes_plain_files_resumes_and_the_library_lists_them() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let hub = rt.block_on(start_standard());
        let home = tempfile::tempdir().unwrap();
        let out = home.path().join("models");
        let bin = |args: &[&str]| {
            let mut c = assert_cmd::Command::cargo_bin("influence").unwrap();
            c.env_clear()
                .env("INFLUENCE_HOME", home.path())
                .env("HF_HOME", home.path().join("hf"))
                .env("HOME", home.path())
                .args(["--endpoint", &hub.endpoint])
                .args(args);
            c
        };
        // Half of the file is already there from an interrupted run.
        let file = hub.file(GGUF, "tiny-llama.Q8_0.gguf");
        let blobs = out.join(".influence-downloads/models--acme--tiny-llama-GGUF/blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let half = file.data.len() / 2;
        std::fs::write(
            blobs.join(format!("{}.influence.part", file.sha256)),
            &file.data[..half],
        )
        .unwrap();
        let out_s = out.to_str().unwrap();
        bin(&["pull", GGUF, "--quant", "Q8_0", "--output", out_s])
            .assert()
            .success()
            .stderr(predicates::str::contains("the library lists"));
        let placed = out.join("tiny-llama.Q8_0.gguf");
        assert_eq!(
            std::fs::read(&placed).unwrap(),
            file.data,
            "verified content"
        );
        assert!(
            out.join("config.json").is_file(),
            "the small files come along"
        );
        assert!(
            !out.join(".influence-downloads").exists(),
            "the private cache is gone once everything is in place"
        );
        assert!(
            !home
                .path()
                .join("hf/hub")
                .join("models--acme--tiny-llama-GGUF")
                .exists(),
            "nothing went into the Hugging Face cache"
        );
        let resumed: Vec<_> = hub
            .log()
            .into_iter()
            .filter(|l| {
                l.origin == Origin::Cdn && l.range.as_deref().is_some_and(|r| r.ends_with('-'))
            })
            .collect();
        assert_eq!(resumed.len(), 1, "one resumed transfer: {resumed:?}");
        assert_eq!(
            resumed[0].range.as_deref(),
            Some(format!("bytes={half}-").as_str())
        );

        // A rerun checks the files and downloads nothing.
        hub.clear_log();
        bin(&["pull", GGUF, "--quant", "Q8_0", "--output", out_s])
            .assert()
            .success()
            .stderr(predicates::str::contains("(verified)"));
        // Only the start of the header is read again, for the memory estimate.
        let log = hub.log();
        assert!(
            log.iter()
                .filter(|l| l.origin == Origin::Cdn)
                .all(|l| l.range.as_deref() == Some("bytes=0-262143")),
            "no file downloaded again: {log:?}"
        );
        let listed = bin(&["list", "--json"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let listed = String::from_utf8(listed).unwrap();
        assert!(
            listed.contains(placed.to_str().unwrap()),
            "the library lists the pulled file: {listed}"
        );
        drop(hub);
        rt.shutdown_background();
    }

    #[test]
    fn pull_and_search_commands() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let hub = rt.block_on(start_standard());
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(&hub.endpoint, dir.path(), None);
        pull::run(pull_args(GGUF, None), &c).unwrap();
        let snap = dir
            .path()
            .join("hf/hub/models--acme--tiny-llama-GGUF/snapshots")
            .join(&hub.repo(GGUF).sha);
        assert!(
            snap.join("tiny-llama.Q4_K_M.gguf").exists(),
            "default quant pulled"
        );
        assert!(!snap.join("tiny-llama.Q8_0.gguf").exists());
        assert!(
            !dir.path()
                .join("data/cli-pull")
                .read_dir()
                .unwrap()
                .any(|_| true),
            "the per-run queue is cleaned up"
        );

        let err = pull::run(pull_args(GATED, None), &c)
            .unwrap_err()
            .to_string();
        assert!(err.contains("HF_TOKEN"), "{err}");
        let err = pull::run(pull_args(GGUF, Some("Q6_K")), &c)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Q4_K_M") && err.contains("Q8_0"), "{err}");
        let err = pull::run(pull_args("acme/../x", None), &c)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid repository id"), "{err}");

        let args = search::SearchArgs {
            query: Some("llama".into()),
            author: None,
            limit: 3,
            sort: search::SortArg::Likes,
            gguf: true,
            task: None,
            json: true,
        };
        search::run(args, &c).unwrap();
        let q = hub.log().last().unwrap().query.clone();
        assert!(q.contains("sort=likes") && q.contains("filter=gguf") && q.contains("limit=3"));
        drop(hub);
        rt.shutdown_background();
    }

    #[test]
    fn pull_reports_network_down() {
        let dir = tempfile::tempdir().unwrap();
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = ctx(&format!("http://127.0.0.1:{port}"), dir.path(), None);
        let err = pull::run(pull_args(GGUF, None), &c)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot reach"), "{err}");
    }
}

#[tokio::test]
async fn fake_hub_range_semantics() {
    // The fake must behave like the Hub for other clients too (hf-hub 0.5 probes bytes=0-0).
    let hub = FakeHub::builder()
        .repo(FakeRepo::new("a/b").file("w.bin", vec![7u8; 100]))
        .start()
        .await;
    let sha = hub.file("a/b", "w.bin").sha256.clone();
    let url = format!("{}/blobs/{sha}", hub.cdn);
    let http = reqwest::Client::new();
    let get = |range: &'static str| {
        let http = http.clone();
        let url = url.clone();
        async move { http.get(&url).header("range", range).send().await.unwrap() }
    };
    let r = get("bytes=0-0").await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 0-0/100");
    let r = get("bytes=90-100").await;
    assert_eq!(r.headers()["content-range"], "bytes 90-99/100");
    assert_eq!(r.bytes().await.unwrap().len(), 10);
    let r = get("bytes=-5").await;
    assert_eq!(r.headers()["content-range"], "bytes 95-99/100");
    let r = get("bytes=100-").await;
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */100");
}
