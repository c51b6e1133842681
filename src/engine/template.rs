//! Chat templates rendered with minijinja the way transformers renders Jinja templates.

use std::path::Path;

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

use super::{ChatMessage, EngineError};

/// ChatML, used when a model ships no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turn format, used for Gemma files without a template. Gemma has no system role:
/// the system prompt is prefixed to the first user turn, as Google's template does.
pub const GEMMA: &str = "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}{% set msgs = messages[1:] %}{% else %}{% set first = '' %}{% set msgs = messages %}{% endif %}{% for m in msgs %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ (first if loop.first else '') + (m['content'] | trim) }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// The Jinja source as the model ships it (before [`rewrite`]).
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

fn tmpl_err(e: Error) -> EngineError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    EngineError::Template(msg)
}

/// Python-isms that minijinja does not parse, rewritten before compiling.
fn rewrite(source: &str) -> String {
    source
        .replace("[::-1]", "|reverse")
        .replace("{% generation %}", "")
        .replace("{% endgeneration %}", "")
}

impl ChatTemplate {
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, EngineError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(tmpl_err)?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String {
            chrono::Local::now().format(&fmt).to_string()
        });
        env.add_filter("tojson", |v: Value| -> Result<Value, Error> {
            let mut out = String::new();
            py_json(&v, &mut out)?;
            Ok(Value::from_safe_string(out))
        });
        env.add_template_owned("chat", rewrite(source))
            .map_err(tmpl_err)?;
        Ok(Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
            source: source.to_string(),
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn chatml() -> Self {
        Self::new(CHATML, "", "<|im_end|>").expect("the built-in ChatML template compiles")
    }

    /// Built-in template for a model that ships none: Gemma's format for Gemma, else ChatML.
    pub fn fallback(arch: &str, bos: &str, eos: &str) -> Self {
        if arch.starts_with("gemma") {
            Self::new(GEMMA, bos, eos).expect("the built-in Gemma template compiles")
        } else {
            Self::chatml()
        }
    }

    /// Finds the template: GGUF metadata first, then `tokenizer_config.json` beside the model.
    pub fn source_for(model_path: &Path, gguf_template: Option<&str>) -> Option<String> {
        if let Some(t) = gguf_template {
            return Some(t.to_string());
        }
        let cfg = model_path.parent()?.join("tokenizer_config.json");
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(cfg).ok()?).ok()?;
        match json.get("chat_template")? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(items) => items
                .iter()
                .find(|i| i.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| items.first())
                .and_then(|i| i.get("template")?.as_str().map(str::to_string)),
            _ => None,
        }
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let msgs: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| serde_json::json!({ "role": m.role.as_str(), "content": m.content }))
            .collect();
        self.render_json(&msgs, add_generation_prompt, &serde_json::Map::new())
    }

    /// Renders messages given as JSON objects (so they may carry `tool_calls`, `tool_call_id`,
    /// `reasoning_content` and whatever else a template reads), with `extra` top-level
    /// variables such as `tools` or `enable_thinking`. The built-in variables win over `extra`.
    pub fn render_json(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, EngineError> {
        let tmpl = self.env.get_template("chat").map_err(tmpl_err)?;
        let mut vars = extra.clone();
        for (k, v) in [
            ("messages", serde_json::Value::from(messages.to_vec())),
            (
                "add_generation_prompt",
                serde_json::Value::from(add_generation_prompt),
            ),
            ("bos_token", serde_json::Value::from(self.bos.clone())),
            ("eos_token", serde_json::Value::from(self.eos.clone())),
            // Llama 3.x templates print it in the system header.
            (
                "date_string",
                serde_json::Value::from(chrono::Local::now().format("%d %b %Y").to_string()),
            ),
        ] {
            vars.insert(k.to_string(), v);
        }
        let ctx: std::collections::BTreeMap<String, Value> = vars
            .iter()
            .map(|(k, v)| (k.clone(), jinja_value(v)))
            .collect();
        tmpl.render(Value::from(ctx)).map_err(tmpl_err)
    }
}

/// A JSON value as a template value (minijinja's serde bridge is not compiled in).
fn jinja_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::from(s.clone()),
        J::Array(items) => Value::from(items.iter().map(jinja_value).collect::<Vec<_>>()),
        J::Object(map) => Value::from(
            map.iter()
                .map(|(k, v)| (k.clone(), jinja_value(v)))
                .collect::<std::collections::BTreeMap<String, Value>>(),
        ),
    }
}

