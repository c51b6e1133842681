//! Streaming tool-call parsers: text deltas in, plain text and complete tool calls out.
//!
//! Text that cannot be the start of a call streams through at once; only a possible opening
//! marker is held back. A call is emitted when it closes (or when the output ends inside it).
//! Whatever does not parse as a call comes out as plain text, exactly as the model wrote it:
//! a stray `{` or a half-written call never turns into an error.

use serde_json::Value;

use super::ToolCall;
use super::ToolFormat;

/// One piece of parsed output.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Call(ToolCall),
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL_OPEN: &str = "[TOOL_CALLS]";
const PYTHON_TAG: &str = "<|python_tag|>";
/// Where a harmony call starts: its recipient, as the splitter passes it on and as a forced
/// call's prompt continues `<|start|>assistant`.
pub const HARMONY_CALL_OPEN: &str = " to=functions.";
/// Where a harmony message's text starts, after its header.
pub const HARMONY_MESSAGE: &str = "<|message|>";
/// What ends a harmony call.
pub const HARMONY_CALL_END: &str = "<|call|>";

#[derive(Debug)]
enum State {
    /// Before anything but whitespace was seen (Llama 3 calls only come first).
    Start,
    Text,
    /// Inside a call (or, for Llama 3 and Mistral, after the point where calls begin).
    Call,
    /// Llama 3 output that does not start with a call: everything passes through.
    Plain,
    /// Hermes-family output that starts like a bare JSON object or a fenced code block: small
    /// models often write the call that way instead of inside `<tool_call>`. Held to the end.
    Bare,
}

/// Parses one generation's output for `format`'s tool calls.
pub struct ToolParser {
    format: ToolFormat,
    state: State,
    buf: String,
    next_id: Box<dyn FnMut() -> String + Send>,
    /// The offered tools' names: a bare JSON answer counts as a call only if it names one.
    known: Vec<String>,
}

