//! An in-process fake of the Hugging Face Hub (hub origin + CDN origin on two loopback ports),
//! following §9 of `reference/hub-api.md`: search with `Link` pagination, model info with
//! `?blobs=true`, tree listing, resolve with redirects carrying the real headers, Range/206/416,
//! the 401/403/404 matrix, fault injection and a request log.

// Each user of this module (test, example, bench) uses a different part of it; handlers return
// early error responses through `Result<_, Response>`, which is fine for a test server.
#![allow(dead_code, clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A file in a fake repo, with the hashes the real Hub would report.
#[derive(Debug, Clone)]
pub struct FakeFile {
    pub path: String,
    pub data: Bytes,
    pub sha256: String,
    pub git_sha1: String,
    pub lfs: bool,
    pub pointer_oid: String,
    pub pointer_size: u64,
}

impl FakeFile {
    pub fn new(path: &str, data: Vec<u8>) -> Self {
        let sha256 = hex::encode(Sha256::digest(&data));
        let git_sha1 = git_sha1(&data);
        let lfs = data.len() > 10 * 1024
            || [".gguf", ".safetensors", ".bin"]
                .iter()
                .any(|e| path.ends_with(e));
        let pointer = format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {}\n",
            data.len()
        );
        FakeFile {
            path: path.to_string(),
            sha256,
            git_sha1,
            lfs,
            pointer_oid: git_sha1_of(pointer.as_bytes()),
            pointer_size: pointer.len() as u64,
            data: Bytes::from(data),
        }
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// The cache blob name: sha256 for LFS, git sha1 otherwise.
    pub fn etag(&self) -> &str {
        if self.lfs {
            &self.sha256
        } else {
            &self.git_sha1
        }
    }
}

fn git_sha1_of(data: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex::encode(h.finalize())
}

pub fn git_sha1(data: &[u8]) -> String {
    git_sha1_of(data)
}

