//! A JSON body extractor whose rejections come in the route's dialect and name the bad field.
//!
//! axum's own `Json` answers bad input with plain text and needs `Content-Type:
//! application/json`; Ollama's curl examples send none. Here any body is parsed as JSON, a body
//! over the limit is a 413, and a type error says which top-level field is wrong.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::{ApiError, Dialect};

/// The parsed body; the rejection is an [`ApiError`] in the route's dialect.
pub struct ApiJson<T>(pub T);

/// The keys a request body may have. Anything else is a 400 naming it: a field the server does
/// not act on is never accepted silently.
pub trait Fields {
    /// Top-level keys.
    const FIELDS: &'static [&'static str];
    /// Keys allowed inside object-valued fields (`options` of Ollama), by field.
    const NESTED: &'static [(&'static str, &'static [&'static str])] = &[];
}

/// Declares a request type's keys: `fields!(Type: "a", "b"; nested "options" => OPTS)`.
#[macro_export]
macro_rules! fields {
    ($t:ty: $($f:expr),* $(,)? $(; nested $($k:literal => $v:expr),*)?) => {
        impl $crate::server::extract::Fields for $t {
            const FIELDS: &'static [&'static str] = &[$($f),*];
            $(const NESTED: &'static [(&'static str, &'static [&'static str])] = &[$(($k, $v)),*];)?
        }
    };
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned + Fields,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let dialect = Dialect::from_path(req.uri().path());
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            let status = rej.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    dialect,
                    status,
                    "the request body is larger than the server accepts (server.body_limit); send less text",
                )
            } else {
                ApiError::new(dialect, status, format!("cannot read the request body: {rej}"))
            }
        })?;
        parse(dialect, &bytes).map(ApiJson)
    }
}

/// Parses `bytes` as `T`, naming the offending top-level field when the JSON is well-formed
/// but a field has the wrong type or value, or is not one `T` knows.
pub fn parse<T: DeserializeOwned + Fields>(dialect: Dialect, bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request(
            dialect,
            "the request body is empty; send a JSON object",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(dialect, format!("the request body is not valid JSON: {e}"))
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::bad_request(
            dialect,
            "the request body must be a JSON object",
        ));
    };
    for (k, v) in obj {
        if !T::FIELDS.contains(&k.as_str()) {
            return Err(unknown(dialect, k));
        }
        if let (Some((_, inner)), Some(o)) = (T::NESTED.iter().find(|(n, _)| n == k), v.as_object())
        {
            if let Some(bad) = o.keys().find(|ik| !inner.contains(&ik.as_str())) {
                return Err(unknown(dialect, &format!("{k}.{bad}")));
            }
        }
    }
    match serde_path_to_error::deserialize::<_, T>(&value) {
        Ok(t) => Ok(t),
        Err(e) => {
            let top = match e.path().iter().next() {
                Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
                _ => None,
            };
            let msg = e.into_inner().to_string();
            if let Some(field) = missing_field(&msg) {
                return Err(ApiError::bad_field(
                    dialect,
                    &field,
                    format!("{field} is required"),
                ));
            }
            match top.or_else(|| culprit::<T>(&value)) {
                Some(field) => Err(ApiError::bad_field(dialect, &field, msg)),
                None => Err(ApiError::bad_request(
                    dialect,
                    format!("invalid request: {msg}"),
                )),
            }
        }
    }
}

/// Objects with more keys than this are not searched for a culprit: each try re-parses the
/// whole body, and a 2 MB body of tiny keys would make that quadratic.
const MAX_CULPRIT_KEYS: usize = 64;

fn unknown(dialect: Dialect, field: &str) -> ApiError {
    ApiError::bad_field(
        dialect,
        field,
        format!("{field} is not supported by this endpoint (Influence does not accept fields it would ignore); see docs/API.md"),
    )
}

fn missing_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// When the error's path names no field (a custom check on the whole body), the top-level key
/// at fault: first one whose removal makes the body valid, then a required one whose removal
/// turns the error into "missing field" (its value had the wrong type).
fn culprit<T: DeserializeOwned>(value: &serde_json::Value) -> Option<String> {
    let obj = value.as_object().filter(|o| o.len() <= MAX_CULPRIT_KEYS)?;
    let without = |key: &str| {
        let mut o = obj.clone();
        o.remove(key);
        serde_json::from_value::<T>(serde_json::Value::Object(o))
    };
    if let Some(k) = obj.keys().find(|k| without(k).is_ok()) {
        return Some(k.clone());
    }
    obj.keys()
        .find(|k| {
            without(k)
                .err()
                .and_then(|e| missing_field(&e.to_string()))
                .is_some_and(|f| f == **k)
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Req {
        model: String,
        #[serde(default)]
        temperature: Option<f32>,
    }

    crate::fields!(Req: "model", "temperature"; nested "temperature" => &["x"]);

    #[test]
    fn unknown_fields_are_named() {
        let e = parse::<Req>(Dialect::OpenAi, br#"{"model":"m","logit_bias":{}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logit_bias"));
        assert!(e.message.contains("not supported"), "{}", e.message);
        let e =
            parse::<Req>(Dialect::Ollama, br#"{"model":"m","temperature":{"y":1}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature.y"));
    }

    #[test]
    fn names_the_field() {
        let e = parse::<Req>(Dialect::OpenAi, br#"{"model":"m","temperature":"hot"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        assert!(e.message.starts_with("temperature"), "{}", e.message);
        let e = parse::<Req>(Dialect::Ollama, br#"{"temperature":1}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = parse::<Req>(Dialect::Ollama, br#"{"model":3}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
    }

    #[test]
    fn garbage_is_a_400_not_a_panic() {
        for body in [
            &b""[..],
            b"{",
            b"[1,2]",
            b"\xff\xfe",
            b"null",
            b"{\"model\":\"m\"",
        ] {
            let e = parse::<Req>(Dialect::OpenAi, body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
    }
}
