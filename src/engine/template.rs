//! Chat templates rendered with minijinja the way transformers renders Jinja templates.
//!
//! A template is code written by whoever made the model file, so every render runs on a budget
//! ([`RenderBudget`]): minijinja's fuel bounds the work and the memory a render may use, and a
//! cap bounds the text it writes. A template that goes over fails at once with
//! [`EngineError::TemplateTooExpensive`], naming the file it came from; it never hangs the
//! engine thread.

use std::io::Write;
use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

use super::{ChatMessage, EngineError};

/// ChatML, used when a model ships no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turn format, used for Gemma files without a template. Gemma has no system role:
/// the system prompt is prefixed to the first user turn, as Google's template does.
/// Gemma 4's turns (`<|turn>role … <turn|>`), with a system turn and thinking off, as the
/// template its GGUFs carry renders a plain chat.
pub const GEMMA4: &str = "{{ bos_token }}{% for m in messages %}<|turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<turn|>\n{% endfor %}{% if add_generation_prompt %}<|turn>model\n<|channel>thought\n<channel|>{% endif %}";
pub const GEMMA: &str = "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}{% set msgs = messages[1:] %}{% else %}{% set first = '' %}{% set msgs = messages %}{% endif %}{% for m in msgs %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ (first if loop.first else '') + (m['content'] | trim) }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

/// Template files a model folder may carry, most preferred first (the order transformers uses).
const TEMPLATE_FILES: &[&str] = &[
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer_config.json",
];

/// Config files beside a model over this size are not read: the largest real
/// `tokenizer_config.json` (a few hundred added tokens spelled out) is a few MB.
pub const MAX_CONFIG_BYTES: u64 = 32 * 1024 * 1024;

/// Fuel every render may spend, whatever its input. The largest real template measured,
/// Qwen3's with two tools, uses 852 on a ten-message conversation (docs/FUZZING.md); this is
/// over 500 times that, and the nested-loop bomb spends it in about 40 ms.
pub const BASE_FUEL: u64 = 500_000;
/// Extra fuel per message: real templates walk the list two or three times, under 100 a message.
pub const FUEL_PER_MESSAGE: u64 = 2_000;
/// Extra fuel per 64 bytes of message text (minijinja charges about one per 64 bytes it
/// creates or filters): room for a template to copy, trim and split each message ~30 times.
pub const FUEL_PER_64_INPUT_BYTES: u64 = 32;
/// Rendered text every render may write, whatever its input.
pub const BASE_OUTPUT: usize = 1024 * 1024;
/// Extra rendered text per byte of message text: a template prints each message once or twice.
pub const OUTPUT_PER_INPUT_BYTE: usize = 4;

/// Stack for the thread a template renders on, plus [`RENDER_STACK_PER_FUEL`] per unit of
/// fuel: the deepest value a template can build is about one level per 5 fuel, and each
/// level costs a few hundred bytes of stack to print or drop (measured in
/// `tests/untrusted.rs`, `deeply_nested_values_do_not_overflow_the_engine_stack`).
const RENDER_STACK_BASE: usize = 8 * 1024 * 1024;
const RENDER_STACK_PER_FUEL: usize = 128;

/// What one render of an untrusted template may spend. Scaled to its input, so a long but
/// honest conversation renders while a template that loops on its own is cut off early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderBudget {
    /// minijinja fuel: about one per instruction and one per 64 bytes of data created.
    pub fuel: u64,
    /// Bytes of rendered output.
    pub max_output: usize,
}

impl RenderBudget {
    /// The budget for rendering `items` values holding `input_bytes` of text in total.
    pub fn for_input(items: usize, input_bytes: usize) -> Self {
        let fuel = BASE_FUEL
            .saturating_add(FUEL_PER_MESSAGE.saturating_mul(items as u64))
            .saturating_add(FUEL_PER_64_INPUT_BYTES.saturating_mul(input_bytes as u64 / 64 + 1));
        let max_output =
            BASE_OUTPUT.saturating_add(OUTPUT_PER_INPUT_BYTE.saturating_mul(input_bytes));
        RenderBudget { fuel, max_output }
    }

