//! Hugging Face Hub client: search, model info with file sizes and LFS sha256, file downloads
//! that keep the token on the Hub's own origin, GGUF quant awareness and memory fit.
//!
//! The endpoint and token come from the caller ([`read_token`] implements the usual lookup).

pub mod client;
pub mod error;
pub mod quant;
pub mod shape;
pub mod sysmem;
pub mod token;
pub mod types;
pub mod validate;

pub use client::{FileMeta, FileResponse, HubClient};
pub use error::HubError;
pub use quant::{
    fit_for, gguf_need, group_gguf, human_bytes, pytorch_set, select_files, Fit, FitReport,
    GgufGroup, PullRequest, Quant, SelectError,
};
pub use shape::{fetch_shape, shape_source};
pub use sysmem::MemInfo;
pub use token::read_token;
pub use types::{
    Gated, LfsInfo, ModelInfo, ModelSummary, RepoFile, SearchPage, SearchQuery, Sort, TreeEntry,
};
pub use validate::{validate_repo_id, validate_repo_path, validate_revision};
