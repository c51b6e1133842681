//! `influence ps [--json]`: the models loaded in every Influence server on this machine
//! (`influence --serve` and the app's API server), with device, memory, context and the
//! requests each server is working on. Servers are found through the records they keep while
//! listening ([`crate::server::runtime`]); each is asked its `/api/ps`.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::commands::Context;
use crate::library::human;
use crate::server::runtime::{self, ServerRecord};

#[derive(Debug, Clone, clap::Args)]
pub struct PsArgs {
    /// Print JSON (one object per server) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `api_key`: sent to servers that require one (the configured `server.api_key`).
pub fn run(args: PsArgs, ctx: &Context, api_key: Option<String>) -> anyhow::Result<()> {
    let records = runtime::list(&runtime::records_dir(&ctx.data_dir));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let answers: Vec<(ServerRecord, Result<Value, String>)> = rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build an HTTP client: {e}"))?;
        let mut out = Vec::new();
        for r in records {
            let answer = ask(&http, &r, api_key.as_deref()).await;
            out.push((r, answer));
        }
        anyhow::Ok(out)
    })?;
    if args.json {
        let list: Vec<Value> = answers
            .iter()
            .map(|(r, a)| match a {
                Ok(v) => json!({ "server": r, "url": url(r), "ps": v }),
                Err(e) => json!({ "server": r, "url": url(r), "error": e }),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", render(&answers));
    }
    Ok(())
}

/// The address to reach a record's server at: a wildcard bind answers on loopback.
fn url(r: &ServerRecord) -> String {
    let addr = r
        .addr
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    format!("http://{addr}")
}

async fn ask(
    http: &reqwest::Client,
    r: &ServerRecord,
    api_key: Option<&str>,
) -> Result<Value, String> {
    let mut req = http.get(format!("{}/api/ps", url(r)));
    if let Some(k) = api_key.filter(|_| r.api_key) {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(|e| format!("no answer ({e})"))?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err("it requires an API key; set INFLUENCE_API_KEY to the server's key".into());
    }
    if !status.is_success() {
        return Err(format!("it answered {status}"));
    }
    resp.json()
        .await
        .map_err(|e| format!("unreadable answer ({e})"))
}

/// The table: one header line per server, then its models.
pub fn render(answers: &[(ServerRecord, Result<Value, String>)]) -> String {
    if answers.is_empty() {
        return "No Influence server is running on this machine. Start one with `influence --serve`, or with S in the app.\n".into();
    }
    let mut out = String::new();
    for (r, answer) in answers {
        let head = format!("{}  pid {}  {}", url(r), r.pid, r.kind);
        let v = match answer {
            Ok(v) => v,
            Err(e) => {
                out.push_str(&format!("{head}  error: {e}\n"));
                continue;
            }
        };
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{head}  {} generating, {} waiting\n",
            n("active_requests"),
            n("queued_requests")
        ));
        let e = &v["engine"];
        if let Some(active) = e["active_sequences"].as_u64() {
            let g = |k: &str| e[k].as_u64().unwrap_or(0);
            out.push_str(&format!(
                "  engine: {active} streams decoding together (up to {} + the app's chat), {} waiting for a slot; KV {} of {} positions ({})\n",
                g("parallel"),
                g("waiting_sequences"),
                g("kv_used_positions"),
                g("kv_budget_positions"),
                human::bytes(g("kv_bytes")),
            ));
        }
        let models = v["models"].as_array().cloned().unwrap_or_default();
        if models.is_empty() {
            out.push_str("  no model loaded\n");
            continue;
        }
        let rows: Vec<[String; 4]> = models
            .iter()
            .map(|m| {
                [
                    m["name"].as_str().unwrap_or("?").to_string(),
                    m["device"].as_str().unwrap_or("?").to_string(),
                    human::bytes(m["memory_bytes"].as_u64().unwrap_or(0)),
                    m["context_length"]
                        .as_u64()
                        .map_or("?".into(), |c| c.to_string()),
                ]
            })
            .collect();
        let header = ["NAME", "DEVICE", "MEMORY", "CONTEXT"].map(String::from);
        let mut widths = header.clone().map(|h| h.chars().count());
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(&format!("  {}\n", cells.join("  ").trim_end()));
        }
    }
    out
}
