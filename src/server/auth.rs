//! API key check for every route except `/health`.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, Dialect};
use super::ServerCtx;

/// Byte comparison whose time depends only on the lengths, not on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// The key a client sent, from `Authorization: Bearer` or `x-api-key`.
fn presented(headers: &HeaderMap) -> Vec<&[u8]> {
    let mut keys = Vec::new();
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            keys.push(v[7..].trim_ascii());
        }
    }
    if let Some(v) = headers.get("x-api-key") {
        keys.push(v.as_bytes().trim_ascii());
    }
    keys
}

pub async fn require_key(State(ctx): State<ServerCtx>, req: Request, next: Next) -> Response {
    let Some(expected) = ctx.api_key() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path == "/health" || req.method() == axum::http::Method::OPTIONS {
        return next.run(req).await;
    }
    let ok = presented(req.headers())
        .iter()
        .any(|k| constant_time_eq(k, expected.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        ApiError::unauthorized(Dialect::from_path(path)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_whole_keys() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
