//! Structured output fields of each dialect, read into the engine's [`Constraint`]: OpenAI's
//! `response_format`, the Responses API's `text.format`, Ollama's `format` and the raw
//! `grammar` field (llama.cpp's GBNF, translated by [`super::gbnf`], or llguidance's Lark).
//!
//! Only the shape is checked here; the grammar compiles in the engine, against the model's
//! vocabulary, and a schema it cannot use is refused there with a 400 naming the same field.

use serde_json::Value;

use crate::engine::Constraint;

use super::error::{ApiError, Dialect};

/// Grammars and schemas beyond this many bytes are refused before they reach the compiler.
pub const MAX_GRAMMAR_BYTES: usize = 64 * 1024;

fn too_big(dialect: Dialect, field: &str, n: usize) -> ApiError {
    ApiError::bad_field(
        dialect,
        field,
        format!("{field} is {n} bytes; allowed at most {MAX_GRAMMAR_BYTES}"),
    )
}

fn schema_constraint(dialect: Dialect, schema: Value, field: &str) -> Result<Constraint, ApiError> {
    match &schema {
        Value::Object(_) | Value::Bool(true) => {}
        _ => {
            return Err(ApiError::bad_field(
                dialect,
                field,
                format!("{field}: the schema must be a JSON Schema object"),
            ))
        }
    }
    let n = schema.to_string().len();
    if n > MAX_GRAMMAR_BYTES {
        return Err(too_big(dialect, field, n));
    }
    Ok(Constraint::schema(schema, field))
}

/// OpenAI chat's `response_format`: `{"type": "text"}`, `{"type": "json_object"}` or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}`.
pub fn openai_response_format(
    dialect: Dialect,
    v: Option<Value>,
    field: &str,
) -> Result<Option<Constraint>, ApiError> {
    let bad = |msg: String| ApiError::bad_field(dialect, field, msg);
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let Value::Object(o) = v else {
        return Err(bad(format!("{field} must be an object with a `type`")));
    };
    let kind = o.get("type").and_then(Value::as_str).unwrap_or_default();
    let only = |allowed: &[&str]| -> Result<(), ApiError> {
        match o.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(bad(format!(
                "{field}.{k} is not a field of a `{kind}` format; allowed: {}",
                allowed.join(", ")
            ))),
            None => Ok(()),
        }
    };
    match kind {
        "text" => {
            only(&["type"])?;
            Ok(None)
        }
        "json_object" => {
            only(&["type"])?;
            Ok(Some(Constraint::json_object(field)))
        }
        "json_schema" => {
            only(&["type", "json_schema"])?;
            let spec = o
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    bad(format!(
                        "{field}.json_schema must be an object with a `schema`"
                    ))
                })?;
            let inner = format!("{field}.json_schema");
            json_schema_spec(dialect, spec, &inner).map(Some)
        }
        other => Err(bad(format!(
            "{field} type `{other}` is not supported; allowed: text, json_object, json_schema"
        ))),
    }
}

/// `{"name", "schema", "strict", "description"}`, the body of a json_schema format (nested in
/// chat completions, flat in the Responses API's `text.format`). `strict` is accepted either
/// way: the schema is always enforced.
fn json_schema_spec(
    dialect: Dialect,
    spec: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Constraint, ApiError> {
    let bad = |msg: String| ApiError::bad_field(dialect, field, msg);
    const KNOWN: &[&str] = &["name", "schema", "strict", "description", "type"];
    if let Some(k) = spec.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(format!(
            "{field}.{k} is not supported; allowed: name, schema, strict, description"
        )));
    }
    if spec
        .get("strict")
        .is_some_and(|s| !(s.is_boolean() || s.is_null()))
    {
        return Err(bad(format!("{field}.strict must be true or false")));
    }
    match spec.get("name") {
        Some(Value::String(n)) if !n.is_empty() && n.len() <= 64 => {}
        Some(_) => {
            return Err(bad(format!(
                "{field}.name must be a string of 1 to 64 characters"
            )))
        }
        None => return Err(bad(format!("{field}.name is required"))),
    }
    // OpenAI's default when `schema` is left out: any JSON object.
    let schema = spec
        .get("schema")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({"type": "object"}));
    schema_constraint(dialect, schema, field)
}

/// The Responses API's `text`: `{"format": {"type": "text" | "json_object" | "json_schema",
/// ...flat json_schema fields}}`.
pub fn responses_text(dialect: Dialect, v: Option<Value>) -> Result<Option<Constraint>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let bad = |field: &str, msg: String| ApiError::bad_field(dialect, field, msg);
    let Value::Object(o) = v else {
        return Err(bad("text", "text must be an object with a `format`".into()));
    };
    if let Some(k) = o
        .keys()
        .find(|k| k.as_str() != "format" && k.as_str() != "verbosity")
    {
        return Err(bad(
            "text",
            format!("text.{k} is not supported; allowed: format"),
        ));
    }
    if o.get("verbosity").is_some_and(|v| !v.is_null()) {
        return Err(bad(
            "text",
            "text.verbosity is not supported; leave it out".into(),
        ));
    }
    let Some(format) = o.get("format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let Value::Object(f) = format else {
        return Err(bad(
            "text",
            "text.format must be an object with a `type`".into(),
        ));
    };
    match f.get("type").and_then(Value::as_str).unwrap_or_default() {
        "text" if f.len() == 1 => Ok(None),
        "json_object" if f.len() == 1 => Ok(Some(Constraint::json_object("text"))),
        "json_schema" => json_schema_spec(dialect, f, "text.format").map(Some),
        other => Err(bad(
            "text",
            format!("text.format type `{other}` (with these fields) is not supported; allowed: text, json_object, json_schema with name, schema, strict, description"),
        )),
    }
}

