//! `influence search QUERY`: find models on the Hub and print a table or JSON.

use std::io::Write;

use anyhow::Context as _;

use crate::commands::Context;
use crate::hub::{HubClient, ModelSummary, SearchQuery, Sort};

/// Search order offered on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortArg {
    Downloads,
    Likes,
    Updated,
    Trending,
}

impl From<SortArg> for Sort {
    fn from(s: SortArg) -> Sort {
        match s {
            SortArg::Downloads => Sort::Downloads,
            SortArg::Likes => Sort::Likes,
            SortArg::Updated => Sort::LastModified,
            SortArg::Trending => Sort::Trending,
        }
    }
}

/// Search models on the Hub.
#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// Text to look for in model ids (e.g. `llama 8b`); empty lists the most popular models.
    pub query: Option<String>,
    /// Only models from this user or organisation.
    #[arg(long)]
    pub author: Option<String>,
    /// How many results to show (at most 1000).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Order of the results (always descending).
    #[arg(long, value_enum, default_value_t = SortArg::Downloads)]
    pub sort: SortArg,
    /// Only models with GGUF files.
    #[arg(long)]
    pub gguf: bool,
    /// Only models for this task, e.g. `text-generation`.
    #[arg(long)]
    pub task: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl SearchArgs {
    /// The Hub query these arguments describe.
    pub fn to_query(&self) -> SearchQuery {
        SearchQuery {
            search: self.query.clone().filter(|q| !q.trim().is_empty()),
            author: self.author.clone(),
            filters: if self.gguf {
                vec!["gguf".into()]
            } else {
                vec![]
            },
            pipeline_tag: self.task.clone(),
            sort: Some(self.sort.into()),
            limit: Some(self.limit.clamp(1, 1000)),
            full: false,
        }
    }
}

pub fn run(args: SearchArgs, ctx: &Context) -> anyhow::Result<()> {
    let client = HubClient::new(&ctx.endpoint, ctx.token.clone())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let page = rt.block_on(client.search(&args.to_query()))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &page.models)?;
        writeln!(out)?;
    } else if page.models.is_empty() {
        writeln!(out, "no models found")?;
    } else {
        write!(out, "{}", format_table(&page.models))?;
    }
    Ok(())
}

/// `id  downloads  likes  task  updated` with aligned columns.
pub fn format_table(models: &[ModelSummary]) -> String {
    let rows: Vec<[String; 5]> = models
        .iter()
        .map(|m| {
            [
                m.id.clone(),
                m.downloads.map(compact).unwrap_or_else(|| "-".into()),
                m.likes.map(compact).unwrap_or_else(|| "-".into()),
                m.pipeline_tag.clone().unwrap_or_else(|| "-".into()),
                m.last_modified
                    .as_deref()
                    .map(|d| d.get(..10).unwrap_or(d).to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = ["MODEL", "DOWNLOADS", "LIKES", "TASK", "UPDATED"];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    for r in std::iter::once(header.map(String::from)).chain(rows) {
        let line = format!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:<w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
        );
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// 1234 → `1.2k`, 5_600_000 → `5.6M`.
fn compact(n: u64) -> String {
    match n {
        0..=999 => n.to_string(),
        1_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let m: Vec<ModelSummary> = serde_json::from_str(
            r#"[{"id":"a/b","downloads":1234,"likes":5,"pipeline_tag":"text-generation",
                 "lastModified":"2025-06-01T10:00:00.000Z"},
                {"id":"org/much-longer-name"}]"#,
        )
        .unwrap();
        let t = format_table(&m);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("MODEL "));
        assert!(lines[1].contains("1.2k") && lines[1].contains("2025-06-01"));
        assert!(lines[2].starts_with("org/much-longer-name"));
        assert_eq!(lines[0].find("DOWNLOADS"), lines[0].find("DOWNLOADS"));
        assert_eq!(compact(5_600_000), "5.6M");
    }

    #[test]
    fn args_to_query() {
        let a = SearchArgs {
            query: Some("llama".into()),
            author: None,
            limit: 5000,
            sort: SortArg::Updated,
            gguf: true,
            task: None,
            json: false,
        };
        let q = a.to_query();
        assert_eq!(q.filters, vec!["gguf"]);
        assert_eq!(q.limit, Some(1000));
        assert_eq!(q.sort, Some(Sort::LastModified));
    }
}
