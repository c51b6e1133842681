//! Splits a reasoning model's thinking from its answer, as text streams in.
//!
//! Thinking is a leading `<think>…</think>` block (or `[THINK]…[/THINK]`). Templates that open
//! the block themselves (the generation prompt ends with `<think>`) make the output start
//! inside it. This runs before tool-call parsing, so a call written while thinking is never
//! taken for a real one.

use super::tools::parse::partial_suffix;

/// A piece of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    Reasoning(String),
    Content(String),
}

const MARKERS: [(&str, &str); 2] = [("<think>", "</think>"), ("[THINK]", "[/THINK]")];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace so far: an opening marker may still come.
    Start,
    Thinking(usize),
    Answer,
}

#[derive(Debug)]
pub struct ReasoningSplitter {
    state: State,
    buf: String,
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
        }
    }

    pub fn push(&mut self, delta: &str) -> Vec<Split> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        loop {
            match self.state {
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
            State::Thinking(_) => vec![Split::Reasoning(rest)],
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
