//! Errors from talking to the Hub, worded for the person at the keyboard.

use std::time::Duration;

/// Everything that can go wrong between Influence and a Hub-compatible endpoint.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    #[error(
        "model {repo} is gated: request access at {endpoint}/{repo}, then set HF_TOKEN or run \
         `huggingface-cli login`{detail}"
    )]
    Gated {
        repo: String,
        endpoint: String,
        /// Extra text from the Hub (e.g. "awaiting a review"), with a leading separator.
        detail: String,
    },
    #[error(
        "the Hub rejected the token ({message}): check HF_TOKEN or run `huggingface-cli login` again"
    )]
    Unauthorized { message: String },
    #[error("access to {repo} is forbidden ({message}): check that your token has read access")]
    Forbidden { repo: String, message: String },
    #[error(
        "repository {repo} was not found on {endpoint}: check the name; if it is private, set \
         HF_TOKEN or run `huggingface-cli login`"
    )]
    RepoNotFound { repo: String, endpoint: String },
    #[error(
        "revision `{revision}` does not exist in {repo}: check the branch, tag or commit name"
    )]
    RevisionNotFound { repo: String, revision: String },
    #[error("file `{path}` does not exist in {repo} at `{revision}`: check the file name")]
    EntryNotFound {
        repo: String,
        revision: String,
        path: String,
    },
    #[error("{}", rate_limited_message(*.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    #[error("the Hub answered {status} ({message}); try again later")]
    Server {
        status: u16,
        message: String,
        /// `Retry-After` sent with a 503, if any.
        retry_after: Option<Duration>,
    },
    #[error("unexpected answer {status} from {url} ({message})")]
    Http {
        status: u16,
        url: String,
        message: String,
    },
    #[error("cannot reach {endpoint} ({detail}): check your network connection or HF_ENDPOINT")]
    Network { endpoint: String, detail: String },
    #[error("{endpoint} did not answer in time ({detail}); check your network and try again")]
    Timeout { endpoint: String, detail: String },
    #[error(
        "{endpoint} is not Hub-compatible: its answer to {url} lacks {missing}; check HF_ENDPOINT"
    )]
    NotHubCompatible {
        endpoint: String,
        url: String,
        missing: &'static str,
    },
    #[error("could not understand the answer from {url}: {reason}")]
    InvalidResponse { url: String, reason: String },
    #[error("too many redirects (more than {limit}) starting at {url}")]
    TooManyRedirects { url: String, limit: usize },
    #[error("redirect loop at {url}: the server keeps sending us back to the same address")]
    RedirectLoop { url: String },
    #[error("invalid repository id `{id}`: {reason}")]
    InvalidRepoId { id: String, reason: String },
    #[error("refusing unsafe file path `{path}`: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("invalid revision `{revision}`: use a branch, tag or 40-hex commit id")]
    InvalidRevision { revision: String },
    #[error("invalid endpoint `{endpoint}`: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
}

fn rate_limited_message(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(
            "rate limited by the Hub: retry in {} s (set HF_TOKEN for higher limits)",
            d.as_secs().max(1)
        ),
        None => "rate limited by the Hub: wait a few minutes (set HF_TOKEN for higher limits)"
            .to_string(),
    }
}

impl HubError {
    /// Whether trying again later can help (rate limits, 5xx, network trouble).
    pub fn is_transient(&self) -> bool {
        match self {
            HubError::RateLimited { .. }
            | HubError::Server { .. }
            | HubError::Network { .. }
            | HubError::Timeout { .. } => true,
            HubError::Http { status, .. } => *status == 408,
            _ => false,
        }
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HubError::RateLimited { retry_after } | HubError::Server { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let g = HubError::Gated {
            repo: "meta/llama".into(),
            endpoint: "https://huggingface.co".into(),
            detail: String::new(),
        };
        let s = g.to_string();
        assert!(s.contains("HF_TOKEN") && s.contains("huggingface-cli login"));
        assert!(s.contains("https://huggingface.co/meta/llama"));
        let r = HubError::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
        };
        assert!(r.to_string().contains("retry in 7 s"));
        assert!(r.is_transient());
    }
}
