//! The properties every reader of untrusted bytes must keep, one check per reader. The fuzz
//! targets in `fuzz/` and the proptest twins in `tests/untrusted.rs` call the same checks:
//!
//! - no panic (a panic fails the check, as does a stack overflow or a hang);
//! - no allocation beyond the cap stated next to each check, measured with
//!   [`alloc_meter`](super::alloc_meter) (the caller installs it as the global allocator);
//! - every rejected input gets an error whose message says what is wrong.

#![allow(dead_code)]

use std::io::Cursor;
use std::path::Path;

use influence::engine::template::{ChatTemplate, RenderBudget};
use influence::engine::tokenize::{tokenizer_from_bytes, TokenizerConfig};
use influence::engine::{ChatMessage, EngineError};
use influence::hub::client as hub;
use influence::library::{gguf, safetensors};
use influence::server::error::Dialect;

use super::alloc_meter::peak_during;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn clear(msg: &str, what: &str) {
    assert!(
        msg.trim().len() >= 10,
        "{what}: the error does not say what is wrong: {msg:?}"
    );
}

fn within(peak: usize, cap: usize, what: &str, input: usize) {
    assert!(
        peak <= cap,
        "{what}: {peak} bytes allocated for {input} bytes of input; the cap is {cap}"
    );
}

/// GGUF header reader: memory at most 16 times the input plus 64 KiB, whatever the header
/// claims. When it accepts a header that [`safe_for_candle`] passes, candle's own reader (the
/// engine's) must not panic on it either.
///
/// [`safe_for_candle`]: influence::engine::gguf::safe_for_candle
pub fn gguf_header(data: &[u8]) {
    let (result, peak) =
        peak_during(|| gguf::read_header_from(Cursor::new(data), data.len() as u64, "fuzz.gguf"));
    within(peak, 16 * data.len() + 64 * KIB, "GGUF header", data.len());
    match result {
        Err(e) => clear(&e.to_string(), "GGUF header"),
        Ok(h) => {
            let _ = (h.data_end(), h.architecture(), h.arch_u64("context_length"));
            for t in &h.tensors {
                let _ = t.ty.bytes_for(t.elements());
            }
            if influence::engine::gguf::safe_for_candle(&h).is_ok() {
                let read = candle_core::quantized::gguf_file::Content::read(&mut Cursor::new(data));
                if let Err(e) = read {
                    clear(&e.to_string(), "candle's GGUF reader");
                }
            }
        }
    }
}

/// safetensors header reader: memory at most 8 times the input plus 64 KiB.
pub fn safetensors_header(data: &[u8]) {
    let (result, peak) =
        peak_during(|| safetensors::read_header_from_bytes(data, data.len() as u64));
    within(
        peak,
        8 * data.len() + 64 * KIB,
        "safetensors header",
        data.len(),
    );
    match result {
        Err(e) => clear(&e.to_string(), "safetensors header"),
        Ok(h) => {
            let _ = h.data_end();
            for t in &h.tensors {
                let _ = (t.elements(), safetensors::dtype_size(&t.dtype));
            }
        }
    }
}

/// `tokenizer_config.json` and `tokenizer.json` loading: memory at most 64 times the input
/// plus 1 MiB. An accepted tokenizer must encode and decode without panicking.
pub fn tokenizer_files(data: &[u8]) {
    let (config, peak) = peak_during(|| TokenizerConfig::parse(data));
    within(
        peak,
        16 * data.len() + 64 * KIB,
        "tokenizer_config.json",
        data.len(),
    );
    if let Err(e) = config {
        clear(&e, "tokenizer_config.json");
    }
    let (tok, peak) = peak_during(|| tokenizer_from_bytes(data, Path::new("tokenizer.json")));
    within(peak, 64 * data.len() + MIB, "tokenizer.json", data.len());
    match tok {
        Err(e) => clear(&e.to_string(), "tokenizer.json"),
        Ok(t) => {
            if let Ok(enc) = t.encode("Hello, wörld! 12345 <|im_start|>", false) {
                let _ = t.decode(enc.get_ids(), false);
            }
        }
    }
}