/// Deterministic pseudo-random content, so every file has a distinct, checkable hash.
pub fn content(seed: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in seed.bytes() {
        x = (x ^ b as u64).wrapping_mul(0x100_0000_01B3);
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A fake model repo.
#[derive(Debug, Clone)]
pub struct FakeRepo {
    pub id: String,
    pub sha: String,
    pub branches: Vec<String>,
    pub gated: bool,
    /// Users allowed into a gated repo.
    pub allowed: Vec<String>,
    /// Owners of a private repo (`None` = public).
    pub private_owner: Option<String>,
    pub downloads: u64,
    pub likes: u64,
    pub trending: u64,
    pub tags: Vec<String>,
    pub pipeline_tag: Option<String>,
    pub library_name: Option<String>,
    pub created_at: String,
    pub last_modified: String,
    pub files: Vec<FakeFile>,
    /// Old id that now answers with a same-origin 307 to this repo.
    pub renamed_from: Option<String>,
    /// The `gguf` object of model info.
    pub gguf: Option<Value>,
}

impl FakeRepo {
    pub fn new(id: &str) -> Self {
        FakeRepo {
            id: id.to_string(),
            sha: git_sha1_of(id.as_bytes()),
            branches: vec!["main".into()],
            gated: false,
            allowed: vec![],
            private_owner: None,
            downloads: 0,
            likes: 0,
            trending: 0,
            tags: vec![],
            pipeline_tag: None,
            library_name: None,
            created_at: "2025-01-01T00:00:00.000Z".into(),
            last_modified: "2025-01-02T00:00:00.000Z".into(),
            files: vec![],
            renamed_from: None,
            gguf: None,
        }
    }

    pub fn file(mut self, path: &str, data: Vec<u8>) -> Self {
        self.files.push(FakeFile::new(path, data));
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        self
    }

    pub fn gated(mut self, allowed: &[&str]) -> Self {
        self.gated = true;
        self.allowed = allowed.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn private(mut self, owner: &str) -> Self {
        self.private_owner = Some(owner.to_string());
        self
    }

    pub fn stats(mut self, downloads: u64, likes: u64) -> Self {
        self.downloads = downloads;
        self.likes = likes;
        self.trending = likes / 2;
        self
    }

    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn pipeline(mut self, tag: &str) -> Self {
        self.pipeline_tag = Some(tag.to_string());
        self
    }

    pub fn library(mut self, lib: &str) -> Self {
        self.library_name = Some(lib.to_string());
        self
    }

    pub fn modified(mut self, iso: &str) -> Self {
        self.last_modified = iso.to_string();
        self
    }

    pub fn branch(mut self, name: &str) -> Self {
        self.branches.push(name.to_string());
        self
    }

    pub fn gguf(mut self, v: Value) -> Self {
        self.gguf = Some(v);
        self
    }

    pub fn renamed_from(mut self, old: &str) -> Self {
        self.renamed_from = Some(old.to_string());
        self
    }

    pub fn get(&self, path: &str) -> Option<&FakeFile> {
        self.files.iter().find(|f| f.path == path)
    }

    fn author(&self) -> &str {
        self.id.split('/').next().unwrap_or("")
    }
}

/// A fault that fires on the next `remaining` matching requests.
#[derive(Debug, Clone, Default)]
pub struct Countdown {
    pub remaining: u32,
    pub value: u64,
}

impl Countdown {
    pub fn new(times: u32, value: u64) -> Option<Self> {
        Some(Countdown {
            remaining: times,
            value,
        })
    }
}

fn fire(slot: &mut Option<Countdown>) -> Option<u64> {
    let c = slot.as_mut()?;
    if c.remaining == 0 {
        return None;
    }
    c.remaining -= 1;
    Some(c.value)
}

/// Fault injection knobs (§9.11). Counted faults use [`Countdown`]: `Countdown::new(times, value)`.
#[derive(Debug, Default)]
pub struct Faults {
    /// 429 with `Retry-After: value` secs on the next n resolve requests.
    pub rate_limit: Option<Countdown>,
    /// Status `value` (500..504) on the next n resolve requests.
    pub fail_5xx: Option<Countdown>,
    /// Close the connection after `value` body bytes (Content-Length still declares the full size).
    pub truncate_after: Option<Countdown>,
    /// Send `value` body bytes, then keep the connection open without sending more.
    pub stall_after: Option<Countdown>,
    /// Flip the byte at file offset `value`.
    pub corrupt_byte: Option<Countdown>,
    /// Serve the body one byte short with a matching Content-Length (size ≠ X-Linked-Size).
    pub wrong_length: Option<Countdown>,
    /// Answer Range requests with 200 and the full body.
    pub ignore_range: bool,
    /// 206 without Content-Range.
    pub omit_content_range: bool,
    /// resolve answers a 302 to itself.
    pub redirect_loop: bool,
    /// Throttle file bodies to this many bytes per second.
    pub slow: Option<u64>,
    /// Extra entries with these (unsafe) names in siblings and tree listings.
    pub unsafe_paths: Vec<String>,
    /// Search `Link` URLs are relative.
    pub relative_link: bool,
    /// Search `Link` points at the same page again.
    pub repeat_link: bool,
    /// Drop X-Repo-Commit / ETag / X-Linked-* from resolve answers.
    pub strip_metadata_headers: bool,
    /// The CDN answers 403 to the next n signed URLs.
    pub expire_signature: Option<Countdown>,
    /// Regular files go through a relative 307 to `/api/resolve-cache/...` (mode B).
    pub resolve_cache_mode: bool,
    /// Every hub request is answered with a 308 to this origin (mirror style).
    pub mirror_308_to: Option<String>,
}

/// Which listener answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Hub,
    Cdn,
}

/// One logged request (§9.12).
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub origin: Origin,
    pub method: String,
    pub path: String,
    pub query: String,
    pub range: Option<String>,
    pub authorization: bool,
    pub if_none_match: Option<String>,
    pub accept_encoding: Option<String>,
    pub status: u16,
}

struct Shared {
    repos: Vec<FakeRepo>,
    tokens: HashMap<String, String>,
    faults: Mutex<Faults>,
    log: Mutex<Vec<LogEntry>>,
    hub_base: String,
    cdn_base: String,
    tree_page_size: usize,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    request_ids: AtomicU64,
}

/// Builder for a [`FakeHub`].
#[derive(Default)]
pub struct FakeHubBuilder {
    repos: Vec<FakeRepo>,
    tokens: HashMap<String, String>,
    tree_page_size: Option<usize>,
}

impl FakeHubBuilder {
    pub fn repo(mut self, r: FakeRepo) -> Self {
        self.repos.push(r);
        self
    }

    pub fn repos(mut self, rs: impl IntoIterator<Item = FakeRepo>) -> Self {
        self.repos.extend(rs);
        self
    }

    /// A valid token and the user it belongs to.
    pub fn token(mut self, token: &str, user: &str) -> Self {
        self.tokens.insert(token.to_string(), user.to_string());
        self
    }

    pub fn tree_page_size(mut self, n: usize) -> Self {
        self.tree_page_size = Some(n);
        self
    }

    pub async fn start(self) -> FakeHub {
        let hub_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cdn_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hub_base = format!("http://{}", hub_l.local_addr().unwrap());
        let cdn_base = format!("http://{}", cdn_l.local_addr().unwrap());
        let shared = Arc::new(Shared {
            repos: self.repos,
            tokens: self.tokens,
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(Vec::new()),
            hub_base: hub_base.clone(),
            cdn_base: cdn_base.clone(),
            tree_page_size: self.tree_page_size.unwrap_or(1000),
            inflight: AtomicUsize::new(0),
            max_inflight: AtomicUsize::new(0),
            request_ids: AtomicU64::new(1),
        });
        let hub_app = Router::new()
            .fallback(hub_handler)
            .with_state(shared.clone());
        let cdn_app = Router::new()
            .fallback(cdn_handler)
            .with_state(shared.clone());
        let t1 = tokio::spawn(async move {
            let _ = axum::serve(hub_l, hub_app).await;
        });
        let t2 = tokio::spawn(async move {
            let _ = axum::serve(cdn_l, cdn_app).await;
        });
        FakeHub {
            endpoint: hub_base,
            cdn: cdn_base,
            shared,
            tasks: vec![t1, t2],
        }
    }
}

/// A running fake hub. Dropping it stops both listeners.
pub struct FakeHub {
    /// `http://127.0.0.1:<hub port>`.
    pub endpoint: String,
    /// `http://127.0.0.1:<cdn port>`.
    pub cdn: String,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FakeHub {
    pub fn builder() -> FakeHubBuilder {
        FakeHubBuilder::default()
    }

    /// Fault knobs; changes apply to the next requests.
    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.shared.faults.lock().unwrap()
    }

    pub fn log(&self) -> Vec<LogEntry> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// Most file bodies that were being streamed at the same moment.
    pub fn max_concurrent_bodies(&self) -> usize {
        self.shared.max_inflight.load(Ordering::SeqCst)
    }

    pub fn repo(&self, id: &str) -> &FakeRepo {
        self.shared
            .repos
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no fake repo {id}"))
    }

    pub fn file(&self, repo: &str, path: &str) -> &FakeFile {
        self.repo(repo)
            .get(path)
            .unwrap_or_else(|| panic!("no file {path} in fake repo {repo}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Request handling

struct Ctx {
    shared: Arc<Shared>,
    method: Method,
    raw_path: String,
    query: Vec<(String, String)>,
    raw_query: String,
    headers: HeaderMap,
    user: Result<Option<String>, ()>,
}

impl Ctx {
    fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn params(&self, k: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn make_ctx(shared: Arc<Shared>, req: &Request) -> Ctx {
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let query = reqwest::Url::parse(&format!("http://x/?{raw_query}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let user = match req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        None => Ok(None),
        Some(t) => shared.tokens.get(t).cloned().map(Some).ok_or(()),
    };
    Ctx {
        method: req.method().clone(),
        raw_path: req.uri().path().to_string(),
        query,
        raw_query,
        headers: req.headers().clone(),
        user,
        shared,
    }
}

fn log(ctx: &Ctx, origin: Origin, status: StatusCode) {
    let h = |name: &str| {
        ctx.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    ctx.shared.log.lock().unwrap().push(LogEntry {
        origin,
        method: ctx.method.to_string(),
        path: ctx.raw_path.clone(),
        query: ctx.raw_query.clone(),
        range: h("range"),
        authorization: ctx.headers.contains_key("authorization"),
        if_none_match: h("if-none-match"),
        accept_encoding: h("accept-encoding"),
        status: status.as_u16(),
    });
}

async fn hub_handler(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let ctx = make_ctx(shared, &req);
    let mut resp = route_hub(&ctx).await;
    finish(&ctx, Origin::Hub, &mut resp);
    resp
}

async fn cdn_handler(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let ctx = make_ctx(shared, &req);
    let mut resp = route_cdn(&ctx);
    finish(&ctx, Origin::Cdn, &mut resp);
    resp
}

fn finish(ctx: &Ctx, origin: Origin, resp: &mut Response) {
    let n = ctx.shared.request_ids.fetch_add(1, Ordering::Relaxed);
    resp.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_str(&format!("Root=1-fake-{n:08x}")).unwrap(),
    );
    log(ctx, origin, resp.status());
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn segments(path: &str) -> Vec<String> {
    path.trim_start_matches('/')
        .split('/')
        .map(pct_decode)
        .collect()
}

fn json_resp(status: StatusCode, v: Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Body::from(v.to_string()))
        .unwrap()
}

fn error(status: StatusCode, code: Option<&str>, message: Option<&str>, body: &str) -> Response {
    let mut r = json_resp(status, json!({ "error": body }));
    if let Some(c) = code {
        r.headers_mut()
            .insert("x-error-code", HeaderValue::from_str(c).unwrap());
    }
    if let Some(m) = message {
        r.headers_mut()
            .insert("x-error-message", HeaderValue::from_str(m).unwrap());
    }
    r
}

async fn route_hub(ctx: &Ctx) -> Response {
    if ctx.user.is_err() {
        return error(
            StatusCode::UNAUTHORIZED,
            None,
            Some("Invalid credentials in Authorization header"),
            "Invalid credentials in Authorization header",
        );
    }
    let mirror = ctx.shared.faults.lock().unwrap().mirror_308_to.clone();
    if let Some(origin) = mirror {
        let q = if ctx.raw_query.is_empty() {
            String::new()
        } else {
            format!("?{}", ctx.raw_query)
        };
        return Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header("location", format!("{origin}{}{q}", ctx.raw_path))
            .body(Body::empty())
            .unwrap();
    }
    let seg = segments(&ctx.raw_path);
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    if let Some(r) = renamed(ctx, &seg) {
        return r;
    }
    match seg.as_slice() {
        ["api", "models"] => search(ctx),
        ["api", "models", ns, name] => model_info(ctx, &format!("{ns}/{name}"), None),
        ["api", "models", ns, name, "revision", rev] => {
            model_info(ctx, &format!("{ns}/{name}"), Some(rev))
        }
        ["api", "models", ns, name, "tree", rev, rest @ ..] => {
            tree(ctx, &format!("{ns}/{name}"), rev, &rest.join("/"))
        }
        ["api", "resolve-cache", "models", ns, name, commit, rest @ ..] => {
            resolve(ctx, &format!("{ns}/{name}"), commit, &rest.join("/"), true).await
        }
        [ns, name, "resolve", rev, rest @ ..] if !rest.is_empty() => {
            resolve(ctx, &format!("{ns}/{name}"), rev, &rest.join("/"), false).await
        }
        _ => error(StatusCode::NOT_FOUND, None, None, "Not found"),
    }
}

/// §9.7 step 1: an old repo id answers with a relative 307 to the new one.
fn renamed(ctx: &Ctx, seg: &[&str]) -> Option<Response> {
    let (prefix, ns, name) = match seg {
        ["api", "models", ns, name, ..] => ("/api/models/", *ns, *name),
        [ns, name, "resolve", ..] => ("/", *ns, *name),
        _ => return None,
    };
    let old = format!("{ns}/{name}");
    let repo = ctx
        .shared
        .repos
        .iter()
        .find(|r| r.renamed_from.as_deref() == Some(old.as_str()))?;
    let rest = ctx.raw_path.strip_prefix(&format!("{prefix}{old}"))?;
    let mut location = format!("{prefix}{}{rest}", repo.id);
    if !ctx.raw_query.is_empty() {
        location = format!("{location}?{}", ctx.raw_query);
    }
    Some(
        Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header("location", location)
            .body(Body::empty())
            .unwrap(),
    )
}

/// The repo if this user may see it, else the §9.5 error.
fn visible_repo<'a>(ctx: &'a Ctx, id: &str) -> Result<&'a FakeRepo, Response> {
    let user = ctx.user.clone().ok().flatten();
    let repo = ctx.shared.repos.iter().find(|r| r.id == id);
    let visible = repo.filter(|r| match &r.private_owner {
        None => true,
        Some(owner) => user.as_deref() == Some(owner.as_str()),
    });
    match (visible, &user) {
        (Some(r), _) => Ok(r),
        (None, None) => Err(error(
            StatusCode::UNAUTHORIZED,
            Some("RepoNotFound"),
            Some("Invalid username or password."),
            "Repository not found",
        )),
        (None, Some(_)) => Err(error(
            StatusCode::NOT_FOUND,
            Some("RepoNotFound"),
            None,
            "Repository not found",
        )),
    }
}

fn commit_of(repo: &FakeRepo, rev: &str) -> Result<String, Response> {
    if rev == repo.sha || repo.branches.iter().any(|b| b == rev) {
        Ok(repo.sha.clone())
    } else {
        Err(error(
            StatusCode::NOT_FOUND,
            Some("RevisionNotFound"),
            None,
            &format!("Invalid rev id: {rev}"),
        ))
    }
}

fn summary(repo: &FakeRepo, full: bool, expand: &[&str]) -> Value {
    let mut all = serde_json::Map::new();
    all.insert("_id".into(), json!(&repo.sha[..24]));
    all.insert("id".into(), json!(repo.id));
    all.insert("modelId".into(), json!(repo.id));
    all.insert("likes".into(), json!(repo.likes));
    all.insert("downloads".into(), json!(repo.downloads));
    all.insert("trendingScore".into(), json!(repo.trending));
    all.insert("private".into(), json!(repo.private_owner.is_some()));
    all.insert("tags".into(), json!(repo.tags));
    all.insert("createdAt".into(), json!(repo.created_at));
    if let Some(p) = &repo.pipeline_tag {
        all.insert("pipeline_tag".into(), json!(p));
    }
    if let Some(l) = &repo.library_name {
        all.insert("library_name".into(), json!(l));
    }
    let mut extra = serde_json::Map::new();
    extra.insert("author".into(), json!(repo.author()));
    extra.insert("sha".into(), json!(repo.sha));
    extra.insert("lastModified".into(), json!(repo.last_modified));
    extra.insert(
        "gated".into(),
        if repo.gated {
            json!("manual")
        } else {
            json!(false)
        },
    );
    extra.insert("disabled".into(), json!(false));
    extra.insert(
        "siblings".into(),
        json!(repo
            .files
            .iter()
            .map(|f| json!({ "rfilename": f.path }))
            .collect::<Vec<_>>()),
    );
    if !expand.is_empty() {
        let mut out = serde_json::Map::new();
        out.insert("_id".into(), all["_id"].clone());
        out.insert("id".into(), all["id"].clone());
        for k in expand {
            if let Some(v) = all.get(*k).or_else(|| extra.get(*k)) {
                out.insert((*k).to_string(), v.clone());
            }
        }
        return Value::Object(out);
    }
    if full {
        all.extend(extra);
    }
    Value::Object(all)
}

fn search(ctx: &Ctx) -> Response {
    let user = ctx.user.clone().ok().flatten();
    let searches: Vec<String> = ctx
        .params("search")
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let filters = ctx.params("filter");
    let mut hits: Vec<&FakeRepo> = ctx
        .shared
        .repos
        .iter()
        .filter(|r| match &r.private_owner {
            None => true,
            Some(o) => user.as_deref() == Some(o.as_str()),
        })
        .filter(|r| searches.iter().all(|s| r.id.to_lowercase().contains(s)))
        .filter(|r| ctx.param("author").is_none_or(|a| r.author() == a))
        .filter(|r| filters.iter().all(|f| r.tags.iter().any(|t| t == f)))
        .filter(|r| {
            ctx.param("pipeline_tag")
                .is_none_or(|p| r.pipeline_tag.as_deref() == Some(p))
        })
        .filter(|r| ctx.param("gated").is_none_or(|g| (g == "true") == r.gated))
        .collect();
    match ctx.param("sort") {
        None => {}
        Some("downloads") => hits.sort_by_key(|r| std::cmp::Reverse(r.downloads)),
        Some("likes") => hits.sort_by_key(|r| std::cmp::Reverse(r.likes)),
        Some("trendingScore") => hits.sort_by_key(|r| std::cmp::Reverse(r.trending)),
        Some("lastModified") => hits.sort_by(|a, b| b.last_modified.cmp(&a.last_modified)),
        Some("createdAt") => hits.sort_by(|a, b| b.created_at.cmp(&a.created_at)),
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                None,
                None,
                &format!("Invalid sort parameter: {other}"),
            )
        }
    }
    let limit: usize = ctx
        .param("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(1000)
        .clamp(1, 1000);
    let offset: usize = ctx
        .param("cursor")
        .and_then(|c| c.strip_prefix("off"))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let full = ctx.param("full") == Some("true");
    let expand: Vec<&str> = ctx
        .params("expand")
        .into_iter()
        .chain(ctx.params("expand[]"))
        .collect();
    let page: Vec<Value> = hits
        .iter()
        .skip(offset)
        .take(limit)
        .map(|r| summary(r, full, &expand))
        .collect();
    let mut resp = json_resp(StatusCode::OK, Value::Array(page));
    let faults = ctx.shared.faults.lock().unwrap();
    let more = offset + limit < hits.len();
    if more || faults.repeat_link {
        let kept: Vec<String> = ctx
            .raw_query
            .split('&')
            .filter(|p| !p.starts_with("cursor=") && !p.is_empty())
            .map(str::to_string)
            .collect();
        let next_query = if faults.repeat_link {
            ctx.raw_query.clone()
        } else {
            let mut q = kept;
            q.push(format!("cursor=off{}", offset + limit));
            q.join("&")
        };
        let base = if faults.relative_link {
            String::new()
        } else {
            ctx.shared.hub_base.clone()
        };
        let link = format!("<{base}/api/models?{next_query}>; rel=\"next\"");
        resp.headers_mut()
            .insert("link", HeaderValue::from_str(&link).unwrap());
    }
    resp
}

fn sibling(f: &FakeFile, blobs: bool) -> Value {
    if !blobs {
        return json!({ "rfilename": f.path });
    }
    if f.lfs {
        json!({
            "rfilename": f.path, "blobId": f.pointer_oid, "size": f.size(),
            "lfs": { "sha256": f.sha256, "size": f.size(), "pointerSize": f.pointer_size }
        })
    } else {
        json!({ "rfilename": f.path, "blobId": f.git_sha1, "size": f.size() })
    }
}

fn model_info(ctx: &Ctx, id: &str, rev: Option<&str>) -> Response {
    let repo = match visible_repo(ctx, id) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let sha = match commit_of(repo, rev.unwrap_or("main")) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let blobs = ctx.param("blobs") == Some("true");
    let mut siblings: Vec<Value> = repo.files.iter().map(|f| sibling(f, blobs)).collect();
    for p in &ctx.shared.faults.lock().unwrap().unsafe_paths {
        siblings.push(json!({ "rfilename": p, "blobId": "0".repeat(40), "size": 1 }));
    }
    let license = repo
        .tags
        .iter()
        .find_map(|t| t.strip_prefix("license:"))
        .unwrap_or("other");
    let body = json!({
        "_id": &repo.sha[..24], "id": repo.id, "modelId": repo.id, "author": repo.author(),
        "sha": sha, "private": repo.private_owner.is_some(),
        "gated": if repo.gated { json!("manual") } else { json!(false) },
        "disabled": false, "lastModified": repo.last_modified, "createdAt": repo.created_at,
        "likes": repo.likes, "downloads": repo.downloads, "tags": repo.tags,
        "pipeline_tag": repo.pipeline_tag, "library_name": repo.library_name,
        "cardData": { "license": license }, "config": {},
        "siblings": siblings, "spaces": [],
        "usedStorage": repo.files.iter().map(|f| f.size()).sum::<u64>(),
    });
    let mut body = body;
    if let Some(g) = &repo.gguf {
        body["gguf"] = g.clone();
    }
    json_resp(StatusCode::OK, body)
}

fn tree(ctx: &Ctx, id: &str, rev: &str, path: &str) -> Response {
    let repo = match visible_repo(ctx, id) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let sha = match commit_of(repo, rev) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let recursive = ctx.param("recursive") == Some("true");
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let mut entries: std::collections::BTreeMap<String, Value> = Default::default();
    let mut names: Vec<(String, Option<&FakeFile>)> = repo
        .files
        .iter()
        .map(|f| (f.path.clone(), Some(f)))
        .collect();
    for p in &ctx.shared.faults.lock().unwrap().unsafe_paths {
        names.push((p.clone(), None));
    }
    for (name, f) in names {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        for depth in 1..parts.len() {
            if !recursive && depth > 1 {
                break;
            }
            let dir = format!("{prefix}{}", parts[..depth].join("/"));
            entries.entry(dir.clone()).or_insert_with(|| {
                json!({"type": "directory", "oid": git_sha1_of(dir.as_bytes()), "size": 0, "path": dir})
            });
        }
        if !recursive && parts.len() > 1 {
            continue;
        }
        let entry = match f {
            Some(f) if f.lfs => json!({
                "type": "file", "oid": f.pointer_oid, "size": f.size(), "path": f.path,
                "lfs": { "oid": f.sha256, "size": f.size(), "pointerSize": f.pointer_size }
            }),
            Some(f) => json!({"type": "file", "oid": f.git_sha1, "size": f.size(), "path": f.path}),
            None => json!({"type": "file", "oid": "0".repeat(40), "size": 1, "path": name}),
        };
        entries.insert(name, entry);
    }
    if !path.is_empty() && entries.is_empty() {
        let mut r = error(
            StatusCode::NOT_FOUND,
            Some("EntryNotFound"),
            None,
            "Entry not found",
        );
        r.headers_mut()
            .insert("x-repo-commit", HeaderValue::from_str(&sha).unwrap());
        return r;
    }
    let all: Vec<Value> = entries.into_values().collect();
    let page = ctx.shared.tree_page_size;
    let offset: usize = ctx
        .param("cursor")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let items: Vec<Value> = all.iter().skip(offset).take(page).cloned().collect();
    let mut resp = json_resp(StatusCode::OK, Value::Array(items));
    if offset + page < all.len() {
        let kept: Vec<&str> = ctx
            .raw_query
            .split('&')
            .filter(|p| !p.starts_with("cursor=") && !p.is_empty())
            .collect();
        let link = format!(
            "<{}{}?{}{}cursor={}>; rel=\"next\"",
            ctx.shared.hub_base,
            ctx.raw_path,
            kept.join("&"),
            if kept.is_empty() { "" } else { "&" },
            offset + page
        );
        resp.headers_mut()
            .insert("link", HeaderValue::from_str(&link).unwrap());
    }
    resp
}

async fn resolve(ctx: &Ctx, id: &str, rev: &str, path: &str, via_cache: bool) -> Response {
    let mut faults = ctx.shared.faults.lock().unwrap();
    if let Some(secs) = fire(&mut faults.rate_limit) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            None,
            "You have exceeded our hourly quotas for action: resolvers",
        );
        let h = r.headers_mut();
        h.insert(
            "ratelimit",
            HeaderValue::from_str(&format!("\"resolvers\";r=0;t={secs}")).unwrap(),
        );
        h.insert(
            "ratelimit-policy",
            HeaderValue::from_static("\"fixed window\";\"resolvers\";q=3000;w=300"),
        );
        h.insert("retry-after", HeaderValue::from(secs));
        return r;
    }
    if let Some(code) = fire(&mut faults.fail_5xx) {
        let status = StatusCode::from_u16(code as u16).unwrap();
        return error(
            status,
            None,
            None,
            "Internal Error - We're working hard to fix this",
        );
    }
    if faults.redirect_loop {
        let here = format!("{}{}", ctx.shared.hub_base, ctx.raw_path);
        return Response::builder()
            .status(StatusCode::FOUND)
            .header("location", here)
            .body(Body::empty())
            .unwrap();
    }
    let strip = faults.strip_metadata_headers;
    let resolve_cache_mode = faults.resolve_cache_mode;
    drop(faults);
    let repo = match visible_repo(ctx, id) {
        Ok(r) => r,
        Err(e) => return e,
    };
    if repo.gated && !via_cache {
        let user = ctx.user.clone().ok().flatten();
        match user {
            None => {
                let msg = format!(
                    "Access to model {} is restricted. You must have access to it and be \
                     authenticated to access it. Please log in.",
                    repo.id
                );
                return error(
                    StatusCode::UNAUTHORIZED,
                    Some("GatedRepo"),
                    Some(&msg),
                    &msg,
                );
            }
            Some(u) if !repo.allowed.contains(&u) => {
                let msg = format!(
                    "Access to model {} is restricted and you are not in the authorized list. \
                     Visit https://huggingface.co/{} to ask for access.",
                    repo.id, repo.id
                );
                return error(StatusCode::FORBIDDEN, Some("GatedRepo"), Some(&msg), &msg);
            }
            Some(_) => {}
        }
    }
    let sha = match commit_of(repo, rev) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let Some(file) = repo.get(path) else {
        let mut r = error(
            StatusCode::NOT_FOUND,
            Some("EntryNotFound"),
            None,
            "Entry not found",
        );
        r.headers_mut()
            .insert("x-repo-commit", HeaderValue::from_str(&sha).unwrap());
        return r;
    };
    let mut meta = HeaderMap::new();
    meta.insert("x-repo-commit", HeaderValue::from_str(&sha).unwrap());
    if file.lfs {
        let location = format!(
            "{}/blobs/{}?sig={}",
            ctx.shared.cdn_base,
            file.sha256,
            &git_sha1_of(sha.as_bytes())[..16]
        );
        let body = format!("Found. Redirecting to {location}");
        meta.insert(
            "x-linked-etag",
            HeaderValue::from_str(&format!("\"{}\"", file.sha256)).unwrap(),
        );
        meta.insert("x-linked-size", HeaderValue::from(file.size()));
        meta.insert(
            "etag",
            HeaderValue::from_str(&format!("\"{}\"", file.pointer_oid)).unwrap(),
        );
        let mut r = Response::builder()
            .status(StatusCode::FOUND)
            .header("location", location)
            .header("content-type", "text/plain; charset=utf-8")
            .header("content-length", body.len())
            .body(if ctx.method == Method::HEAD {
                Body::empty()
            } else {
                Body::from(body)
            })
            .unwrap();
        if !strip {
            r.headers_mut().extend(meta);
        }
        return r;
    }
    if resolve_cache_mode && !via_cache {
        let (ns, name) = id.split_once('/').unwrap();
        let location = format!(
            "/api/resolve-cache/models/{ns}/{name}/{sha}/{path}?etag=%22{}%22",
            file.git_sha1
        );
        return Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header("location", location)
            .body(Body::empty())
            .unwrap();
    }
    let etag = format!("\"{}\"", file.git_sha1);
    meta.insert("etag", HeaderValue::from_str(&etag).unwrap());
    if ctx
        .headers
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        let mut r = Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap();
        r.headers_mut().extend(meta);
        return r;
    }
    let content_type = if path.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let mut r = serve_body(ctx, file, content_type);
    if !strip {
        r.headers_mut().extend(meta);
    }
    r
}

fn route_cdn(ctx: &Ctx) -> Response {
    let seg = segments(&ctx.raw_path);
    let sha = match seg.as_slice() {
        [b, sha] if b == "blobs" => sha.clone(),
        _ => return error(StatusCode::NOT_FOUND, None, None, "Not found"),
    };
    if fire(&mut ctx.shared.faults.lock().unwrap().expire_signature).is_some() {
        return error(StatusCode::FORBIDDEN, None, None, "Request has expired");
    }
    let Some(file) = ctx
        .shared
        .repos
        .iter()
        .flat_map(|r| r.files.iter())
        .find(|f| f.sha256 == sha)
    else {
        return error(StatusCode::NOT_FOUND, None, None, "Not found");
    };
    let mut r = serve_body(ctx, file, "application/octet-stream");
    let name = file.path.rsplit('/').next().unwrap_or(&file.path);
    let h = r.headers_mut();
    // Deliberately not the sha256, like the real CDN.
    h.insert(
        "etag",
        HeaderValue::from_str(&format!(
            "\"{}\"",
            hex::encode(Sha256::digest(sha.as_bytes()))
        ))
        .unwrap(),
    );
    h.insert(
        "content-disposition",
        HeaderValue::from_str(&format!(
            "inline; filename*=UTF-8''{name}; filename=\"{name}\";"
        ))
        .unwrap(),
    );
    r
}

/// `(start, end_inclusive)` for a single `bytes=` range, or `Err(())` when unsatisfiable;
/// `Ok(None)` means serve the whole file.
fn parse_range(h: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    if size == 0 {
        return Err(());
    }
    if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        return Ok(Some((size.saturating_sub(n), size - 1)));
    }
    let a: u64 = a.parse().map_err(|_| ())?;
    if a >= size {
        return Err(());
    }
    let b = if b.is_empty() {
        size - 1
    } else {
        b.parse::<u64>().map_err(|_| ())?.min(size - 1)
    };
    if b < a {
        return Err(());
    }
    Ok(Some((a, b)))
}

struct InflightGuard(Arc<Shared>);

impl InflightGuard {
    fn new(shared: Arc<Shared>) -> Self {
        let now = shared.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_inflight.fetch_max(now, Ordering::SeqCst);
        InflightGuard(shared)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_body(ctx: &Ctx, file: &FakeFile, content_type: &str) -> Response {
    let size = file.size();
    let mut faults = ctx.shared.faults.lock().unwrap();
    let range_header = ctx.headers.get("range").and_then(|v| v.to_str().ok());
    let range = if faults.ignore_range {
        Ok(None)
    } else {
        parse_range(range_header, size)
    };
    let (start, end) = match range {
        Err(()) => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header("content-range", format!("bytes */{size}"))
                .body(Body::empty())
                .unwrap()
        }
        Ok(None) => (0, size.saturating_sub(1)),
        Ok(Some(r)) => r,
    };
    let partial = matches!(range, Ok(Some(_)));
    let mut builder = Response::builder()
        .status(if partial {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        })
        .header("accept-ranges", "bytes")
        .header("content-type", content_type);
    if partial && !faults.omit_content_range {
        builder = builder.header("content-range", format!("bytes {start}-{end}/{size}"));
    }
    let mut data = if size == 0 {
        Bytes::new()
    } else {
        file.data.slice(start as usize..=end as usize)
    };
    if ctx.method == Method::HEAD {
        return builder
            .header("content-length", data.len())
            .body(Body::empty())
            .unwrap();
    }
    if let Some(off) = fire(&mut faults.corrupt_byte) {
        if off >= start && off <= end {
            let mut v = data.to_vec();
            v[(off - start) as usize] ^= 0xFF;
            data = Bytes::from(v);
        }
    }
    if fire(&mut faults.wrong_length).is_some() && !data.is_empty() {
        data = data.slice(..data.len() - 1);
    }
    let plan = BodyPlan {
        declared: data.len() as u64,
        cut_after: fire(&mut faults.truncate_after),
        stall_after: fire(&mut faults.stall_after),
        bytes_per_sec: faults.slow,
        data,
    };
    drop(faults);
    let guard = InflightGuard::new(ctx.shared.clone());
    builder
        .header("content-length", plan.declared)
        .body(Body::from_stream(body_stream(plan, guard)))
        .unwrap()
}

struct BodyPlan {
    data: Bytes,
    declared: u64,
    cut_after: Option<u64>,
    stall_after: Option<u64>,
    bytes_per_sec: Option<u64>,
}

fn body_stream(
    plan: BodyPlan,
    guard: InflightGuard,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    const CHUNK: usize = 256 * 1024;
    futures::stream::unfold(
        (plan, 0usize, guard, false),
        |(plan, pos, guard, done)| async move {
            if done {
                return None;
            }
            let len = plan.data.len();
            if let Some(cut) = plan.cut_after {
                if pos as u64 >= cut {
                    // Let the bytes already handed over reach the socket before the reset.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let err = std::io::Error::other("fake hub: connection cut");
                    return Some((Err(err), (plan, pos, guard, true)));
                }
            }
            if let Some(stall) = plan.stall_after {
                if pos as u64 >= stall {
                    futures::future::pending::<()>().await;
                }
            }
            if pos >= len {
                return None;
            }
            let mut chunk = CHUNK;
            if let Some(bps) = plan.bytes_per_sec {
                chunk = ((bps / 20) as usize).max(1);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut end = (pos + chunk).min(len);
            for limit in [plan.cut_after, plan.stall_after].into_iter().flatten() {
                if (limit as usize) > pos {
                    end = end.min(limit as usize);
                }
            }
            let piece = plan.data.slice(pos..end);
            Some((Ok(piece), (plan, end, guard, false)))
        },
    )
}

/// The repo set most tests use: a GGUF repo with several quants (one split in parts), a
/// safetensors repo, a gated repo, a private repo and a handful of repos for search.
pub fn standard_repos() -> Vec<FakeRepo> {
    let kb = 1024;
    let mut repos = vec![
        FakeRepo::new("acme/tiny-llama-GGUF")
            .file(
                "README.md",
                b"# Tiny Llama GGUF\nQuantized tiny llama.\n".to_vec(),
            )
            .file(
                ".gitattributes",
                b"*.gguf filter=lfs diff=lfs merge=lfs -text\n".to_vec(),
            )
            .file("config.json", br#"{"model_type":"llama"}"#.to_vec())
            .file("tiny-llama.Q4_K_M.gguf", content("q4km", 300 * kb))
            .file("tiny-llama.Q8_0.gguf", content("q80", 500 * kb))
            .file(
                "tiny-llama.Q2_K-00001-of-00002.gguf",
                content("q2k-1", 100 * kb),
            )
            .file(
                "tiny-llama.Q2_K-00002-of-00002.gguf",
                content("q2k-2", 90 * kb),
            )
            .tags(&["gguf", "llama", "text-generation", "license:apache-2.0"])
            .gguf(json!({
                "total": 1_100_000_000u64, "architecture": "llama", "context_length": 2048,
                "chat_template": "{{ messages }}", "bos_token": "<s>", "eos_token": "</s>",
                "totalFileSize": 1_130_000u64
            }))
            .pipeline("text-generation")
            .library("gguf")
            .stats(5000, 40)
            .modified("2025-06-01T10:00:00.000Z"),
        FakeRepo::new("acme/mini-bert")
            .file(
                "config.json",
                br#"{"model_type":"bert","hidden_size":32}"#.to_vec(),
            )
            .file("model-00001-of-00002.safetensors", content("st1", 200 * kb))
            .file("model-00002-of-00002.safetensors", content("st2", 150 * kb))
            .file(
                "model.safetensors.index.json",
                br#"{"metadata":{},"weight_map":{}}"#.to_vec(),
            )
            .file("tokenizer.json", br#"{"version":"1.0"}"#.to_vec())
            .file(
                "tokenizer_config.json",
                br#"{"model_max_length":512}"#.to_vec(),
            )
            .file("pytorch_model.bin", content("bin", 50 * kb))
            .file("onnx/model.onnx", content("onnx", 20 * kb))
            .tags(&["safetensors", "transformers", "bert", "feature-extraction"])
            .pipeline("feature-extraction")
            .library("transformers")
            .stats(900, 12)
            .modified("2025-03-01T10:00:00.000Z"),
        FakeRepo::new("gatekeeper/locked-GGUF")
            .file("locked.Q4_0.gguf", content("locked", 64 * kb))
            .gated(&["alice"])
            .tags(&["gguf", "text-generation"])
            .pipeline("text-generation")
            .stats(10, 1),
        FakeRepo::new("alice/secret-model")
            .file("secret.Q4_0.gguf", content("secret", 16 * kb))
            .private("alice")
            .tags(&["gguf"]),
    ];
    let search_set = [
        (
            "meta-llama/Llama-3-8B",
            90000,
            900,
            "2025-05-01",
            &["text-generation", "safetensors"][..],
        ),
        (
            "bartowski/Llama-3-8B-GGUF",
            70000,
            300,
            "2025-05-03",
            &["gguf", "text-generation"][..],
        ),
        (
            "TheBloke/Llama-2-7B-GGUF",
            60000,
            800,
            "2024-01-01",
            &["gguf", "text-generation"][..],
        ),
        (
            "bartowski/Qwen2.5-7B-GGUF",
            50000,
            200,
            "2025-04-01",
            &["gguf", "text-generation"][..],
        ),
        (
            "TheBloke/Llama-2-13B-GGUF",
            40000,
            500,
            "2024-02-01",
            &["gguf", "text-generation"][..],
        ),
        (
            "someone/llama-embeddings",
            100,
            2,
            "2023-01-01",
            &["feature-extraction"][..],
        ),
        (
            "bartowski/Llama-3.2-1B-GGUF",
            30000,
            100,
            "2025-06-10",
            &["gguf", "text-generation"][..],
        ),
    ];
    for (id, dl, likes, date, tags) in search_set {
        let pipeline = if tags.contains(&"feature-extraction") {
            "feature-extraction"
        } else {
            "text-generation"
        };
        repos.push(
            FakeRepo::new(id)
                .file("README.md", format!("# {id}\n").into_bytes())
                .tags(tags)
                .pipeline(pipeline)
                .stats(dl, likes)
                .modified(&format!("{date}T00:00:00.000Z")),
        );
    }
    repos
}

/// A fake hub with [`standard_repos`] and two users: `hf_alice` (allowed into the gated repo,
/// owner of the private one) and `hf_bob` (neither).
pub async fn start_standard() -> FakeHub {
    FakeHub::builder()
        .repos(standard_repos())
        .token("hf_alice", "alice")
        .token("hf_bob", "bob")
        .tree_page_size(2)
        .start()
        .await
}
