//! What the Hub returns, parsed leniently: only `id` is required, everything else is optional
//! because the field set differs between endpoints, parameters and Hub versions.

use serde::{Deserialize, Serialize};

/// Search order. The Hub always sorts descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sort {
    Downloads,
    Likes,
    LastModified,
    CreatedAt,
    Trending,
}

impl Sort {
    /// The value of the `sort` query parameter.
    pub fn as_param(self) -> &'static str {
        match self {
            Sort::Downloads => "downloads",
            Sort::Likes => "likes",
            Sort::LastModified => "lastModified",
            Sort::CreatedAt => "createdAt",
            Sort::Trending => "trendingScore",
        }
    }

    /// Parses the user-facing names (`downloads`, `likes`, `updated`, `created`, `trending`) and
    /// the Hub's own parameter values.
    pub fn parse(s: &str) -> Option<Sort> {
        match s.to_ascii_lowercase().as_str() {
            "downloads" => Some(Sort::Downloads),
            "likes" => Some(Sort::Likes),
            "updated" | "lastmodified" | "modified" => Some(Sort::LastModified),
            "created" | "createdat" => Some(Sort::CreatedAt),
            "trending" | "trendingscore" => Some(Sort::Trending),
            _ => None,
        }
    }
}

/// A model search. Empty fields are not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    /// Substring of the repo id.
    pub search: Option<String>,
    /// Namespace (user or organisation).
    pub author: Option<String>,
    /// Tags that must all be present, e.g. `gguf`, `license:apache-2.0`.
    pub filters: Vec<String>,
    /// Exact task, e.g. `text-generation`.
    pub pipeline_tag: Option<String>,
    pub sort: Option<Sort>,
    /// Page size.
    pub limit: Option<u32>,
    /// Ask for `full=true` (adds sha, lastModified, gated, siblings).
    pub full: bool,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub id: String,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub downloads: Option<u64>,
    #[serde(default)]
    pub likes: Option<u64>,
    #[serde(default, rename = "trendingScore")]
    pub trending_score: Option<f64>,
    #[serde(default)]
    pub pipeline_tag: Option<String>,
    #[serde(default)]
    pub library_name: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, rename = "lastModified")]
    pub last_modified: Option<String>,
    #[serde(default, rename = "createdAt")]
    pub created_at: Option<String>,
    #[serde(default)]
    pub private: Option<bool>,
    #[serde(default, deserialize_with = "de_gated")]
    pub gated: Gated,
    #[serde(default)]
    pub sha: Option<String>,
}

/// One page of search results. `next` is the absolute URL of the following page, if any; pass it
/// to [`super::HubClient::search_next`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchPage {
    pub models: Vec<ModelSummary>,
    pub next: Option<String>,
}

/// Whether a repo needs the user to accept conditions first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gated {
    #[default]
    No,
    Auto,
    Manual,
}

impl Gated {
    pub fn is_gated(self) -> bool {
        self != Gated::No
    }
}

fn de_gated<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Gated, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::String(s) if s == "manual" => Gated::Manual,
        serde_json::Value::String(_) | serde_json::Value::Bool(true) => Gated::Auto,
        _ => Gated::No,
    })
}

/// LFS metadata of a file: the sha256 of its real content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LfsInfo {
    pub sha256: String,
    pub size: u64,
}

/// A file in a repo, from `?blobs=true` siblings or the tree listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoFile {
    pub path: String,
    /// Real size in bytes, when the Hub said.
    pub size: Option<u64>,
    /// Git blob id (for LFS files this hashes the pointer, not the content).
    pub blob_id: Option<String>,
    pub lfs: Option<LfsInfo>,
}

impl RepoFile {
    /// The cache blob name the download will have: sha256 for LFS, git sha1 otherwise.
    pub fn etag(&self) -> Option<&str> {
        self.lfs
            .as_ref()
            .map(|l| l.sha256.as_str())
            .or(self.blob_id.as_deref())
    }

    /// File name without folders.
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// Model details at one revision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub id: String,
    /// Commit the revision resolved to.
    pub sha: Option<String>,
    pub author: Option<String>,
    pub private: bool,
    pub gated: Gated,
    pub disabled: bool,
    pub downloads: Option<u64>,
    pub likes: Option<u64>,
    pub tags: Vec<String>,
    pub pipeline_tag: Option<String>,
    pub library_name: Option<String>,
    /// From `cardData.license` or a `license:` tag.
    pub license: Option<String>,
    pub last_modified: Option<String>,
    pub files: Vec<RepoFile>,
    /// File names the Hub listed that were refused as unsafe (`..`, absolute, control chars).
    pub rejected_paths: Vec<String>,
}

/// One entry of the tree listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TreeEntry {
    File(RepoFile),
    Directory { path: String },
}

// Raw wire shapes, kept private so the public types stay stable.

#[derive(Deserialize)]
pub(crate) struct RawInfo {
    pub id: String,
    #[serde(default)]
    pub sha: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub private: Option<bool>,
    #[serde(default, deserialize_with = "de_gated")]
    pub gated: Gated,
    #[serde(default)]
    pub disabled: Option<bool>,
    #[serde(default)]
    pub downloads: Option<u64>,
    #[serde(default)]
    pub likes: Option<u64>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub pipeline_tag: Option<String>,
    #[serde(default)]
    pub library_name: Option<String>,
    #[serde(default, rename = "cardData")]
    pub card_data: Option<serde_json::Value>,
    #[serde(default, rename = "lastModified")]
    pub last_modified: Option<String>,
    #[serde(default)]
    pub siblings: Vec<RawSibling>,
}

#[derive(Deserialize)]
pub(crate) struct RawSibling {
    pub rfilename: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default, rename = "blobId")]
    pub blob_id: Option<String>,
    #[serde(default)]
    pub lfs: Option<RawSiblingLfs>,
}

#[derive(Deserialize)]
pub(crate) struct RawSiblingLfs {
    pub sha256: String,
    #[serde(default)]
    pub size: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct RawTreeEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    #[serde(default)]
    pub oid: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub lfs: Option<RawTreeLfs>,
}

#[derive(Deserialize)]
pub(crate) struct RawTreeLfs {
    pub oid: String,
    #[serde(default)]
    pub size: Option<u64>,
}
