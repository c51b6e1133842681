//! Splits a reasoning model's thinking from its answer, as text streams in.
//!
//! Thinking is a leading `<think>…</think>` block (or `[THINK]…[/THINK]`). Templates that open
//! the block themselves (the generation prompt ends with `<think>`) make the output start
//! inside it. gpt-oss writes OpenAI's harmony format instead: messages
//! `<|channel|>NAME<|message|>…<|end|>`, each after `<|start|>assistant` but the first (the
//! prompt wrote that one), the last ended by `<|return|>` or `<|call|>`; the `analysis`
//! channel is its reasoning, `final` (and `commentary`) what it says. This runs before
//! tool-call parsing, so a call written while thinking is never taken for a real one. A harmony
//! message addressed to a function (`to=functions.NAME` in its header) is a tool call: with
//! tools on, it goes on as ` to=functions.NAME<|message|>ARGS<|call|>` for the harmony parser.

use super::tools::parse::{partial_suffix, HARMONY_CALL_END, HARMONY_CALL_OPEN};

/// A piece of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    Reasoning(String),
    Content(String),
}

const MARKERS: [(&str, &str); 2] = [("<think>", "</think>"), ("[THINK]", "[/THINK]")];

/// Where a harmony message's header ends and its text begins.
const HARMONY_MESSAGE: &str = "<|message|>";
/// What ends a harmony message.
const HARMONY_ENDS: [&str; 3] = ["<|end|>", "<|return|>", "<|call|>"];
/// A harmony header longer than this is not one: the text shows as it is.
const HARMONY_HEADER_MAX: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace so far: an opening marker may still come.
    Start,
    Thinking(usize),
    Answer,
    /// Harmony: reading a message's header, up to `<|message|>`.
    Header,
    /// Harmony: a message's text.
    Body(Channel),
}

/// What a harmony message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    /// `analysis`: reasoning.
    Analysis,
    /// `final` or `commentary`: said to the user.
    Said,
    /// Addressed to a function: a tool call.
    Call,
}

#[derive(Debug)]
pub struct ReasoningSplitter {
    state: State,
    buf: String,
    /// Harmony messages addressed to functions go on as calls.
    calls: bool,
}

impl ReasoningSplitter {
    /// `inside`: the prompt already opened a `<think>` block.
    pub fn new(inside: bool) -> Self {
        ReasoningSplitter {
            state: if inside {
                State::Thinking(0)
            } else {
                State::Start
            },
            buf: String::new(),
            calls: false,
        }
    }

    /// A splitter for harmony output (gpt-oss), which starts at a message header.
    pub fn harmony() -> Self {
        ReasoningSplitter {
            state: State::Header,
            buf: String::new(),
            calls: false,
        }
    }

    /// A harmony splitter that passes messages addressed to functions on as calls (see the
    /// module's note), for a request with tools.
    pub fn harmony_with_calls() -> Self {
        ReasoningSplitter {
            calls: true,
            ..Self::harmony()
        }
    }

