//! Tool calling per model family: how calls look in the output, a streaming parser for them,
//! and what a model whose template knows no tools is told instead.
//!
//! Families, told apart by their chat template's own markers:
//! - **Hermes / Qwen**: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, any number,
//!   anywhere in the answer. Also what the fallback prompt asks for.
//! - **Llama 3.x**: the answer *is* the call: `{"name": …, "parameters": {…}}` (optionally after
//!   `<|python_tag|>`, several separated by `;`).
//! - **Mistral**: `[TOOL_CALLS][{"name": …, "arguments": {…}}]`, or `[TOOL_CALLS]name[ARGS]{…}`
//!   in newer templates.
//! - **Harmony** (gpt-oss): a message addressed to the function,
//!   `<|start|>assistant to=functions.NAME<|channel|>commentary <|constrain|>json<|message|>{…}`
//!   ended by `<|call|>` (the recipient may also follow the channel). The reasoning splitter
//!   reads the headers and hands each such message on as ` to=functions.NAME<|message|>{…}<|call|>`.

pub mod parse;

use serde_json::{json, Value};

pub use parse::{Piece, ToolParser};

use crate::engine::{constraint, Constraint};

/// A call the model made (or made in an earlier turn).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Always a JSON object.
    pub arguments: Value,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
    /// The client asked for arguments that always match `parameters` (they are then
    /// constrained to it even when the model calls on its own).
    pub strict: bool,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    #[default]
    Auto,
    /// Tools are not offered this turn.
    None,
    /// The answer must be a call (any tool).
    Required,
    /// The answer must call this function.
    Named(String),
}

/// How a model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3,
    Mistral,
    Harmony,
}

impl ToolFormat {
    /// The family a chat template writes its calls in; Hermes when it shows none (that is
    /// also the format the fallback prompt teaches).
    pub fn detect(template: &str) -> ToolFormat {
        if template.contains("<|channel|>") && template.contains("<|message|>") {
            ToolFormat::Harmony
        } else if template.contains("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else if template.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if template.contains("<|python_tag|>")
            || (template.contains("<|start_header_id|>") && template.contains("parameters"))
        {
            ToolFormat::Llama3
        } else {
            ToolFormat::Hermes
        }
    }

    /// The start of the answer that commits the model to a call (`tool_choice` `required`, or
    /// one named function). The parser reads it as if the model had written it.
    pub fn forced_prefix(self, choice: &ToolChoice) -> Option<String> {
        let name = match choice {
            ToolChoice::Auto | ToolChoice::None => return None,
            ToolChoice::Required => None,
            ToolChoice::Named(n) => Some(n.as_str()),
        };
        let (open, args_key) = match self {
            ToolFormat::Hermes => ("<tool_call>\n{\"name\": \"", "arguments"),
            ToolFormat::Llama3 => ("{\"name\": \"", "parameters"),
            ToolFormat::Mistral => ("[TOOL_CALLS][{\"name\": \"", "arguments"),
            // The generation prompt ends `<|start|>assistant`: the recipient comes next, and a
            // named call's whole header is written, leaving the model only the arguments.
            ToolFormat::Harmony => {
                return Some(match name {
                    None => parse::HARMONY_CALL_OPEN.to_string(),
                    Some(n) => format!(
                        "{}{n}<|channel|>commentary <|constrain|>json<|message|>",
                        parse::HARMONY_CALL_OPEN
                    ),
                })
            }
        };
        Some(match name {
            None => open.to_string(),
            // No trailing space: BPE vocabularies join it with what follows (` {"`), so a
            // prefix ending in a lone space leaves the model an unnatural split and it drifts.
            Some(n) => format!("{open}{n}\", \"{args_key}\":"),
        })
    }
}

impl ToolFormat {
    /// What comes before a call's JSON, and what after it.
    fn call_shape(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ToolFormat::Hermes => ("<tool_call>\n", "arguments", ""),
            ToolFormat::Llama3 => ("", "parameters", ""),
            ToolFormat::Mistral => ("[TOOL_CALLS][", "arguments", "]"),
            // A harmony call has no JSON wrapper; `call_constraint` builds none for it.
            ToolFormat::Harmony => ("", "arguments", ""),
        }
    }