    /// The budget for a chat of `messages`.
    pub fn for_messages(messages: &[ChatMessage]) -> Self {
        let bytes = messages.iter().map(|m| m.content.len()).sum();
        Self::for_input(messages.len(), bytes)
    }
}

/// A template's text and the file it came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSource {
    pub text: String,
    pub origin: PathBuf,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// Where the template came from: a model file, a config file, or a built-in's name.
    origin: PathBuf,
    /// The Jinja source as the model ships it (before [`rewrite`]).
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
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

/// Collects rendered text and refuses to grow past its cap.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
    over: bool,
}

impl Write for CappedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(bytes.len()) > self.cap {
            self.over = true;
            return Err(std::io::Error::other(
                "the rendered text is over its size cap",
            ));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a finished render cost, for measuring real templates against the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderCost {
    pub fuel: u64,
    pub output_bytes: usize,
}

impl ChatTemplate {
    /// Compiles `source`; `origin` is the file it came from, named when a render fails.
    pub fn new(source: &str, bos: &str, eos: &str, origin: &Path) -> Result<Self, EngineError> {
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
        env.add_function("strftime_now", |fmt: String| -> Result<String, Error> {
            strftime(&fmt)
        });
        env.add_filter(
            "tojson",
            |v: Value, kwargs: Kwargs| -> Result<Value, Error> {
                let style = JsonStyle::from_kwargs(&kwargs)?;
                let mut out = String::new();
                py_json(&v, &style, &mut out, 0)?;
                Ok(Value::from_safe_string(out))
            },
        );
        env.add_template_owned("chat", rewrite(source))
            .map_err(tmpl_err)?;
        Ok(Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
            origin: origin.to_path_buf(),
            source: source.to_string(),
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn chatml() -> Self {
        Self::new(
            CHATML,
            "",
            "<|im_end|>",
            Path::new("the built-in ChatML template"),
        )
        .expect("the built-in ChatML template compiles")
    }

    /// Built-in template for a model that ships none: Gemma's format for Gemma, else ChatML.
    pub fn fallback(arch: &str, bos: &str, eos: &str) -> Self {
        if arch == "gemma4" {
            Self::new(GEMMA4, bos, eos, Path::new("the built-in Gemma 4 template"))
                .expect("the built-in Gemma 4 template compiles")
        } else if arch.starts_with("gemma") {
            Self::new(GEMMA, bos, eos, Path::new("the built-in Gemma template"))
                .expect("the built-in Gemma template compiles")
        } else {
            Self::chatml()
        }
    }

    /// The file this template came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Finds the template: GGUF metadata first, then the template files beside the model
    /// (`chat_template.jinja`, `chat_template.json`, `tokenizer_config.json`).
    pub fn source_for(model_path: &Path, gguf_template: Option<&str>) -> Option<TemplateSource> {
        if let Some(t) = gguf_template {
            return Some(TemplateSource {
                text: t.to_string(),
                origin: model_path.to_path_buf(),
            });
        }
        let dir = model_path.parent()?;
        TEMPLATE_FILES.iter().find_map(|name| {
            let path = dir.join(name);
            let bytes = crate::fsutil::read_limited(&path, MAX_CONFIG_BYTES).ok()?;
            let text = if name.ends_with(".jinja") {
                String::from_utf8(bytes).ok()?
            } else {
                template_from_config(&bytes)?
            };
            Some(TemplateSource { text, origin: path })
        })
    }

    /// Renders a chat on the budget its size allows.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        self.render_measured(
            messages,
            add_generation_prompt,
            RenderBudget::for_messages(messages),
        )
        .map(|(text, _)| text)
    }