impl std::fmt::Debug for ToolParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolParser")
            .field("format", &self.format)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ToolParser {
    pub fn new(format: ToolFormat) -> Self {
        Self::with_ids(format, Box::new(super::call_id))
    }

    /// With a chosen id generator (tests).
    pub fn with_ids(format: ToolFormat, next_id: Box<dyn FnMut() -> String + Send>) -> Self {
        ToolParser {
            format,
            state: State::Start,
            buf: String::new(),
            next_id,
            known: Vec::new(),
        }
    }

    /// Also reads a whole answer that is only a JSON call (bare or in a code fence) naming one
    /// of `names` (Hermes family).
    pub fn knowing(mut self, names: Vec<String>) -> Self {
        self.known = names;
        self
    }

    /// Feeds a text delta; returns what can be said for sure so far.
    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let lead = self.buf.trim_start();
                    if lead.is_empty() {
                        return out;
                    }
                    self.state = match self.format {
                        ToolFormat::Llama3 => {
                            if lead.starts_with('{') || lead.starts_with(PYTHON_TAG) {
                                State::Call
                            } else if PYTHON_TAG.starts_with(lead) {
                                return out;
                            } else {
                                State::Plain
                            }
                        }
                        ToolFormat::Hermes
                            if !self.known.is_empty()
                                && (lead.starts_with('{') || lead.starts_with("```")) =>
                        {
                            State::Bare
                        }
                        ToolFormat::Hermes if !self.known.is_empty() && "```".starts_with(lead) => {
                            return out
                        }
                        _ => State::Text,
                    };
                }
                State::Bare => return out,
                State::Plain => {
                    if !self.buf.is_empty() {
                        out.push(Piece::Text(std::mem::take(&mut self.buf)));
                    }
                    return out;
                }
                State::Text => {
                    let open = self.format.open_marker();
                    if let Some(i) = self.buf.find(open) {
                        if i > 0 {
                            out.push(Piece::Text(self.buf[..i].to_string()));
                        }
                        self.buf.drain(..i + open.len());
                        self.state = State::Call;
                        continue;
                    }
                    let keep = partial_suffix(&self.buf, open);
                    let cut = self.buf.len() - keep;
                    if cut > 0 {
                        out.push(Piece::Text(self.buf[..cut].to_string()));
                        self.buf.drain(..cut);
                    }
                    return out;
                }
                State::Call if self.format == ToolFormat::Harmony => {
                    let Some(i) = self.buf.find(HARMONY_CALL_END) else {
                        return out;
                    };
                    let inner = self.buf[..i].to_string();
                    self.buf.drain(..i + HARMONY_CALL_END.len());
                    self.state = State::Text;
                    out.extend(self.harmony(&inner));
                }
                State::Call => {
                    if self.format != ToolFormat::Hermes {
                        // Llama 3 and Mistral calls run to the end of the output.
                        return out;
                    }
                    let Some(i) = self.buf.find(HERMES_CLOSE) else {
                        return out;
                    };
                    let inner = self.buf[..i].to_string();
                    self.buf.drain(..i + HERMES_CLOSE.len());
                    self.state = State::Text;
                    out.extend(self.hermes(&inner, true));
                }
            }
        }
    }

    /// The output ended: everything still held comes out.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buf);
        let state = std::mem::replace(&mut self.state, State::Text);
        match state {
            State::Bare => self.bare(&rest),
            State::Call => match self.format {
                // A model may stop right after the JSON, without the closing tag.
                ToolFormat::Hermes => self.hermes(&rest, false),
                ToolFormat::Llama3 => self.llama3(&rest),
                ToolFormat::Mistral => self.mistral(&rest),
                // Generation stops at `<|call|>`, so a call usually ends with the output.
                ToolFormat::Harmony => self.harmony(&rest),
            },
            _ if rest.is_empty() => Vec::new(),
            _ => vec![Piece::Text(rest)],
        }
    }

    fn hermes(&mut self, inner: &str, closed: bool) -> Vec<Piece> {
        match parse_call(inner.trim()).map(|c| self.call(c)) {
            Some(call) => vec![Piece::Call(call)],
            None => {
                let mut raw = format!("{HERMES_OPEN}{inner}");
                if closed {
                    raw.push_str(HERMES_CLOSE);
                }
                vec![Piece::Text(raw)]
            }
        }
    }

    /// `NAME…<|message|>{…}`: the function's name, anything else in the header (the channel,
    /// `<|constrain|>json`), then the arguments. Arguments that are not a JSON object come out
    /// as the text the model wrote.
    fn harmony(&mut self, inner: &str) -> Vec<Piece> {
        let name_len = inner
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .unwrap_or(inner.len());
        let name = &inner[..name_len];
        let Some((_, body)) = inner.split_once(HARMONY_MESSAGE) else {
            return vec![Piece::Text(format!("{HARMONY_CALL_OPEN}{inner}"))];
        };
        match serde_json::from_str::<Value>(body.trim()) {
            Ok(args @ Value::Object(_)) if valid_name(name) => {
                vec![Piece::Call(self.call((name.to_string(), args)))]
            }
            _ if body.is_empty() => Vec::new(),
            _ => vec![Piece::Text(body.to_string())],
        }
    }

    fn bare(&mut self, all: &str) -> Vec<Piece> {
        let mut body = all.trim();
        if let Some(inner) = body.strip_prefix("```") {
            let inner = inner.strip_prefix("json").unwrap_or(inner);
            body = inner.strip_suffix("```").unwrap_or(inner).trim();
        }
        let calls = json_sequence(body, ',').and_then(|vals| {
            vals.into_iter()
                .flat_map(|v| match v {
                    Value::Array(items) => items,
                    one => vec![one],
                })
                .map(|v| call_from_value(&v).filter(|(n, _)| self.known.contains(n)))
                .collect::<Option<Vec<_>>>()
        });
        match calls {
            Some(calls) if !calls.is_empty() => calls
                .into_iter()
                .map(|c| Piece::Call(self.call(c)))
                .collect(),
            _ => vec![Piece::Text(all.to_string())],
        }
    }

    fn llama3(&mut self, all: &str) -> Vec<Piece> {
        let body = all.trim_start();
        let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body);
        let calls = json_sequence(body, ';').and_then(|vals| {
            vals.into_iter()
                .map(|v| call_from_value(&v))
                .collect::<Option<Vec<_>>>()
        });
        match calls {
            Some(calls) if !calls.is_empty() => calls
                .into_iter()
                .map(|c| Piece::Call(self.call(c)))
                .collect(),
            _ => vec![Piece::Text(all.to_string())],
        }
    }

    fn mistral(&mut self, all: &str) -> Vec<Piece> {
        let mut calls = Vec::new();
        let mut ok = true;
        for part in all.split(MISTRAL_OPEN) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if part.starts_with('[') {
                // v3: `[{"name": ..., "arguments": {...}}, ...]`
                match serde_json::from_str::<Value>(part) {
                    Ok(Value::Array(items)) => {
                        for it in items {
                            match call_from_value(&it) {
                                Some(c) => calls.push(c),
                                None => ok = false,
                            }
                        }
                    }
                    _ => ok = false,
                }
            } else if let Some((name, args)) = part.split_once("[ARGS]") {
                // v11: `name[ARGS]{...}`
                match serde_json::from_str::<Value>(args.trim()) {
                    Ok(args @ Value::Object(_)) if valid_name(name.trim()) => {
                        calls.push((name.trim().to_string(), args))
                    }
                    _ => ok = false,
                }
            } else {
                ok = false;
            }
        }
        if ok && !calls.is_empty() {
            calls
                .into_iter()
                .map(|c| Piece::Call(self.call(c)))
                .collect()
        } else {
            vec![Piece::Text(format!("{MISTRAL_OPEN}{all}"))]
        }
    }

    fn call(&mut self, (name, arguments): (String, Value)) -> ToolCall {
        ToolCall {
            id: (self.next_id)(),
            name,
            arguments,
        }
    }
}