    /// The text that, once written, starts a call in `auto` mode; `None` where a call is only
    /// recognised by its place (Llama 3's answer-is-the-call).
    fn trigger(self) -> Option<&'static str> {
        match self {
            ToolFormat::Hermes => Some(HERMES_OPEN_MARKER),
            ToolFormat::Mistral => Some("[TOOL_CALLS]"),
            ToolFormat::Llama3 | ToolFormat::Harmony => None,
        }
    }

    /// The constraint that makes calls well formed: the called name is an offered tool and the
    /// arguments a JSON object (matching the tool's schema when it is strict, or when the call
    /// is forced). Forced (`required`, a named function): the answer is one call, constrained
    /// from the first token after [`forced_prefix`](Self::forced_prefix). `auto`: lazy, from
    /// each opening marker the model writes. `None` when there is nothing to constrain.
    pub fn call_constraint(
        self,
        tools: &[Tool],
        choice: &ToolChoice,
        field: &str,
    ) -> Option<Constraint> {
        if self == ToolFormat::Harmony {
            // A named call's forced prefix writes its whole header through `<|message|>`, so
            // what the model writes is the arguments alone: constrained from the first token.
            // Elsewhere the recipient and channel come through control tokens (`<|channel|>`,
            // `<|message|>`) that a text grammar does not see; those calls are parsed as
            // written.
            return match choice {
                ToolChoice::Named(n) => tools
                    .iter()
                    .find(|t| &t.name == n)
                    .map(|t| Constraint::schema(t.parameters.clone(), field)),
                _ => None,
            };
        }
        let (open, args_key, close) = self.call_shape();
        let (offered, forced): (Vec<&Tool>, bool) = match choice {
            ToolChoice::None => return None,
            ToolChoice::Auto => (tools.iter().collect(), false),
            ToolChoice::Required => (tools.iter().collect(), true),
            ToolChoice::Named(n) => (tools.iter().filter(|t| &t.name == n).collect(), true),
        };
        if offered.is_empty() {
            return None;
        }
        let written = match (forced, self.trigger()) {
            (true, _) => self.forced_prefix(choice)?,
            (false, Some(t)) => t.to_string(),
            (false, None) => return None,
        };
        let mut rules = Vec::new();
        let mut alts = Vec::new();
        for (i, t) in offered.iter().enumerate() {
            let head = format!(
                "{open}{{\"name\": {}, \"{args_key}\": ",
                serde_json::Value::from(t.name.as_str())
            );
            let Some(mut rest) = head.strip_prefix(&written) else {
                continue;
            };
            if !forced && self == ToolFormat::Hermes {
                rest = rest.trim_start_matches('\n');
            }
            let schema = if forced || t.strict {
                t.parameters.clone()
            } else {
                json!({"type": "object"})
            };
            let args = constraint::compact(schema);
            let lit = |s: &str| serde_json::Value::from(s).to_string();
            let mut body = Vec::new();
            if !rest.is_empty() {
                body.push(lit(rest));
            }
            body.push(format!("args{i}"));
            body.push(lit(&format!("}}{close}")));
            rules.push(format!("call{i}: {}", body.join(" ")));
            rules.push(format!("args{i}: %json {args}"));
            alts.push(format!("call{i}"));
        }
        if alts.is_empty() {
            return None;
        }
        // Models taught the fallback prompt write `<tool_call>{` with no newline.
        let lead = if !forced && self == ToolFormat::Hermes {
            "\"\\n\"? "
        } else {
            ""
        };
        let lark = format!(
            "start: {lead}({})\n{}\n",
            alts.join(" | "),
            rules.join("\n")
        );
        let mut c = Constraint::lark(lark, field);
        if !forced {
            c.trigger = Some(written);
            c.repeat = true;
        }
        Some(c)
    }
}

const HERMES_OPEN_MARKER: &str = "<tool_call>";

/// A fresh id for a call, in OpenAI's style.
pub fn call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

/// Tools as chat templates expect them (the OpenAI / transformers shape).
pub fn template_tools(tools: &[Tool]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| {
                let mut f = json!({ "name": t.name, "parameters": t.parameters });
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                json!({ "type": "function", "function": f })
            })
            .collect(),
    )
}

/// The system prompt for models whose chat template has no `tools` section: it lists the
/// tools and teaches the Hermes format, which the parser then reads. Documented in docs/API.md.
pub fn fallback_system_prompt(tools: &[Tool]) -> String {
    let mut s = String::from(
        "You can call functions to help answer. The functions you may call are listed below as JSON schemas, one per line, inside <tools></tools>:\n<tools>\n",
    );
    for t in template_tools(tools).as_array().into_iter().flatten() {
        s.push_str(&t.to_string());
        s.push('\n');
    }
    s.push_str(
        "</tools>\nTo call a function, answer with one line per call in exactly this form, and nothing else:\n<tool_call>{\"name\": \"FUNCTION_NAME\", \"arguments\": {ARGUMENTS AS JSON}}</tool_call>\nThe results come back in <tool_response></tool_response>. When you need no function, answer normally.",
    );
    s
}