    /// Renders on an explicit budget and reports what the render cost.
    pub fn render_measured(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        budget: RenderBudget,
    ) -> Result<(String, RenderCost), EngineError> {
        let msgs: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| serde_json::json!({ "role": m.role.as_str(), "content": m.content }))
            .collect();
        self.render_json_measured(
            &msgs,
            add_generation_prompt,
            &serde_json::Map::new(),
            budget,
        )
    }

    /// Renders messages given as JSON objects (so they may carry `tool_calls`, `tool_call_id`,
    /// `reasoning_content` and whatever else a template reads), with `extra` top-level
    /// variables such as `tools` or `enable_thinking`. The built-in variables win over `extra`.
    /// The budget scales with everything the template is given, tools included.
    pub fn render_json(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, EngineError> {
        let items = messages.len()
            + extra
                .values()
                .map(|v| v.as_array().map_or(1, Vec::len))
                .sum::<usize>();
        let bytes = messages
            .iter()
            .chain(extra.values())
            .map(|v| v.to_string().len())
            .sum();
        let budget = RenderBudget::for_input(items, bytes);
        self.render_json_measured(messages, add_generation_prompt, extra, budget)
            .map(|(text, _)| text)
    }

    fn render_json_measured(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
        budget: RenderBudget,
    ) -> Result<(String, RenderCost), EngineError> {
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
        self.render_context(Value::from(ctx), budget)
    }

    /// Renders with any context (tests measure templates with tools this way).
    pub fn render_context(
        &self,
        ctx: Value,
        budget: RenderBudget,
    ) -> Result<(String, RenderCost), EngineError> {
        // Within its fuel a template can still build a value nested hundreds of thousands
        // deep (`{% set ns.x = [ns.x] %}` in a loop), and printing or merely dropping it
        // recurses once per level: on the engine thread's 2 MiB stack that is an abort. So
        // the render gets its own thread with a stack sized to the fuel; only the pages it
        // touches are ever backed by memory.
        let stack = RENDER_STACK_BASE
            .saturating_add((budget.fuel as usize).saturating_mul(RENDER_STACK_PER_FUEL));
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("chat-template".into())
                .stack_size(stack)
                .spawn_scoped(scope, || self.render_here(ctx, budget))
                .map_err(|e| {
                    EngineError::Template(format!("cannot start the template renderer: {e}"))
                })?;
            worker.join().unwrap_or_else(|_| {
                Err(EngineError::Template(
                    "the template renderer failed; this is a bug, please report it with the model"
                        .into(),
                ))
            })
        })
    }

    fn render_here(
        &self,
        ctx: Value,
        budget: RenderBudget,
    ) -> Result<(String, RenderCost), EngineError> {
        // Fuel is set per environment; a clone shares the compiled template and costs a few
        // map copies, far less than the render itself.
        let mut env = self.env.clone();
        env.set_fuel(Some(budget.fuel));
        let tmpl = env.get_template("chat").map_err(tmpl_err)?;
        let mut out = CappedWriter {
            buf: Vec::new(),
            cap: budget.max_output,
            over: false,
        };
        let rendered = tmpl.render_captured_to(ctx, &mut out);
        let too_expensive = |what: String| EngineError::TemplateTooExpensive {
            path: self.origin.clone(),
            what,
        };
        if out.over {
            return Err(too_expensive(format!(
                "its output passed {:.1} MB",
                budget.max_output as f64 / 1e6
            )));
        }
        let captured = match rendered {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {
                return Err(too_expensive(format!(
                    "it used up its budget of {} steps",
                    budget.fuel
                )))
            }
            Err(e) => return Err(tmpl_err(e)),
        };
        let fuel = captured
            .state()
            .fuel_levels()
            .map(|(used, _)| used)
            .unwrap_or_default();
        let output_bytes = out.buf.len();
        let text = String::from_utf8(out.buf)
            .map_err(|e| EngineError::Template(format!("the template wrote invalid UTF-8: {e}")))?;
        Ok((text, RenderCost { fuel, output_bytes }))
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

/// The template in a `tokenizer_config.json` or `chat_template.json`: a string, or a list of
/// named templates of which `default` (else the first) is used.
pub fn template_from_config(bytes: &[u8]) -> Option<String> {
    template_from_json(&serde_json::from_slice(bytes).ok()?)
}

/// [`template_from_config`] on parsed JSON.
pub fn template_from_json(json: &serde_json::Value) -> Option<String> {
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

/// `strftime_now(fmt)`. chrono panics while formatting an invalid specifier, so the format is
/// checked first: a template's bad format string is an error, not a crash.
fn strftime(fmt: &str) -> Result<String, Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item> = StrftimeItems::new(fmt).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) || fmt.len() > 256 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {fmt:?}"),
        ));
    }
    let mut out = String::new();
    std::fmt::Write::write_fmt(
        &mut out,
        format_args!(
            "{}",
            chrono::Local::now().format_with_items(items.into_iter())
        ),
    )
    .map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: cannot format {fmt:?}"),
        )
    })?;
    Ok(out)
}