/// Ollama's `format`: `""` (plain text), `"json"`, or a JSON Schema object.
pub fn ollama_format(dialect: Dialect, v: Option<Value>) -> Result<Option<Constraint>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(Constraint::schema(
            serde_json::json!({"type": "object"}),
            "format",
        ))),
        Some(schema @ Value::Object(_)) => schema_constraint(dialect, schema, "format").map(Some),
        Some(_) => Err(ApiError::bad_field(
            dialect,
            "format",
            "format must be \"json\" or a JSON Schema object",
        )),
    }
}

/// The raw `grammar` field: llama.cpp's GBNF (`root ::= …`, translated) or llguidance's Lark.
pub fn grammar(dialect: Dialect, g: Option<String>) -> Result<Option<Constraint>, ApiError> {
    let Some(g) = g else {
        return Ok(None);
    };
    if g.trim().is_empty() {
        return Err(ApiError::bad_field(
            dialect,
            "grammar",
            "grammar is empty; send a GBNF grammar with a `root` rule or a Lark grammar with a `start` rule, or leave it out",
        ));
    }
    if g.len() > MAX_GRAMMAR_BYTES {
        return Err(too_big(dialect, "grammar", g.len()));
    }
    let lark = if super::gbnf::looks_like_gbnf(&g) {
        super::gbnf::to_lark(&g)
            .map_err(|e| ApiError::bad_field(dialect, "grammar", format!("grammar: {e}")))?
    } else {
        g
    };
    Ok(Some(Constraint::lark(lark, "grammar")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Grammar;
    use serde_json::json;

    const D: Dialect = Dialect::OpenAi;

    #[test]
    fn response_formats() {
        assert!(openai_response_format(D, None, "response_format")
            .unwrap()
            .is_none());
        assert!(
            openai_response_format(D, Some(json!({"type": "text"})), "response_format")
                .unwrap()
                .is_none()
        );
        let c = openai_response_format(D, Some(json!({"type": "json_object"})), "response_format")
            .unwrap()
            .unwrap();
        assert!(matches!(c.grammar, Grammar::JsonSchema(ref s) if s["type"] == "object"));
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let c = openai_response_format(
            D,
            Some(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}})),
            "response_format",
        )
        .unwrap()
        .unwrap();
        assert!(
            matches!(c.grammar, Grammar::JsonSchema(ref s) if s["properties"]["a"]["type"] == "integer")
        );
        for bad in [
            json!({"type": "xml"}),
            json!({"type": "json_schema"}),
            json!({"type": "json_schema", "json_schema": {"schema": {}}}),
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}),
            json!({"type": "json_schema", "json_schema": {"name": "x", "extra": 1}}),
            json!({"type": "json_object", "schema": {}}),
            json!("json"),
        ] {
            let e = openai_response_format(D, Some(bad.clone()), "response_format").unwrap_err();
            let param = e.param.unwrap_or_default();
            assert!(param.starts_with("response_format"), "{bad}: {param}");
        }
    }

    #[test]
    fn responses_and_ollama_formats() {
        let c = responses_text(D, Some(json!({"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}})))
            .unwrap()
            .unwrap();
        assert_eq!(c.field, "text.format");
        assert!(responses_text(D, Some(json!({"format": {"type": "text"}})))
            .unwrap()
            .is_none());
        assert!(responses_text(D, Some(json!({"format": {"type": "yaml"}}))).is_err());
        assert!(ollama_format(Dialect::Ollama, Some(json!("")))
            .unwrap()
            .is_none());
        assert!(ollama_format(Dialect::Ollama, Some(json!("json")))
            .unwrap()
            .is_some());
        assert!(
            ollama_format(Dialect::Ollama, Some(json!({"type": "object"})))
                .unwrap()
                .is_some()
        );
        assert!(ollama_format(Dialect::Ollama, Some(json!("yaml"))).is_err());
        assert!(ollama_format(Dialect::Ollama, Some(json!([1]))).is_err());
    }

    #[test]
    fn grammars() {
        assert!(grammar(D, None).unwrap().is_none());
        assert!(grammar(D, Some("  ".into())).is_err());
        assert!(grammar(D, Some("x".repeat(MAX_GRAMMAR_BYTES + 1))).is_err());
        let c = grammar(D, Some("start: \"yes\" | \"no\"".into()))
            .unwrap()
            .unwrap();
        assert_eq!(c.field, "grammar");
    }
}