/// Serialises like Python's `json.dumps(v, ensure_ascii=False)`: `", "` and `": "` separators,
/// no HTML escaping.
fn py_json(v: &Value, out: &mut String) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => out.push_str(
            &serde_json::to_string(v.as_str().unwrap_or_default())
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
        ),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_json(&item, out)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_json(&Value::from(key.to_string()), out)?;
                out.push_str(": ");
                py_json(&v.get_item(&key)?, out)?;
            }
            out.push('}');
        }
        _ => py_json(&Value::from(v.to_string()), out)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM_LIKE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nDefault system<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate::chatml();
        let s = t
            .render(&[ChatMessage::system("S"), ChatMessage::user("Hi")], true)
            .unwrap();
        assert_eq!(s, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn template_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM_LIKE, "", "").unwrap();
        let s = t.render(&[ChatMessage::user("Hi")], false).unwrap();
        assert!(s.starts_with("<|im_start|>system\nDefault system<|im_end|>\n<|im_start|>user"));
    }

    #[test]
    fn raise_exception_python_methods_and_trim_blocks() {
        let src = "{% for m in messages %}\n  {% if m.role not in ['user','assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}\n[{{ m.content.strip() }}]\n{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&[ChatMessage::user("  x ")], false).unwrap(),
            "[x]\n"
        );
        let err = t.render(&[ChatMessage::system("x")], false).unwrap_err();
        assert!(err.to_string().contains("bad role system"), "{err}");
    }

    #[test]
    fn tojson_is_python_style() {
        let t = ChatTemplate::new("{{ {'a': [1, 'é<'], 'b': none}|tojson }}", "", "").unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            r#"{"a": [1, "é<"], "b": null}"#
        );
    }

    #[test]
    fn bos_and_strftime_available() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{{ strftime_now('%Y') | length }}",
            "<s>",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "<s>4");
    }

    #[test]
    fn gemma_fallback_folds_system_into_first_user_turn() {
        let t = ChatTemplate::fallback("gemma3", "<bos>", "<eos>");
        let s = t
            .render(
                &[
                    ChatMessage::system("Be brief."),
                    ChatMessage::user("Hi"),
                    ChatMessage::assistant("Hello"),
                    ChatMessage::user("Bye"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            s,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn template_source_prefers_gguf_then_tokenizer_config() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        assert_eq!(ChatTemplate::source_for(&model, None), None);
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(ChatTemplate::source_for(&model, None).as_deref(), Some("D"));
        assert_eq!(
            ChatTemplate::source_for(&model, Some("G")).as_deref(),
            Some("G")
        );
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template": "S"}"#,
        )
        .unwrap();
        assert_eq!(ChatTemplate::source_for(&model, None).as_deref(), Some("S"));
    }

    /// Qwen2.5's tool section, trimmed: tools reach the template, and so do assistant tool
    /// calls and tool results.
    const QWEN_TOOLS: &str = "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n{%- endif %}{%- for message in messages %}{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant{% for tc in message.tool_calls %}\n<tool_call>\n{\"name\": \"{{ tc.function.name }}\", \"arguments\": {{ tc.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}";

    #[test]
    fn tools_and_tool_messages_reach_the_template() {
        let t = ChatTemplate::new(QWEN_TOOLS, "", "").unwrap();
        let msgs = vec![
            serde_json::json!({"role": "user", "content": "Weather in Paris?"}),
            serde_json::json!({"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ]}),
            serde_json::json!({"role": "tool", "tool_call_id": "c1", "content": "22C"}),
        ];
        let mut extra = serde_json::Map::new();
        extra.insert(
            "tools".into(),
            serde_json::json!([{"type": "function", "function": {"name": "get_weather"}}]),
        );
        let s = t.render_json(&msgs, true, &extra).unwrap();
        assert!(
            s.starts_with("<|im_start|>system\n# Tools\n<tools>{\"function\": {\"name\": \"get_weather\"}, \"type\": \"function\"}</tools>"),
            "{s}"
        );
        assert!(s.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"), "{s}");
        assert!(s.contains("<tool_response>\n22C\n</tool_response>"), "{s}");
        assert!(s.ends_with("<|im_end|><|im_start|>assistant"), "{s}");
        // Without tools the section is absent, and a caller's variable cannot replace a
        // built-in one.
        let mut extra = serde_json::Map::new();
        extra.insert("add_generation_prompt".into(), serde_json::json!(false));
        let s = t.render_json(&msgs[..1], true, &extra).unwrap();
        assert_eq!(
            s,
            "<|im_start|>user\nWeather in Paris?<|im_end|><|im_start|>assistant"
        );
        assert_eq!(t.source(), QWEN_TOOLS);
    }

    #[test]
    fn reversed_slices_are_rewritten() {
        let t = ChatTemplate::new(
            "{% for m in messages[::-1] %}{{ m.content }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let s = t
            .render(
                &[ChatMessage::user("a"), ChatMessage::assistant("b")],
                false,
            )
            .unwrap();
        assert_eq!(s, "ba");
    }
}