/// Nesting deeper than this is refused by `tojson`: real tool schemas are a few levels deep,
/// and a template can build a value nested deep enough to overflow the stack.
const MAX_JSON_DEPTH: usize = 128;

/// The keyword arguments of transformers' `tojson` filter (Llama 3.x tool templates pass
/// `indent=4`, GLM's `ensure_ascii=False`), with its defaults.
struct JsonStyle {
    indent: Option<String>,
    ensure_ascii: bool,
    sort_keys: bool,
    item_sep: String,
    key_sep: String,
}

impl JsonStyle {
    fn from_kwargs(kwargs: &Kwargs) -> Result<Self, Error> {
        let indent = match kwargs.get::<Option<Value>>("indent")? {
            None => None,
            Some(v) if v.is_none() || v.is_undefined() => None,
            Some(v) => match v.as_str() {
                Some(s) => Some(s.to_string()),
                None => {
                    let n = usize::try_from(v.clone()).map_err(|_| {
                        Error::new(
                            ErrorKind::InvalidOperation,
                            format!("tojson: indent must be a small number or a string, not {v}"),
                        )
                    })?;
                    if n > 16 {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            "tojson: indent over 16 is refused",
                        ));
                    }
                    Some(" ".repeat(n))
                }
            },
        };
        let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
        let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
        // Python's default separators depend on whether there is an indent.
        let (mut item_sep, mut key_sep) = match indent {
            Some(_) => (",".to_string(), ": ".to_string()),
            None => (", ".to_string(), ": ".to_string()),
        };
        if let Some(seps) = kwargs.get::<Option<Vec<String>>>("separators")? {
            match seps.as_slice() {
                [i, k] => (item_sep, key_sep) = (i.clone(), k.clone()),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
        kwargs.assert_all_used()?;
        Ok(JsonStyle {
            indent,
            ensure_ascii,
            sort_keys,
            item_sep,
            key_sep,
        })
    }

    /// Before an item (or the closing bracket, `level` one less) of a container at `level`.
    fn newline(&self, out: &mut String, level: usize) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }
}

/// Serialises like Python's `json.dumps` with the given style; no HTML escaping.
fn py_json(v: &Value, style: &JsonStyle, out: &mut String, depth: usize) -> Result<(), Error> {
    if depth > MAX_JSON_DEPTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: value nested more than {MAX_JSON_DEPTH} deep"),
        ));
    }
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => py_json_str(v.as_str().unwrap_or_default(), style, out)?,
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                style.newline(out, depth + 1);
                py_json(item, style, out, depth + 1)?;
            }
            style.newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if style.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                style.newline(out, depth + 1);
                py_json_str(&key.to_string(), style, out)?;
                out.push_str(&style.key_sep);
                py_json(&v.get_item(key)?, style, out, depth + 1)?;
            }
            style.newline(out, depth);
            out.push('}');
        }
        _ => py_json_str(&v.to_string(), style, out)?,
    }
    Ok(())
}