/// Chat-template compiling and rendering: a render stays within its [`RenderBudget`] (fuel is
/// also a memory bound: about 64 bytes a unit) and either succeeds or fails with a template
/// error; a template over its budget is refused naming its file.
pub fn chat_template(data: &[u8]) {
    let source = String::from_utf8_lossy(data);
    let messages = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hi there"),
        ChatMessage::assistant("Hello!"),
        ChatMessage::user("What is 2+2?"),
    ];
    let budget = RenderBudget::for_messages(&messages);
    let origin = Path::new("fuzz/chat_template.jinja");
    let (result, peak) = peak_during(|| {
        let t = ChatTemplate::new(&source, "<s>", "</s>", origin)?;
        t.render_measured(&messages, true, budget)
    });
    let cap = budget.fuel as usize * 64 + 2 * budget.max_output + 64 * data.len() + 4 * MIB;
    within(peak, cap, "chat template", data.len());
    match result {
        Ok((text, cost)) => {
            assert!(
                text.len() <= budget.max_output,
                "rendered past the output cap"
            );
            assert!(cost.fuel <= budget.fuel, "rendered past the fuel budget");
        }
        Err(EngineError::TemplateTooExpensive { path, what }) => {
            assert_eq!(path, origin);
            clear(&what, "chat template budget");
        }
        Err(EngineError::Template(msg)) => clear(&msg, "chat template"),
        Err(other) => panic!("a template gave a non-template error: {other:?}"),
    }
}

/// The server's JSON extractors, for every request type: memory at most 32 times the body
/// plus 64 KiB; a refused body is a 4xx with a message.
pub fn server_json(data: &[u8]) {
    use influence::server::extract::{parse, Fields};
    use influence::server::{anthropic, legacy, ollama, openai, responses};
    fn one<T: serde::de::DeserializeOwned + Fields>(dialect: Dialect, data: &[u8]) {
        let (r, peak) = peak_during(|| parse::<T>(dialect, data).map(|_| ()));
        within(
            peak,
            32 * data.len() + 64 * KIB,
            std::any::type_name::<T>(),
            data.len(),
        );
        if let Err(e) = r {
            assert!(e.status.is_client_error(), "{:?} for a bad body", e.status);
            clear(&e.message, std::any::type_name::<T>());
        }
    }
    one::<openai::ChatRequest>(Dialect::OpenAi, data);
    one::<openai::CompletionRequest>(Dialect::OpenAi, data);
    one::<openai::EmbeddingsRequest>(Dialect::OpenAi, data);
    one::<ollama::ChatRequest>(Dialect::Ollama, data);
    one::<ollama::GenerateRequest>(Dialect::Ollama, data);
    one::<ollama::EmbedRequest>(Dialect::Ollama, data);
    one::<legacy::GenerateRequest>(Dialect::OpenAi, data);
    one::<anthropic::MessagesRequest>(Dialect::Anthropic, data);
    one::<responses::ResponsesRequest>(Dialect::OpenAi, data);
}

/// The download manager's parsing of Hub answers: JSON bodies (model info, tree pages, search
/// pages), `Link` headers, redirect targets, `Content-Range`, `Retry-After`. Memory at most
/// 32 times the input plus 64 KiB. The first byte picks what the rest is.
pub fn hub_responses(data: &[u8]) {
    use reqwest::header::{HeaderMap, HeaderValue};
    use reqwest::Url;
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let base = Url::parse("https://huggingface.co/api/models/org/repo/tree/main").unwrap();
    let (_, peak) = peak_during(|| match pick % 6 {
        0 => {
            if let Err(e) = hub::parse_model_info(rest, &base) {
                clear(&e.to_string(), "model info");
            }
        }
        1 => match hub::parse_tree_page(rest, &base) {
            Err(e) => clear(&e.to_string(), "tree page"),
            Ok((files, rejected)) => {
                for f in &files {
                    assert!(!rejected.contains(&f.path));
                    influence::hub::validate::validate_repo_path(&f.path)
                        .expect("accepted paths are safe");
                }
            }
        },
        2 => {
            if let Err(e) = hub::parse_search_page(rest, &base) {
                clear(&e.to_string(), "search page");
            }
        }
        3 => {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(rest) {
                h.append("link", v);
            }
            let _ = hub::next_link(&h, &base);
        }
        4 => {
            if let Err(e) = hub::redirect_target(&base, &String::from_utf8_lossy(rest)) {
                clear(&e.to_string(), "redirect");
            }
        }
        _ => {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(rest) {
                h.append("content-range", v.clone());
                h.append("retry-after", v.clone());
                h.append("ratelimit", v);
            }
            let _ = (hub::content_range(&h), hub::retry_after(&h));
        }
    });
    within(peak, 32 * data.len() + 64 * KIB, "hub answer", data.len());
}