    pub fn push(&mut self, delta: &str) -> Vec<Split> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Header => {
                    if let Some(at) = self.buf.find(HARMONY_MESSAGE) {
                        let header = &self.buf[..at];
                        // `<|start|>assistant<|channel|>analysis`, maybe with a recipient
                        // (`to=functions.x`) or a `<|constrain|>` after the channel name.
                        let analysis = header
                            .split_once("<|channel|>")
                            .map(|(_, c)| c.split(['<', ' ']).next().unwrap_or(""))
                            .is_some_and(|c| c.trim() == "analysis");
                        // The recipient comes before the channel or after its name.
                        let function = header
                            .split_once("to=functions.")
                            .map(|(_, r)| r.split(['<', ' ']).next().unwrap_or("").to_string())
                            .filter(|_| self.calls);
                        self.buf.drain(..at + HARMONY_MESSAGE.len());
                        self.state = State::Body(match function {
                            Some(name) => {
                                out.push(Split::Content(format!(
                                    "{HARMONY_CALL_OPEN}{name}{HARMONY_MESSAGE}"
                                )));
                                Channel::Call
                            }
                            None if analysis => Channel::Analysis,
                            None => Channel::Said,
                        });
                        continue;
                    }
                    let lead = self.buf.trim_start();
                    // A header starts with a control token, or (the first, whose
                    // `<|start|>assistant` the prompt wrote) with a recipient.
                    let maybe_header = ["<|", "to="]
                        .iter()
                        .any(|m| lead.starts_with(m) || m.starts_with(lead));
                    if lead.is_empty() || (maybe_header && self.buf.len() <= HARMONY_HEADER_MAX) {
                        return out;
                    }
                    // Plain text where a header should be: show it as the answer.
                    self.state = State::Answer;
                }
                State::Body(channel) => {
                    let end = HARMONY_ENDS
                        .iter()
                        .filter_map(|m| self.buf.find(m).map(|at| (at, m.len())))
                        .min();
                    let (cut, rest) = match end {
                        Some((at, len)) => (at, Some(at + len)),
                        None => {
                            let keep = HARMONY_ENDS
                                .iter()
                                .map(|m| partial_suffix(&self.buf, m))
                                .max()
                                .unwrap_or(0);
                            (self.buf.len() - keep, None)
                        }
                    };
                    if cut > 0 {
                        let text = self.buf[..cut].to_string();
                        out.push(if channel == Channel::Analysis {
                            Split::Reasoning(text)
                        } else {
                            Split::Content(text)
                        });
                    }
                    match rest {
                        Some(r) => {
                            if channel == Channel::Call {
                                out.push(Split::Content(HARMONY_CALL_END.into()));
                            }
                            self.buf.drain(..r);
                            self.state = State::Header;
                        }
                        None => {
                            self.buf.drain(..cut);
                            return out;
                        }
                    }
                }
                State::Start => {
                    let lead = self.buf.trim_start();
                    if lead.is_empty() {
                        return out;
                    }
                    if let Some(i) = MARKERS.iter().position(|(o, _)| lead.starts_with(o)) {
                        let skip = self.buf.len() - lead.len() + MARKERS[i].0.len();
                        self.buf.drain(..skip);
                        self.state = State::Thinking(i);
                        continue;
                    }
                    if MARKERS.iter().any(|(o, _)| o.starts_with(lead)) {
                        return out;
                    }
                    self.state = State::Answer;
                }
                State::Thinking(i) => {
                    let close = MARKERS[i].1;
                    if let Some(at) = self.buf.find(close) {
                        let thought = self.buf[..at].to_string();
                        self.buf.drain(..at + close.len());
                        if !thought.is_empty() {
                            out.push(Split::Reasoning(thought));
                        }
                        // The answer starts after the blank line that follows the block.
                        let trimmed = self.buf.trim_start().len();
                        self.buf.drain(..self.buf.len() - trimmed);
                        self.state = State::Answer;
                        continue;
                    }
                    let keep = partial_suffix(&self.buf, close);
                    let cut = self.buf.len() - keep;
                    if cut > 0 {
                        out.push(Split::Reasoning(self.buf[..cut].to_string()));
                        self.buf.drain(..cut);
                    }
                    return out;
                }
                State::Answer => {
                    if !self.buf.is_empty() {
                        out.push(Split::Content(std::mem::take(&mut self.buf)));
                    }
                    return out;
                }
            }
        }
    }

    pub fn finish(&mut self) -> Vec<Split> {
        let rest = std::mem::take(&mut self.buf);
        if rest.is_empty() {
            return Vec::new();
        }
        match self.state {
            State::Thinking(_) | State::Body(Channel::Analysis) => vec![Split::Reasoning(rest)],
            // A header cut off before its text has nothing to show.
            State::Header if rest.trim_start().starts_with("<|") => Vec::new(),
            _ => vec![Split::Content(rest)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(inside: bool, chunks: &[&str]) -> (String, String) {
        let mut s = ReasoningSplitter::new(inside);
        let mut pieces = Vec::new();
        for c in chunks {
            pieces.extend(s.push(c));
        }
        pieces.extend(s.finish());
        let mut r = String::new();
        let mut c = String::new();
        for p in pieces {
            match p {
                Split::Reasoning(t) => r.push_str(&t),
                Split::Content(t) => c.push_str(&t),
            }
        }
        (r, c)
    }

    #[test]
    fn leading_block_is_reasoning() {
        assert_eq!(
            run(false, &["<thi", "nk>Let me see", ".</th", "ink>\n\nParis."]),
            ("Let me see.".into(), "Paris.".into())
        );
        assert_eq!(
            run(false, &["\n[THINK]hmm[/THINK]ok"]),
            ("hmm".into(), "ok".into())
        );
    }

    #[test]
    fn prompt_opened_block() {
        assert_eq!(
            run(true, &["step 1", "</think>\nAnswer"]),
            ("step 1".into(), "Answer".into())
        );
        // Cut off while thinking: all of it is reasoning.
        assert_eq!(
            run(true, &["still going"]),
            ("still going".into(), "".into())
        );
    }

    fn run_harmony(chunks: &[&str]) -> (String, String) {
        let mut s = ReasoningSplitter::harmony();
        let mut pieces = Vec::new();
        for c in chunks {
            pieces.extend(s.push(c));
        }
        pieces.extend(s.finish());
        let (mut r, mut c) = (String::new(), String::new());
        for p in pieces {
            match p {
                Split::Reasoning(t) => r.push_str(&t),
                Split::Content(t) => c.push_str(&t),
            }
        }
        (r, c)
    }

    /// gpt-oss's token stream, one token per chunk as the engine streams it: the analysis
    /// channel is reasoning, the final channel the answer, and no control token shows.
    #[test]
    fn harmony_analysis_is_reasoning_and_final_is_the_answer() {
        let stream = [
            "<|channel|>",
            "analysis",
            "<|message|>",
            "The user",
            " asks",
            " 2+2.",
            "<|end|>",
            "<|start|>",
            "assistant",
            "<|channel|>",
            "final",
            "<|message|>",
            "2 + 2",
            " = 4.",
            "<|return|>",
        ];
        assert_eq!(
            run_harmony(&stream),
            ("The user asks 2+2.".into(), "2 + 2 = 4.".into())
        );
        // Markers split across chunks, and a stream cut off in the final channel.
        assert_eq!(
            run_harmony(&[
                "<|chan",
                "nel|>analysis<|mess",
                "age|>hmm<|e",
                "nd|><|start|>assistant<|channel|>final<|message|>Hi <",
                "there"
            ]),
            ("hmm".into(), "Hi <there".into())
        );
        // Only reasoning so far (cut off while thinking).
        assert_eq!(
            run_harmony(&["<|channel|>analysis<|message|>thinking"]),
            ("thinking".into(), "".into())
        );
        // A commentary message (a tool call's preamble) is said, not thought.
        assert_eq!(
            run_harmony(&[
                "<|channel|>commentary to=functions.get <|constrain|>json<|message|>{}",
                "<|call|>"
            ]),
            ("".into(), "{}".into())
        );
        // A model that skips the header: its text is the answer.
        assert_eq!(
            run_harmony(&["Hello", " there"]),
            ("".into(), "Hello there".into())
        );
    }

    /// gpt-oss's token stream for a tool call, one token per chunk: it thinks, then addresses
    /// the function (recipient after the channel), stops at `<|call|>` (a stop token, so not
    /// in the text). Through the splitter and the harmony parser, the thought is reasoning and
    /// the call a call, with nothing left as text; the recipient may also come first.
    #[test]
    fn harmony_calls_reach_the_tool_parser_as_calls() {
        use crate::server::tools::{Piece, ToolFormat, ToolParser};
        let run = |chunks: &[&str]| {
            let mut s = ReasoningSplitter::harmony_with_calls();
            let mut p = ToolParser::new(ToolFormat::Harmony);
            let (mut reasoning, mut pieces) = (String::new(), Vec::new());
            let mut route = |splits: Vec<Split>, p: &mut ToolParser| {
                for sp in splits {
                    match sp {
                        Split::Reasoning(t) => reasoning.push_str(&t),
                        Split::Content(t) => pieces.extend(p.push(&t)),
                    }
                }
            };
            for c in chunks {
                let splits = s.push(c);
                route(splits, &mut p);
            }
            let splits = s.finish();
            route(splits, &mut p);
            pieces.extend(p.finish());
            (reasoning, pieces)
        };
        let stream = [
            "<|channel|>",
            "analysis",
            "<|message|>",
            "Need weather",
            ".",
            "<|end|>",
            "<|start|>",
            "assistant",
            "<|channel|>",
            "commentary",
            " to",
            "=",
            "functions",
            ".get",
            "_weather",
            " ",
            "<|constrain|>",
            "json",
            "<|message|>",
            "{\"",
            "city",
            "\":\"",
            "Paris",
            "\"}",
        ];
        let (reasoning, pieces) = run(&stream);
        assert_eq!(reasoning, "Need weather.");
        match pieces.as_slice() {
            [Piece::Call(c)] => {
                assert_eq!(c.name, "get_weather");
                assert_eq!(c.arguments, serde_json::json!({"city": "Paris"}));
            }
            other => panic!("{other:?}"),
        }
        let (_, pieces) = run(&[
            " to",
            "=functions.get_time",
            "<|channel|>commentary json<|message|>{}",
            "<|call|>",
        ]);
        assert!(
            matches!(pieces.as_slice(), [Piece::Call(c)] if c.name == "get_time"),
            "{pieces:?}"
        );
        // A final answer after a call's result is text.
        let (_, pieces) = run(&["<|channel|>final<|message|>It is sunny.<|return|>"]);
        assert_eq!(pieces, [Piece::Text("It is sunny.".into())]);
    }

    #[test]
    fn no_block_or_a_late_marker_is_content() {
        assert_eq!(run(false, &["Hello"]), ("".into(), "Hello".into()));
        assert_eq!(
            run(false, &["Use <think> tags"]),
            ("".into(), "Use <think> tags".into())
        );
        assert_eq!(run(false, &["<"]), ("".into(), "<".into()));
    }
}
