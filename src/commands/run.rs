//! `influence run --model PATH [sampling flags] PROMPT`: one generation streamed to stdout,
//! statistics to stderr. The thread count comes from the global `--threads` flag.
//!
//! On a terminal the answer is rendered as the chat renders it (markdown, highlighted code);
//! piped or redirected, it is the model's plain text. `--json` prints each token's id and
//! log-probabilities instead, for scripts that compare runs (devices, builds, engines).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Context as _;

use crate::commands::Context;
use crate::engine::{
    configure_threads, wait, ChatMessage, EngineHandle, EngineOptions, GenEvent, GenParams,
    GenRequest, GenStats, Prompt, TokenLogprob,
};
use crate::markdown::ansi::AnsiStream;
use crate::markdown::MarkdownStyles;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Model file (.gguf).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Sampling temperature, 0..=2 (0 = greedy).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass, 0..=1 (1 = off).
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Drop tokens below P × the top probability, 0..=1 (0 = off).
    #[arg(long, value_name = "P")]
    pub min_p: Option<f32>,
    /// Penalty for recently used tokens (1 = off).
    #[arg(long, value_name = "R")]
    pub repeat_penalty: Option<f32>,
    /// Maximum tokens to generate.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Seed for reproducible sampling.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Stop when this text is generated (repeatable; not printed).
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    /// System prompt (chat mode only).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Feed the prompt to the model as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object per generated token (id, log-probability, the most likely
    /// alternatives, text), then one with the statistics, instead of the answer's text.
    #[arg(long)]
    pub json: bool,
    /// With --json: how many of the most likely tokens to list at each step.
    #[arg(long, value_name = "N", default_value_t = 2, requires = "json")]
    pub top_logprobs: u8,
    /// The prompt; `-` reads it from standard input.
    #[arg(value_name = "PROMPT")]
    pub prompt: String,
}

impl RunArgs {
    pub fn params(&self) -> GenParams {
        let d = GenParams::default();
        GenParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            max_tokens: self.max_tokens.unwrap_or(d.max_tokens),
            seed: self.seed,
            stop: self.stop.clone(),
            logprobs: self.json.then_some(self.top_logprobs),
            ..d
        }
    }
}

/// One generated token in `--json` output. `text` is what the token adds to the answer (empty
/// while a multi-byte character is incomplete); the alternatives' `text` is each token alone.
#[derive(serde::Serialize)]
struct JsonToken<'a> {
    id: u32,
    logprob: Option<f32>,
    top: Vec<JsonTop<'a>>,
    text: &'a str,
}

#[derive(serde::Serialize)]
struct JsonTop<'a> {
    id: u32,
    logprob: f32,
    text: &'a str,
}

/// The last line of `--json` output.
#[derive(serde::Serialize)]
struct JsonDone<'a> {
    #[serde(flatten)]
    stats: &'a GenStats,
    threads: usize,
}

fn json_token(id: u32, text: &str, lp: Option<&TokenLogprob>) -> serde_json::Result<String> {
    serde_json::to_string(&JsonToken {
        id,
        logprob: lp.map(|l| l.logprob),
        top: lp.map_or_else(Vec::new, |l| {
            l.top
                .iter()
                .map(|t| JsonTop {
                    id: t.id,
                    logprob: t.logprob,
                    text: &t.text,
                })
                .collect()
        }),
        text,
    })
}

/// One-line statistics summary for stderr.
pub fn describe_stats(s: &GenStats) -> String {
    format!(
        "prompt {} tokens ({} cached) at {:.1} tok/s | generated {} tokens at {:.1} tok/s | first token after {:.0} ms | finish: {:?}",
        s.prompt_tokens,
        s.cached_tokens,
        s.prompt_tok_s,
        s.generated_tokens,
        s.gen_tok_s,
        s.ttft_ms,
        s.finish
    )
    .to_lowercase()
}

