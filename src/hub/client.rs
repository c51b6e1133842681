//! HTTP client for the Hub API: search, model info, tree listing and file downloads.
//!
//! Redirects are followed by hand (reqwest's policy is `none`) so that the token only ever goes to
//! the Hub's own origin: a signed CDN URL on another host must never see `Authorization`.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, LOCATION, RANGE};
use reqwest::{Method, Response, StatusCode, Url};

use super::error::HubError;
use super::types::{
    LfsInfo, ModelInfo, ModelSummary, RawInfo, RawTreeEntry, RepoFile, SearchPage, SearchQuery,
    TreeEntry,
};
use super::validate::{is_hex, validate_repo_id, validate_repo_path, validate_revision};

/// JSON answers (search pages, model info, tree pages) over this size are refused; the largest
/// real ones, a full search page or the tree of a repo with thousands of files, are a few MB.
pub const MAX_JSON_BODY: usize = 64 * 1024 * 1024;
/// Error bodies are read only this far for their message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Redirect hops followed before giving up.
pub const MAX_REDIRECTS: usize = 10;
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// Fields requested with `expand` for search results.
const SEARCH_FIELDS: [&str; 9] = [
    "author",
    "downloads",
    "likes",
    "lastModified",
    "pipeline_tag",
    "library_name",
    "tags",
    "gated",
    "private",
];
const USER_AGENT: &str = concat!("influence/", env!("CARGO_PKG_VERSION"));

/// A client for one Hub-compatible endpoint. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct HubClient {
    http: reqwest::Client,
    endpoint: String,
    origin: Url,
    token: Option<String>,
}

/// What the Hub said about a file before its bytes arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// 40-hex commit the revision resolved to (`X-Repo-Commit`).
    pub commit: String,
    /// Cache blob name and expected hash: sha256 (64 hex) for LFS, git sha1 (40 hex) otherwise.
    pub etag: String,
    /// Full file size.
    pub size: u64,
}

/// An open download: metadata plus the response whose body starts at byte `start`.
#[derive(Debug)]
pub struct FileResponse {
    pub meta: FileMeta,
    /// Offset of the first body byte in the file: the requested resume offset on a verified 206,
    /// 0 when the server sent the whole file.
    pub start: u64,
    pub response: Response,
}

/// Which request an error answer belongs to, so a 404 can say "repo" or "file".
#[derive(Debug, Clone, Default)]
struct ErrCtx<'a> {
    repo: &'a str,
    revision: Option<&'a str>,
    path: Option<&'a str>,
}

/// Metadata headers seen on hub-origin hops of a redirect chain.
#[derive(Debug, Default)]
struct HopMeta {
    commit: Option<String>,
    linked_etag: Option<String>,
    etag: Option<String>,
    linked_size: Option<u64>,
}