impl ToolFormat {
    fn open_marker(self) -> &'static str {
        match self {
            ToolFormat::Hermes => HERMES_OPEN,
            ToolFormat::Mistral => MISTRAL_OPEN,
            ToolFormat::Llama3 => PYTHON_TAG,
            ToolFormat::Harmony => HARMONY_CALL_OPEN,
        }
    }
}

/// The length of the longest suffix of `s` that is a proper prefix of `marker`: the bytes a
/// streaming splitter holds back until it knows whether the marker follows.
pub(crate) fn partial_suffix(s: &str, marker: &str) -> usize {
    (1..marker.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && marker.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

/// `{"name": ..., "arguments": {...}}` (or `parameters`), arguments possibly as a JSON string.
fn parse_call(text: &str) -> Option<(String, Value)> {
    call_from_value(&serde_json::from_str::<Value>(text).ok()?)
}

fn call_from_value(v: &Value) -> Option<(String, Value)> {
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str()?;
    if !valid_name(name) {
        return None;
    }
    let args = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => return None,
        },
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return None,
    };
    Some((name.to_string(), args))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// JSON values one after another, separated by whitespace or `sep`; `None` unless all of
/// `text` is such values.
fn json_sequence(text: &str, sep: char) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let v = it.next()?.ok()?;
        let used = it.byte_offset();
        out.push(v);
        rest = rest[used..].trim_start();
        rest = rest.strip_prefix(sep).unwrap_or(rest).trim_start();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parser(format: ToolFormat) -> ToolParser {
        let mut n = 0;
        ToolParser::with_ids(
            format,
            Box::new(move || {
                n += 1;
                format!("call_{n}")
            }),
        )
    }

    /// Feeds `chunks`, then ends; adjacent text pieces are joined.
    fn run(format: ToolFormat, chunks: &[&str]) -> Vec<Piece> {
        let mut p = parser(format);
        let mut out: Vec<Piece> = Vec::new();
        for c in chunks {
            out.extend(p.push(c));
        }
        out.extend(p.finish());
        let mut joined: Vec<Piece> = Vec::new();
        for piece in out {
            match (joined.last_mut(), piece) {
                (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
                (_, p) => joined.push(p),
            }
        }
        joined
    }

    fn call(id: &str, name: &str, args: Value) -> Piece {
        Piece::Call(ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args,
        })
    }

    /// Harmony calls as the reasoning splitter passes them on: text before, a call closed by
    /// `<|call|>`, markers split across deltas, and a call cut off by the end of the output
    /// (generation stops at `<|call|>`, which then never shows).
    #[test]
    fn harmony_calls_after_text_and_at_the_end() {
        let out = run(
            ToolFormat::Harmony,
            &[
                "Let me check. to=weather",
                " to=func",
                "tions.get_weather<|mess",
                "age|>{\"city\":",
                " \"Paris\"}<|ca",
                "ll|> to=functions.get_time<|message|>{}",
            ],
        );
        assert_eq!(
            out,
            [
                Piece::Text("Let me check. to=weather".into()),
                call(
                    "call_1",
                    "get_weather",
                    serde_json::json!({"city": "Paris"})
                ),
                call("call_2", "get_time", serde_json::json!({})),
            ]
        );
        // Arguments that are not an object are the model's text; a bad name is no call.
        assert_eq!(
            run(
                ToolFormat::Harmony,
                &[" to=functions.f<|message|>not json<|call|>"]
            ),
            [Piece::Text("not json".into())]
        );
        assert_eq!(
            run(
                ToolFormat::Harmony,
                &[" to=functions.<|message|>{\"a\": 1}<|call|>"]
            ),
            [Piece::Text("{\"a\": 1}".into())]
        );
    }

    #[test]
    fn hermes_calls_between_text() {
        let out = run(
            ToolFormat::Hermes,
            &[
                "Let me check.<tool",
                "_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
                "\n<tool_call>{\"name\": \"t2\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>",
            ],
        );
        assert_eq!(
            out,
            vec![
                Piece::Text("Let me check.".into()),
                call(
                    "call_1",
                    "get_weather",
                    serde_json::json!({"city": "Paris"})
                ),
                Piece::Text("\n".into()),
                call("call_2", "t2", serde_json::json!({"a": 1})),
            ]
        );
    }

    #[test]
    fn hermes_text_streams_at_once_and_holds_only_a_possible_marker() {
        let mut p = parser(ToolFormat::Hermes);
        assert_eq!(p.push("Hello <"), vec![Piece::Text("Hello ".into())]);
        assert_eq!(p.push("b>"), vec![Piece::Text("<b>".into())]);
        assert_eq!(p.push("<tool_c"), vec![]);
        assert_eq!(p.finish(), vec![Piece::Text("<tool_c".into())]);
    }

    #[test]
    fn hermes_unclosed_call_at_the_end_still_counts() {
        let out = run(
            ToolFormat::Hermes,
            &["<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n"],
        );
        assert_eq!(out, vec![call("call_1", "f", serde_json::json!({}))]);
    }

    #[test]
    fn broken_calls_fall_back_to_the_text_as_written() {
        for (format, text) in [
            (
                ToolFormat::Hermes,
                "<tool_call>{not json</tool_call> and more {",
            ),
            (ToolFormat::Hermes, "<tool_call>{\"name\": \"bad name!\"}"),
            (ToolFormat::Llama3, "{\"city\": \"Paris\"}"),
            (
                ToolFormat::Llama3,
                "{\"name\": \"f\", \"parameters\": {}} trailing words",
            ),
            (ToolFormat::Mistral, "[TOOL_CALLS][{\"name\": \"f\", "),
        ] {
            assert_eq!(
                run(format, &[text]),
                vec![Piece::Text(text.into())],
                "{format:?} {text}"
            );
        }
    }

    #[test]
    fn bare_json_calls_of_known_tools() {
        let fenced = "```json\n{\n  \"name\": \"get_weather\",\n  \"arguments\": {\"city\": \"Paris\"}\n}\n```";
        let mut p = parser(ToolFormat::Hermes).knowing(vec!["get_weather".into()]);
        let mut out = p.push(&fenced[..5]);
        out.extend(p.push(&fenced[5..]));
        out.extend(p.finish());
        assert_eq!(
            out,
            vec![call(
                "call_1",
                "get_weather",
                serde_json::json!({"city": "Paris"})
            )]
        );
        // Unknown names and other JSON stay text, as written.
        for text in [
            "{\"name\": \"other\", \"arguments\": {}}",
            "```python\nprint(1)\n```",
            "{\"a\": 1}",
        ] {
            let mut p = parser(ToolFormat::Hermes).knowing(vec!["get_weather".into()]);
            let mut out = p.push(text);
            out.extend(p.finish());
            assert_eq!(out, vec![Piece::Text(text.into())]);
        }
    }

    #[test]
    fn llama3_json_at_the_start() {
        let out = run(
            ToolFormat::Llama3,
            &[
                "  {\"name\": \"f\", ",
                "\"parameters\": {\"x\": 2}}; {\"name\": \"g\"}",
            ],
        );
        assert_eq!(
            out,
            vec![
                call("call_1", "f", serde_json::json!({"x": 2})),
                call("call_2", "g", serde_json::json!({})),
            ]
        );
        let out = run(
            ToolFormat::Llama3,
            &["<|python", "_tag|>{\"name\": \"f\", \"parameters\": {}}"],
        );
        assert_eq!(out, vec![call("call_1", "f", serde_json::json!({}))]);
        // Prose streams through untouched.
        let mut p = parser(ToolFormat::Llama3);
        assert_eq!(p.push("Sure, {x}"), vec![Piece::Text("Sure, {x}".into())]);
    }

    #[test]
    fn mistral_both_generations() {
        let out = run(
            ToolFormat::Mistral,
            &["[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"a\": 1}}, {\"name\": \"g\", \"arguments\": {}}]"],
        );
        assert_eq!(
            out,
            vec![
                call("call_1", "f", serde_json::json!({"a": 1})),
                call("call_2", "g", serde_json::json!({})),
            ]
        );
        let out = run(
            ToolFormat::Mistral,
            &["[TOOL_CALLS]f[ARGS]{\"a\": 1}[TOOL_CALLS]g[ARGS]{}"],
        );
        assert_eq!(
            out,
            vec![
                call("call_1", "f", serde_json::json!({"a": 1})),
                call("call_2", "g", serde_json::json!({})),
            ]
        );
    }

    proptest! {
        /// However the output is cut into deltas, the parse is the same, and text without a
        /// marker comes back unchanged.
        #[test]
        fn chunking_does_not_matter(text in "[a-z <>{}\":_/\\[\\]]{0,60}", cuts in proptest::collection::vec(0usize..60, 0..6)) {
            for format in [ToolFormat::Hermes, ToolFormat::Llama3, ToolFormat::Mistral] {
                let whole = run(format, &[&text]);
                let mut idx: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
                idx.sort();
                let mut chunks = Vec::new();
                let mut last = 0;
                for i in idx {
                    chunks.push(&text[last..i]);
                    last = i;
                }
                chunks.push(&text[last..]);
                prop_assert_eq!(run(format, &chunks), whole.clone());
                if whole.iter().all(|p| matches!(p, Piece::Text(_))) {
                    let joined: String = whole.iter().map(|p| match p { Piece::Text(t) => t.as_str(), _ => "" }).collect();
                    prop_assert_eq!(joined, text.clone());
                }
            }
        }
    }
}