/// `styles` render the answer when stdout is a terminal (the chat's, from the user's theme).
pub fn run(args: &RunArgs, ctx: &Context, styles: &MarkdownStyles) -> anyhow::Result<()> {
    let params = args.params();
    params.validate().map_err(anyhow::Error::msg)?;
    let text = if args.prompt == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the prompt from standard input")?;
        s
    } else {
        args.prompt.clone()
    };
    if args.raw && args.system.is_some() {
        anyhow::bail!("--system applies to chat prompts; drop it or drop --raw");
    }
    let threads = configure_threads(ctx.threads, true);
    let engine = EngineHandle::spawn(EngineOptions {
        threads,
        max_loaded: 1,
        device: ctx.device,
        ..EngineOptions::default()
    });
    if let Some(e) = &engine.device().error {
        anyhow::bail!("{e}");
    }
    let info = wait(engine.load(args.model.clone()))?;
    if let Some(w) = &info.slow_quant_warning {
        eprintln!("warning: {w}");
    }
    let prompt = if args.raw {
        Prompt::Raw(text)
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &args.system {
            msgs.push(ChatMessage::system(s.clone()));
        }
        msgs.push(ChatMessage::user(text));
        Prompt::Chat(msgs)
    };
    let mut gen = engine.generate_interactive(GenRequest {
        model: args.model.clone(),
        prompt,
        params,
    });
    let mut out = std::io::stdout().lock();
    if args.json {
        while let Some(ev) = gen.events.blocking_recv() {
            match ev {
                GenEvent::Started { .. } => {}
                GenEvent::Token { id, text, logprob } => {
                    writeln!(out, "{}", json_token(id, &text, logprob.as_deref())?)?;
                }
                GenEvent::Done(stats) => {
                    let done = JsonDone {
                        stats: &stats,
                        threads,
                    };
                    writeln!(out, "{}", serde_json::to_string(&done)?)?;
                    out.flush()?;
                    return Ok(());
                }
                GenEvent::Failed(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("the engine stopped before finishing the generation");
    }
    let mut rendered = out.is_terminal().then(|| {
        // A terminal that reports no size (some ptys) gets the classic one.
        let (w, h) = crossterm::terminal::size()
            .ok()
            .filter(|(w, h)| *w > 0 && *h > 0)
            .unwrap_or((80, 24));
        AnsiStream::new(styles.clone(), w, h)
    });
    while let Some(ev) = gen.events.blocking_recv() {
        match ev {
            GenEvent::Started { .. } => {}
            GenEvent::Token { text, .. } => {
                match rendered.as_mut() {
                    Some(r) => out.write_all(r.push(&text).as_bytes())?,
                    None => out.write_all(text.as_bytes())?,
                }
                out.flush()?;
            }
            GenEvent::Done(stats) => {
                match rendered.as_mut() {
                    Some(r) => out.write_all(r.finish().as_bytes())?,
                    None => writeln!(out)?,
                }
                out.flush()?;
                eprintln!("{} ({threads} threads)", describe_stats(&stats));
                return Ok(());
            }
            GenEvent::Failed(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("the engine stopped before finishing the generation")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn flags_map_to_params() {
        let cli = Cli::parse_from([
            "x",
            "--model",
            "m.gguf",
            "--temperature",
            "0",
            "--top-k",
            "5",
            "--stop",
            "\n",
            "--stop",
            "END",
            "--max-tokens",
            "7",
            "hello",
        ]);
        let p = cli.run.params();
        assert_eq!(p.temperature, 0.0);
        assert_eq!(p.top_k, 5);
        assert_eq!(p.max_tokens, 7);
        assert_eq!(p.stop, vec!["\n".to_string(), "END".to_string()]);
        assert_eq!(p.top_p, GenParams::default().top_p);
        assert_eq!(cli.run.prompt, "hello");
        assert!(!cli.run.raw);
    }

    #[test]
    fn json_asks_for_logprobs_and_top_logprobs_needs_it() {
        let cli = Cli::parse_from(["x", "--model", "m", "--json", "hi"]);
        assert_eq!(cli.run.params().logprobs, Some(2));
        let cli = Cli::parse_from(["x", "--model", "m", "--json", "--top-logprobs", "5", "hi"]);
        assert_eq!(cli.run.params().logprobs, Some(5));
        let cli = Cli::parse_from(["x", "--model", "m", "hi"]);
        assert_eq!(cli.run.params().logprobs, None);
        assert!(Cli::try_parse_from(["x", "--model", "m", "--top-logprobs", "3", "hi"]).is_err());
        let cli = Cli::parse_from(["x", "--model", "m", "--json", "--top-logprobs", "21", "hi"]);
        let err = cli.run.params().validate().unwrap_err();
        assert!(err.contains("top_logprobs"), "{err}");
    }

    #[test]
    fn json_token_lines_carry_ids_logprobs_and_alternatives() {
        let lp = TokenLogprob {
            id: 7,
            text: "a\"b".into(),
            logprob: -0.25,
            top: vec![
                crate::engine::TopLogprob {
                    id: 7,
                    text: "a\"b".into(),
                    logprob: -0.25,
                },
                crate::engine::TopLogprob {
                    id: 9,
                    text: " c".into(),
                    logprob: -1.5,
                },
            ],
        };
        let line = json_token(7, "a\"b", Some(&lp)).unwrap();
        assert_eq!(
            line,
            r#"{"id":7,"logprob":-0.25,"top":[{"id":7,"logprob":-0.25,"text":"a\"b"},{"id":9,"logprob":-1.5,"text":" c"}],"text":"a\"b"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["top"][1]["id"], 9);
        assert_eq!(
            json_token(3, "x", None).unwrap(),
            r#"{"id":3,"logprob":null,"top":[],"text":"x"}"#
        );
    }

    #[test]
    fn bad_flag_values_fail_validation() {
        let cli = Cli::parse_from(["x", "--model", "m", "--top-p", "2", "hi"]);
        let err = cli.run.params().validate().unwrap_err();
        assert!(err.contains("top_p"), "{err}");
    }
}