impl HubClient {
    /// A client for `endpoint` (e.g. `https://huggingface.co` or a mirror). The token, if any, is
    /// sent only to that endpoint's origin.
    pub fn new(endpoint: &str, token: Option<String>) -> Result<Self, HubError> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let origin = Url::parse(&endpoint).map_err(|e| HubError::InvalidEndpoint {
            endpoint: endpoint.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(origin.scheme(), "http" | "https") || origin.host_str().is_none() {
            return Err(HubError::InvalidEndpoint {
                endpoint,
                reason: "it must be an http:// or https:// URL".into(),
            });
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(USER_AGENT)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| HubError::InvalidEndpoint {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?;
        let token = token.filter(|t| !t.trim().is_empty());
        Ok(HubClient {
            http,
            endpoint,
            origin,
            token,
        })
    }

    /// The endpoint without a trailing slash.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Searches models. The answer holds one page; `next` leads to the following one.
    pub async fn search(&self, q: &SearchQuery) -> Result<SearchPage, HubError> {
        let mut url = self.url("/api/models")?;
        {
            let mut qp = url.query_pairs_mut();
            if let Some(s) = q.search.as_deref().filter(|s| !s.is_empty()) {
                qp.append_pair("search", s);
            }
            if let Some(a) = q.author.as_deref().filter(|s| !s.is_empty()) {
                qp.append_pair("author", a);
            }
            for f in &q.filters {
                qp.append_pair("filter", f);
            }
            if let Some(p) = q.pipeline_tag.as_deref().filter(|s| !s.is_empty()) {
                qp.append_pair("pipeline_tag", p);
            }
            if let Some(s) = q.sort {
                qp.append_pair("sort", s.as_param());
            }
            if let Some(l) = q.limit {
                qp.append_pair("limit", &l.min(1000).to_string());
            }
            if q.full {
                qp.append_pair("full", "true");
            } else {
                // Without `full`, which fields come back is unspecified: ask for what the
                // result table shows (huggingface.js does the same).
                for k in SEARCH_FIELDS {
                    qp.append_pair("expand", k);
                }
            }
        }
        self.search_url(url).await
    }

    /// Fetches the page behind a `next` URL from an earlier [`SearchPage`].
    pub async fn search_next(&self, next: &str) -> Result<SearchPage, HubError> {
        let url = Url::parse(next).map_err(|e| HubError::InvalidResponse {
            url: next.to_string(),
            reason: format!("bad next-page URL: {e}"),
        })?;
        self.search_url(url).await
    }

    async fn search_url(&self, url: Url) -> Result<SearchPage, HubError> {
        let resp = self.get_ok(url.clone(), ErrCtx::default()).await?;
        let next = next_link(resp.headers(), &url).filter(|n| n != &url);
        let bytes = self.body_capped(resp, &url, MAX_JSON_BODY).await?;
        let models = parse_search_page(&bytes, &url)?;
        Ok(SearchPage {
            models,
            next: next.map(|u| u.to_string()),
        })
    }

    /// Model details with per-file sizes and LFS sha256 (`?blobs=true`), at `revision` or the
    /// default branch. Unsafe file names are moved to `rejected_paths`.
    pub async fn model_info(
        &self,
        repo: &str,
        revision: Option<&str>,
    ) -> Result<ModelInfo, HubError> {
        validate_repo_id(repo)?;
        let path = match revision {
            Some(rev) => {
                validate_revision(rev)?;
                format!("/api/models/{repo}/revision/{}", encode_segment(rev))
            }
            None => format!("/api/models/{repo}"),
        };
        let mut url = self.url(&path)?;
        url.query_pairs_mut().append_pair("blobs", "true");
        let ctx = ErrCtx {
            repo,
            revision,
            path: None,
        };
        let resp = self.get_ok(url.clone(), ctx).await?;
        let bytes = self.body_capped(resp, &url, MAX_JSON_BODY).await?;
        parse_model_info(&bytes, &url)
    }

    /// Every file of the repo at `revision`, from the recursive tree listing (follows pagination).
    pub async fn list_files(
        &self,
        repo: &str,
        revision: &str,
    ) -> Result<(Vec<RepoFile>, Vec<String>), HubError> {
        validate_repo_id(repo)?;
        validate_revision(revision)?;
        let mut url = self.url(&format!(
            "/api/models/{repo}/tree/{}",
            encode_segment(revision)
        ))?;
        url.query_pairs_mut()
            .append_pair("recursive", "true")
            .append_pair("expand", "false");
        let ctx = ErrCtx {
            repo,
            revision: Some(revision),
            path: None,
        };
        let mut files = Vec::new();
        let mut rejected = Vec::new();
        let mut seen = HashSet::new();
        let mut next = Some(url);
        while let Some(url) = next.take() {
            if !seen.insert(url.clone()) {
                break;
            }
            let resp = self.get_ok(url.clone(), ctx.clone()).await?;
            next = next_link(resp.headers(), &url);
            let bytes = self.body_capped(resp, &url, MAX_JSON_BODY).await?;
            let (page, bad) = parse_tree_page(&bytes, &url)?;
            files.extend(page);
            rejected.extend(bad);
        }
        Ok((files, rejected))
    }

    /// The resolve URL of a file at a revision (each part percent-encoded).
    pub fn resolve_url(&self, repo: &str, revision: &str, path: &str) -> String {
        let file: Vec<String> = path.split('/').map(encode_segment).collect();
        format!(
            "{}/{repo}/resolve/{}/{}",
            self.endpoint,
            encode_segment(revision),
            file.join("/")
        )
    }

    /// A file's URL once its repo, revision and path are checked, and the context its errors
    /// name.
    fn checked_file_url<'a>(
        &self,
        repo: &'a str,
        revision: &'a str,
        path: &'a str,
    ) -> Result<(Url, ErrCtx<'a>), HubError> {
        validate_repo_id(repo)?;
        validate_revision(revision)?;
        validate_repo_path(path)?;
        let url = self.file_url(repo, revision, path)?;
        let ctx = ErrCtx {
            repo,
            revision: Some(revision),
            path: Some(path),
        };
        Ok((url, ctx))
    }

    /// Commit, etag and size of a file without downloading it: a HEAD on the resolve URL that
    /// follows same-origin redirects (renames, `/api/resolve-cache`) but stops before the CDN.
    pub async fn file_meta(
        &self,
        repo: &str,
        revision: &str,
        path: &str,
    ) -> Result<FileMeta, HubError> {
        let (url, ctx) = self.checked_file_url(repo, revision, path)?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let (resp, hops) = self
            .send(
                Method::HEAD,
                url.clone(),
                headers,
                Some(METADATA_TIMEOUT),
                false,
            )
            .await?;
        let status = resp.status();
        if !(status.is_success() || status.is_redirection()) {
            return Err(self.error_for(resp, &ctx).await);
        }
        self.file_meta_from(&resp, hops, &url)
    }

    fn file_url(&self, repo: &str, revision: &str, path: &str) -> Result<Url, HubError> {
        Url::parse(&self.resolve_url(repo, revision, path)).map_err(|e| HubError::InvalidPath {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// Opens a file for download, resuming at byte `from` when it is above 0.
    ///
    /// Follows the Hub's redirect to the CDN without the token, reads the commit, etag and size
    /// from the Hub's own hops and checks that a ranged answer really starts at `from`. A server
    /// that ignores the range (200) or answers 416 gets the whole file instead (`start` = 0).
    pub async fn open_file(
        &self,
        repo: &str,
        revision: &str,
        path: &str,
        from: u64,
    ) -> Result<FileResponse, HubError> {
        let (url, ctx) = self.checked_file_url(repo, revision, path)?;
        let mut from = from;
        loop {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
            if from > 0 {
                let v = HeaderValue::from_str(&format!("bytes={from}-")).expect("ascii range");
                headers.insert(RANGE, v);
            }
            // No overall timeout: a big file takes as long as it takes; the download worker
            // watches for stalls instead.
            let (resp, hops) = self
                .send(Method::GET, url.clone(), headers, None, true)
                .await?;
            let status = resp.status();
            if status == StatusCode::RANGE_NOT_SATISFIABLE && from > 0 {
                // Our partial file is longer than the remote one: start over.
                from = 0;
                continue;
            }
            if !status.is_success() {
                return Err(self.error_for(resp, &ctx).await);
            }
            let meta = self.file_meta_from(&resp, hops, &url)?;
            let start = match status {
                StatusCode::PARTIAL_CONTENT => {
                    match content_range(resp.headers()) {
                        Some((a, total)) if a == from && total == meta.size => from,
                        // A 206 we cannot line up with the partial file is unusable.
                        _ if from > 0 => {
                            from = 0;
                            continue;
                        }
                        _ => 0,
                    }
                }
                _ => 0,
            };
            return Ok(FileResponse {
                meta,
                start,
                response: resp,
            });
        }
    }

    /// The first `max` bytes of a file (fewer if it is shorter), e.g. a GGUF header's metadata:
    /// a ranged GET, read up to `max` bytes even from a server that ignores the range.
    pub async fn read_prefix(
        &self,
        repo: &str,
        revision: &str,
        path: &str,
        max: usize,
    ) -> Result<Vec<u8>, HubError> {
        let (url, ctx) = self.checked_file_url(repo, revision, path)?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let range = format!("bytes=0-{}", max.saturating_sub(1));
        headers.insert(RANGE, HeaderValue::from_str(&range).expect("ascii range"));
        let (mut resp, _) = self
            .send(Method::GET, url, headers, Some(METADATA_TIMEOUT), true)
            .await?;
        if !resp.status().is_success() {
            return Err(self.error_for(resp, &ctx).await);
        }
        let mut out = Vec::with_capacity(max.min(1 << 20));
        while out.len() < max {
            let chunk = resp.chunk().await.map_err(|e| HubError::Network {
                endpoint: self.endpoint.clone(),
                detail: e.to_string(),
            })?;
            match chunk {
                Some(c) => out.extend_from_slice(&c[..c.len().min(max - out.len())]),
                None => break,
            }
        }
        Ok(out)
    }

    fn file_meta_from(
        &self,
        resp: &Response,
        hops: HopMeta,
        url: &Url,
    ) -> Result<FileMeta, HubError> {
        let missing = |what: &'static str| HubError::NotHubCompatible {
            endpoint: self.endpoint.clone(),
            url: url.to_string(),
            missing: what,
        };
        let commit = hops
            .commit
            .ok_or_else(|| missing("the X-Repo-Commit header"))?;
        if !is_hex(&commit, 40) {
            return Err(missing("a 40-hex X-Repo-Commit"));
        }
        let etag = hops
            .linked_etag
            .or(hops.etag)
            .ok_or_else(|| missing("an ETag or X-Linked-Etag header"))?
            .to_ascii_lowercase();
        if !(is_hex(&etag, 64) || is_hex(&etag, 40)) {
            return Err(missing("a hex ETag"));
        }
        let size = hops
            .linked_size
            .or_else(|| {
                // Only the file's own answer gives its size; a redirect's length is its body's.
                let final_is_hub = same_origin(resp.url(), &self.origin);
                // Read the header itself: for HEAD, reqwest's content_length() is the (empty)
                // body's length.
                (final_is_hub && resp.status() == StatusCode::OK)
                    .then(|| header_str(resp.headers(), "content-length"))
                    .flatten()
                    .and_then(|v| v.parse().ok())
            })
            .or_else(|| content_range(resp.headers()).map(|(_, total)| total))
            .ok_or_else(|| missing("the file size (X-Linked-Size or Content-Length)"))?;
        Ok(FileMeta { commit, etag, size })
    }

    fn url(&self, path: &str) -> Result<Url, HubError> {
        Url::parse(&format!("{}{path}", self.endpoint)).map_err(|e| HubError::InvalidEndpoint {
            endpoint: self.endpoint.clone(),
            reason: e.to_string(),
        })
    }

    async fn get_ok(&self, url: Url, ctx: ErrCtx<'_>) -> Result<Response, HubError> {
        let (resp, _) = self
            .send(
                Method::GET,
                url,
                HeaderMap::new(),
                Some(METADATA_TIMEOUT),
                true,
            )
            .await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.error_for(resp, &ctx).await)
        }
    }

    /// Reads a response body, refusing one longer than `cap`: a mirror or a proxy that sends
    /// gigabytes of "JSON" must not fill memory.
    async fn body_capped(
        &self,
        mut resp: Response,
        url: &Url,
        cap: usize,
    ) -> Result<Vec<u8>, HubError> {
        let too_big = || HubError::InvalidResponse {
            url: url.to_string(),
            reason: format!("the answer is larger than {cap} bytes"),
        };
        if resp.content_length().is_some_and(|n| n > cap as u64) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.net_err(&e))? {
            if body.len() + chunk.len() > cap {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Sends a request and follows redirects by hand: the token goes only to the hub's origin,
    /// hops are capped at [`MAX_REDIRECTS`] and a URL seen twice is a loop.
    async fn send(
        &self,
        method: Method,
        start: Url,
        headers: HeaderMap,
        timeout: Option<Duration>,
        cross_origin: bool,
    ) -> Result<(Response, HopMeta), HubError> {
        let mut url = start.clone();
        let mut seen = HashSet::new();
        seen.insert(url.clone());
        let mut meta = HopMeta::default();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            let hub_origin = same_origin(&url, &self.origin);
            if hub_origin {
                if let Some(t) = &self.token {
                    req = req.header(AUTHORIZATION, format!("Bearer {t}"));
                }
            }
            let resp = req.send().await.map_err(|e| self.net_err(&e))?;
            if hub_origin {
                meta.absorb(resp.headers());
            }
            let status = resp.status();
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match (
                status.is_redirection() && status != StatusCode::NOT_MODIFIED,
                location,
            ) {
                (true, Some(loc)) => {
                    let next = redirect_target(&url, &loc)?;
                    if !cross_origin && !same_origin(&next, &self.origin) {
                        // Metadata lives on the hub's hops; the CDN adds nothing.
                        return Ok((resp, meta));
                    }
                    if !seen.insert(next.clone()) {
                        return Err(HubError::RedirectLoop {
                            url: next.to_string(),
                        });
                    }
                    url = next;
                }
                _ => return Ok((resp, meta)),
            }
        }
        Err(HubError::TooManyRedirects {
            url: start.to_string(),
            limit: MAX_REDIRECTS,
        })
    }

    fn net_err(&self, e: &reqwest::Error) -> HubError {
        let detail = error_chain(e);
        if e.is_timeout() {
            HubError::Timeout {
                endpoint: self.endpoint.clone(),
                detail,
            }
        } else {
            HubError::Network {
                endpoint: self.endpoint.clone(),
                detail,
            }
        }
    }

    async fn error_for(&self, resp: Response, ctx: &ErrCtx<'_>) -> HubError {
        let status = resp.status().as_u16();
        let url = resp.url().to_string();
        let from_hub = same_origin(resp.url(), &self.origin);
        let h = resp.headers();
        let code = header_str(h, "x-error-code");
        let mut message = header_str(h, "x-error-message");
        let retry_after = retry_after(h);
        if message.is_none() {
            let url = resp.url().clone();
            let body = self
                .body_capped(resp, &url, MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
            message = error_body(&body);
        }
        let message = message.unwrap_or_default();
        let repo = ctx.repo.to_string();
        let revision = ctx.revision.unwrap_or("main").to_string();
        if !from_hub {
            // A CDN refusal (often an expired signed URL): resolving again gets a fresh one.
            return HubError::Server {
                status,
                message: format!("download server refused {url}: {message}"),
                retry_after,
            };
        }
        match (status, code.as_deref()) {
            (_, Some("GatedRepo")) => HubError::Gated {
                repo,
                endpoint: self.endpoint.clone(),
                detail: if status == 403 && !message.is_empty() {
                    format!(" (the Hub says: {message})")
                } else {
                    String::new()
                },
            },
            (429, _) => HubError::RateLimited { retry_after },
            (_, Some("RevisionNotFound")) => HubError::RevisionNotFound { repo, revision },
            (_, Some("EntryNotFound")) => HubError::EntryNotFound {
                repo,
                revision,
                path: ctx.path.unwrap_or_default().to_string(),
            },
            (401, _) if message.contains("Invalid credentials") => {
                HubError::Unauthorized { message }
            }
            (401 | 404, _) if !ctx.repo.is_empty() => {
                if status == 404 && code.is_none() && ctx.path.is_some() {
                    HubError::EntryNotFound {
                        repo,
                        revision,
                        path: ctx.path.unwrap_or_default().to_string(),
                    }
                } else {
                    HubError::RepoNotFound {
                        repo,
                        endpoint: self.endpoint.clone(),
                    }
                }
            }
            (401, _) => HubError::Unauthorized { message },
            (403, _) => HubError::Forbidden { repo, message },
            (500..=599, _) => HubError::Server {
                status,
                message,
                retry_after,
            },
            _ => HubError::Http {
                status,
                url,
                message,
            },
        }
    }
}

impl HopMeta {
    fn absorb(&mut self, h: &HeaderMap) {
        if let Some(c) = header_str(h, "x-repo-commit") {
            self.commit = Some(c);
        }
        if let Some(e) = header_str(h, "x-linked-etag") {
            self.linked_etag = Some(normalize_etag(&e));
        }
        if let Some(e) = header_str(h, "etag") {
            self.etag = Some(normalize_etag(&e));
        }
        if let Some(s) = header_str(h, "x-linked-size").and_then(|s| s.parse().ok()) {
            self.linked_size = Some(s);
        }
    }
}

fn info_from_raw(raw: RawInfo) -> ModelInfo {
    let mut files = Vec::new();
    let mut rejected = Vec::new();
    for s in raw.siblings {
        if validate_repo_path(&s.rfilename).is_err() {
            rejected.push(s.rfilename);
            continue;
        }
        files.push(RepoFile {
            path: s.rfilename,
            size: s.size.or(s.lfs.as_ref().and_then(|l| l.size)),
            blob_id: s.blob_id,
            lfs: s.lfs.map(|l| LfsInfo {
                sha256: l.sha256.to_ascii_lowercase(),
                size: l.size.or(s.size).unwrap_or(0),
            }),
        });
    }
    let license = raw
        .card_data
        .as_ref()
        .and_then(|c| c.get("license"))
        .and_then(|l| l.as_str())
        .map(str::to_string)
        .or_else(|| {
            raw.tags
                .iter()
                .find_map(|t| t.strip_prefix("license:").map(str::to_string))
        });
    ModelInfo {
        id: raw.id,
        sha: raw.sha,
        author: raw.author,
        private: raw.private.unwrap_or(false),
        gated: raw.gated,
        disabled: raw.disabled.unwrap_or(false),
        downloads: raw.downloads,
        likes: raw.likes,
        tags: raw.tags,
        pipeline_tag: raw.pipeline_tag,
        library_name: raw.library_name,
        license,
        last_modified: raw.last_modified,
        files,
        rejected_paths: rejected,
    }
}

fn tree_entry(e: RawTreeEntry) -> TreeEntry {
    if e.kind == "directory" {
        return TreeEntry::Directory { path: e.path };
    }
    TreeEntry::File(RepoFile {
        size: e.size,
        blob_id: e.oid,
        lfs: e.lfs.map(|l| LfsInfo {
            sha256: l.oid.to_ascii_lowercase(),
            size: l.size.or(e.size).unwrap_or(0),
        }),
        path: e.path,
    })
}

/// Parses a JSON answer from `url` into `T`.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], url: &Url) -> Result<T, HubError> {
    serde_json::from_slice(bytes).map_err(|e| HubError::InvalidResponse {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

/// A `/api/models/{repo}` answer; unsafe file names go to `rejected_paths`.
pub fn parse_model_info(bytes: &[u8], url: &Url) -> Result<ModelInfo, HubError> {
    let raw: RawInfo = parse_json(bytes, url)?;
    Ok(info_from_raw(raw))
}

/// One page of a tree listing: its files, and the paths refused as unsafe.
pub fn parse_tree_page(bytes: &[u8], url: &Url) -> Result<(Vec<RepoFile>, Vec<String>), HubError> {
    let entries: Vec<RawTreeEntry> = parse_json(bytes, url)?;
    let mut files = Vec::new();
    let mut rejected = Vec::new();
    for e in entries {
        if validate_repo_path(&e.path).is_err() {
            rejected.push(e.path);
            continue;
        }
        if let TreeEntry::File(f) = tree_entry(e) {
            files.push(f);
        }
    }
    Ok((files, rejected))
}

/// One page of search results.
pub fn parse_search_page(bytes: &[u8], url: &Url) -> Result<Vec<ModelSummary>, HubError> {
    parse_json(bytes, url)
}

/// Where a redirect's `Location` (absolute or relative) leads from `from`.
pub fn redirect_target(from: &Url, location: &str) -> Result<Url, HubError> {
    from.join(location).map_err(|e| HubError::InvalidResponse {
        url: from.to_string(),
        reason: format!("bad redirect target `{location}`: {e}"),
    })
}

/// Same scheme, host and port.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Percent-encodes everything except RFC 3986 unreserved characters.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `rel="next"` URL of a GitHub-style `Link` header, resolved against the request URL.
pub fn next_link(h: &HeaderMap, base: &Url) -> Option<Url> {
    for value in h.get_all("link") {
        let Ok(value) = value.to_str() else { continue };
        for part in value.split(',') {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            let is_next = pieces.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next {
                let inner = target.strip_prefix('<')?.strip_suffix('>')?;
                return base.join(inner).ok();
            }
        }
    }
    None
}

/// `(start, total)` from `Content-Range: bytes a-b/total`.
pub fn content_range(h: &HeaderMap) -> Option<(u64, u64)> {
    let v = header_str(h, "content-range")?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, _b) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// Wait asked by the server: `RateLimit: ...;r=0;t=<s>` first, then `Retry-After` seconds.
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    if let Some(rl) = header_str(h, "ratelimit") {
        let mut r = None;
        let mut t = None;
        for p in rl.split(';') {
            let p = p.trim();
            if let Some(v) = p.strip_prefix("r=") {
                r = v.parse::<u64>().ok();
            } else if let Some(v) = p.strip_prefix("t=") {
                t = v.parse::<u64>().ok();
            }
        }
        if let (Some(0), Some(t)) = (r, t) {
            return Some(Duration::from_secs(t));
        }
    }
    header_str(h, "retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn normalize_etag(e: &str) -> String {
    e.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

fn error_body(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    match v.get("error")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(a) => Some(
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => None,
    }
}

/// An error and its sources in one line, each cause said once.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn link_header_absolute_relative_and_missing() {
        let base = Url::parse("http://h:1/api/models?search=a").unwrap();
        let h = headers(&[("link", "<http://h:1/api/models?cursor=2>; rel=\"next\"")]);
        assert_eq!(
            next_link(&h, &base).unwrap().as_str(),
            "http://h:1/api/models?cursor=2"
        );
        let h = headers(&[("link", "</api/models?cursor=3>; rel=\"next\"")]);
        assert_eq!(
            next_link(&h, &base).unwrap().as_str(),
            "http://h:1/api/models?cursor=3"
        );
        let h = headers(&[("link", "<http://h:1/x>; rel=\"prev\"")]);
        assert!(next_link(&h, &base).is_none());
        assert!(next_link(&HeaderMap::new(), &base).is_none());
    }

    #[test]
    fn rate_limit_headers() {
        let h = headers(&[
            ("ratelimit", "\"resolvers\";r=0;t=55"),
            ("retry-after", "3"),
        ]);
        assert_eq!(retry_after(&h), Some(Duration::from_secs(55)));
        let h = headers(&[("retry-after", "3")]);
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn content_range_parsing() {
        let h = headers(&[("content-range", "bytes 10-99/100")]);
        assert_eq!(content_range(&h), Some((10, 100)));
        let h = headers(&[("content-range", "bytes */100")]);
        assert_eq!(content_range(&h), None);
    }

    #[test]
    fn encoding_and_origins() {
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_segment("a b[1].gguf"), "a%20b%5B1%5D.gguf");
        let a = Url::parse("http://127.0.0.1:80/x").unwrap();
        let b = Url::parse("http://127.0.0.1/y").unwrap();
        let c = Url::parse("http://127.0.0.1:81/y").unwrap();
        assert!(same_origin(&a, &b));
        assert!(!same_origin(&a, &c));
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
    }

    #[test]
    fn client_rejects_bad_endpoints() {
        assert!(HubClient::new("ftp://x", None).is_err());
        assert!(HubClient::new("not a url", None).is_err());
        let c = HubClient::new("https://huggingface.co/", Some(" ".into())).unwrap();
        assert!(!c.has_token());
        assert_eq!(
            c.resolve_url("a/b", "refs/pr/1", "dir/x y.gguf"),
            "https://huggingface.co/a/b/resolve/refs%2Fpr%2F1/dir/x%20y.gguf"
        );
    }
}