fn py_json_str(s: &str, style: &JsonStyle, out: &mut String) -> Result<(), Error> {
    let quoted = serde_json::to_string(s)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    if !style.ensure_ascii {
        out.push_str(&quoted);
        return Ok(());
    }
    for c in quoted.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
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
        let t = ChatTemplate::new(SMOLLM_LIKE, "", "", Path::new("t.jinja")).unwrap();
        let s = t.render(&[ChatMessage::user("Hi")], false).unwrap();
        assert!(s.starts_with("<|im_start|>system\nDefault system<|im_end|>\n<|im_start|>user"));
    }

    #[test]
    fn raise_exception_python_methods_and_trim_blocks() {
        let src = "{% for m in messages %}\n  {% if m.role not in ['user','assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}\n[{{ m.content.strip() }}]\n{% endfor %}";
        let t = ChatTemplate::new(src, "", "", Path::new("t.jinja")).unwrap();
        assert_eq!(
            t.render(&[ChatMessage::user("  x ")], false).unwrap(),
            "[x]\n"
        );
        let err = t.render(&[ChatMessage::system("x")], false).unwrap_err();
        assert!(err.to_string().contains("bad role system"), "{err}");
    }

    #[test]
    fn tojson_takes_the_transformers_keywords() {
        let r = |src: &str| {
            ChatTemplate::new(src, "", "", Path::new("t.jinja"))
                .unwrap()
                .render(&[ChatMessage::user("x")], false)
                .unwrap()
        };
        // What Python's json.dumps(..., indent=4) prints.
        assert_eq!(
            r("{{ {'a': [1, {}], 'b': [], 'c': {'d': 'é'}}|tojson(indent=4) }}"),
            "{\n    \"a\": [\n        1,\n        {}\n    ],\n    \"b\": [],\n    \"c\": {\n        \"d\": \"é\"\n    }\n}"
        );
        assert_eq!(
            r("{{ {'b': 'é😀', 'a': 1}|tojson(ensure_ascii=True, sort_keys=True) }}"),
            "{\"a\": 1, \"b\": \"\\u00e9\\ud83d\\ude00\"}"
        );
        assert_eq!(r("{{ [1, 2]|tojson(separators=[',', ':']) }}"), "[1,2]");
        let err = ChatTemplate::new("{{ 1|tojson(colour=1) }}", "", "", Path::new("t.jinja"))
            .unwrap()
            .render(&[ChatMessage::user("x")], false)
            .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn tojson_is_python_style() {
        let t = ChatTemplate::new(
            "{{ {'a': [1, 'é<'], 'b': none}|tojson }}",
            "",
            "",
            Path::new("t.jinja"),
        )
        .unwrap();
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
            Path::new("t.jinja"),
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

    /// The template Gemma 4's GGUFs carry (google/gemma-4-31B-it, as llama.cpp vendors it in
    /// models/templates) renders here as Python's Jinja renders it (jinja2 3.1.6, trim_blocks
    /// and lstrip_blocks as transformers sets them): a chat, and a tool declaration in its own
    /// notation. The built-in Gemma 4 template renders a plain chat the same way.
    #[test]
    fn gemma4_s_own_template_renders_as_jinja_does() {
        let src = include_str!("../../tests/fixtures/templates/google-gemma-4-31B-it.jinja");
        let t = ChatTemplate::new(src, "<bos>", "<turn|>", Path::new("gemma4.jinja")).unwrap();
        let chat = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hi"),
            ChatMessage::assistant("Hello"),
            ChatMessage::user("Bye"),
        ];
        let want = "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\nHello<turn|>\n<|turn>user\nBye<turn|>\n<|turn>model\n<|channel>thought\n<channel|>";
        assert_eq!(t.render(&chat, true).unwrap(), want);
        let builtin = ChatTemplate::fallback("gemma4", "<bos>", "<turn|>");
        assert_eq!(builtin.render(&chat, true).unwrap(), want);

        let mut extra = serde_json::Map::new();
        extra.insert(
            "tools".into(),
            serde_json::json!([{"type": "function", "function": {
                "name": "get_weather", "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string",
                    "description": "City name"}}, "required": ["city"]}}}]),
        );
        let user = [serde_json::json!({"role": "user", "content": "Hi"})];
        let s = t.render_json(&user, true, &extra).unwrap();
        assert_eq!(
            s,
            "<bos><|turn>system\n<|tool>declaration:get_weather{description:<|\"|>Weather in a city<|\"|>,parameters:{properties:{city:{description:<|\"|>City name<|\"|>,type:<|\"|>STRING<|\"|>}},required:[<|\"|>city<|\"|>],type:<|\"|>OBJECT<|\"|>}}<tool|><turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
        );
    }

    #[test]
    fn template_source_prefers_gguf_then_template_files() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        let text = |m: &Path, g: Option<&str>| ChatTemplate::source_for(m, g).map(|s| s.text);
        assert_eq!(ChatTemplate::source_for(&model, None), None);
        let config = dir.path().join("tokenizer_config.json");
        std::fs::write(
            &config,
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(
            ChatTemplate::source_for(&model, None),
            Some(TemplateSource {
                text: "D".into(),
                origin: config.clone()
            })
        );
        assert_eq!(
            ChatTemplate::source_for(&model, Some("G")),
            Some(TemplateSource {
                text: "G".into(),
                origin: model.clone()
            })
        );
        std::fs::write(&config, r#"{"chat_template": "S"}"#).unwrap();
        assert_eq!(text(&model, None).as_deref(), Some("S"));
        std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
        assert_eq!(text(&model, None).as_deref(), Some("J"));
    }

    /// A template from `tokenizer_config.json` runs on the same budget, and the refusal names
    /// that file.
    #[test]
    fn a_tokenizer_config_template_bomb_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tokenizer_config.json");
        std::fs::write(
            &config,
            r#"{"chat_template": "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}"}"#,
        )
        .unwrap();
        let src = ChatTemplate::source_for(&dir.path().join("config.json"), None).unwrap();
        let t = ChatTemplate::new(&src.text, "", "", &src.origin).unwrap();
        let err = t.render(&[ChatMessage::user("Hi")], true).unwrap_err();
        match &err {
            EngineError::TemplateTooExpensive { path, .. } => assert_eq!(path, &config),
            other => panic!("{other:?}"),
        }
        assert!(err
            .to_string()
            .contains("this model's chat template is too expensive to render"));
    }

    #[test]
    fn output_over_the_cap_is_refused() {
        let t = ChatTemplate::new("{{ 'x' * 5000 }}", "", "", Path::new("t.jinja")).unwrap();
        let budget = RenderBudget {
            fuel: 1_000_000,
            max_output: 4096,
        };
        let err = t.render_measured(&[], false, budget).unwrap_err();
        assert!(err.to_string().contains("output passed"), "{err}");
        let (text, cost) = t
            .render_measured(&[], false, RenderBudget::for_input(0, 0))
            .unwrap();
        assert_eq!(text.len(), 5000);
        assert!(cost.fuel > 0);
    }

    #[test]
    fn invalid_strftime_formats_are_errors_not_panics() {
        let t =
            ChatTemplate::new("{{ strftime_now('%Q') }}", "", "", Path::new("t.jinja")).unwrap();
        let err = t.render(&[], false).unwrap_err();
        assert!(err.to_string().contains("invalid format"), "{err}");
    }

    /// Qwen2.5's tool section, trimmed: tools reach the template, and so do assistant tool
    /// calls and tool results.
    const QWEN_TOOLS: &str = "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n{%- endif %}{%- for message in messages %}{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant{% for tc in message.tool_calls %}\n<tool_call>\n{\"name\": \"{{ tc.function.name }}\", \"arguments\": {{ tc.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}";

    #[test]
    fn tools_and_tool_messages_reach_the_template() {
        let t = ChatTemplate::new(QWEN_TOOLS, "", "", Path::new("t.jinja")).unwrap();
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
            Path::new("t.jinja"),
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