/// An earlier call written out the way the fallback prompt asks for it.
pub fn fallback_call_text(name: &str, arguments: &Value) -> String {
    format!(
        "<tool_call>{{\"name\": {}, \"arguments\": {arguments}}}</tool_call>",
        json!(name)
    )
}

/// A tool result for a template without a `tool` role.
pub fn fallback_result_text(content: &str) -> String {
    format!("<tool_response>\n{content}\n</tool_response>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_from_their_templates() {
        assert_eq!(
            ToolFormat::detect("{{ '<tool_call>' }}{{ tools }}"),
            ToolFormat::Hermes
        );
        assert_eq!(
            ToolFormat::detect("[AVAILABLE_TOOLS]{{ tools }}[TOOL_CALLS]"),
            ToolFormat::Mistral
        );
        assert_eq!(
            ToolFormat::detect("<|start_header_id|>{{ 'parameters' }}"),
            ToolFormat::Llama3
        );
        assert_eq!(ToolFormat::detect("plain chatml"), ToolFormat::Hermes);
        assert_eq!(
            ToolFormat::detect("<|start|>assistant<|channel|>final<|message|>{{ x }}<tool_call>"),
            ToolFormat::Harmony
        );
    }

    #[test]
    fn forced_prefixes_parse_as_the_start_of_a_call() {
        let named = ToolChoice::Named("get_weather".into());
        for format in [ToolFormat::Hermes, ToolFormat::Llama3, ToolFormat::Mistral] {
            assert_eq!(format.forced_prefix(&ToolChoice::Auto), None);
            let prefix = format.forced_prefix(&named).unwrap();
            let rest = match format {
                ToolFormat::Mistral => " {\"city\": \"Paris\"}}]",
                _ => " {\"city\": \"Paris\"}}",
            };
            let mut p = ToolParser::new(format);
            let mut out = p.push(&prefix);
            out.extend(p.push(rest));
            out.extend(p.finish());
            match out.as_slice() {
                [Piece::Call(c)] => {
                    assert_eq!(c.name, "get_weather");
                    assert_eq!(c.arguments, json!({"city": "Paris"}));
                }
                other => panic!("{format:?}: {other:?}"),
            }
        }
    }

    /// A forced harmony call is the assistant header the prompt is continued with: the parser
    /// reads it and the model's arguments as one call, with or without the name chosen.
    #[test]
    fn harmony_forced_prefixes_parse_as_a_call() {
        let cases = [
            (ToolChoice::Named("get_weather".into()), "{\"city\": \"Paris\"}"),
            (
                ToolChoice::Required,
                "get_weather<|channel|>commentary <|constrain|>json<|message|>{\"city\": \"Paris\"}",
            ),
        ];
        for (choice, rest) in cases {
            let prefix = ToolFormat::Harmony.forced_prefix(&choice).unwrap();
            let mut p = ToolParser::new(ToolFormat::Harmony);
            assert!(p.push(&prefix).is_empty(), "{prefix:?}");
            let mut out = p.push(rest);
            out.extend(p.finish());
            match out.as_slice() {
                [Piece::Call(c)] => {
                    assert_eq!(c.name, "get_weather");
                    assert_eq!(c.arguments, json!({"city": "Paris"}));
                }
                other => panic!("{choice:?}: {other:?}"),
            }
        }
        let tools = [Tool {
            name: "get_weather".into(),
            description: None,
            parameters: json!({"type": "object"}),
            strict: true,
        }];
        assert!(ToolFormat::Harmony
            .call_constraint(&tools, &ToolChoice::Auto, "tools")
            .is_none());
        assert!(ToolFormat::Harmony
            .call_constraint(&tools, &ToolChoice::Required, "tools")
            .is_none());
    }

    /// A named harmony call leaves the model only the arguments: they are held to the tool's
    /// schema from the first token (the header is the forced prefix).
    #[test]
    fn a_named_harmony_call_constrains_its_arguments_to_the_schema() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        let tools = [
            Tool {
                name: "get_time".into(),
                description: None,
                parameters: json!({"type": "object"}),
                strict: false,
            },
            Tool {
                name: "get_weather".into(),
                description: None,
                parameters: schema.clone(),
                strict: false,
            },
        ];
        let named = ToolChoice::Named("get_weather".into());
        let c = ToolFormat::Harmony
            .call_constraint(&tools, &named, "tool_choice")
            .expect("a named call is constrained");
        assert_eq!(c, Constraint::schema(schema, "tool_choice"));
        assert!(c.trigger.is_none());
        let missing = ToolChoice::Named("nope".into());
        assert!(ToolFormat::Harmony
            .call_constraint(&tools, &missing, "tool_choice")
            .is_none());
    }

    #[test]
    fn ids_are_distinct() {
        assert_ne!(call_id(), call_id());
        assert!(call_id().starts_with("call_"));
    }
}
