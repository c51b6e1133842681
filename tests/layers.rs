//! The layering rules of `docs/ARCHITECTURE.md` (§2.1), checked against the source tree.
//!
//! Every `use crate::…`, every `super::…` path and every fully-qualified `crate::…` path in
//! code (a call such as `crate::ui::draw(f, state)`, inside macros too) counts as an import.
//! Comments and string literals do not. Test code (`#[cfg(test)]` items and the modules they
//! declare) may join layers to set up a journey, so it is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside the crate, e.g. `["app", "chat", "layout"]`; empty for the crate root.
type ModPath = Vec<String>;

/// Modules shared by the TUI, the API server and the CLI: they know none of those.
const DOMAIN: &[&str] = &[
    "library",
    "engine",
    "hub",
    "downloads",
    "conversations",
    "remote",
    "markdown",
    "server",
    "config",
    "fsutil",
    "procmem",
    "logging",
    "pytorch",
];

/// The front ends: each one sits on top and nothing below it may reach it.
const FRONT_ENDS: &[&str] = &["cli", "commands", "serve", "tuiapp"];

struct Rule {
    /// The modules the rule binds, each with everything under it.
    modules: &'static [&'static str],
    /// Modules under `modules` that the rule leaves out.
    except: &'static [&'static str],
    /// What those modules may not import.
    forbidden: &'static [&'static str],
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        modules: DOMAIN,
        except: &[],
        forbidden: &["cli", "commands", "serve", "tuiapp", "app", "ui", "tui"],
        why: "domain modules serve the TUI, the API server and the CLI alike, so they know none of them",
    },
    Rule {
        modules: &["app"],
        except: &[],
        forbidden: &["cli", "commands", "serve", "tuiapp", "ui", "tui"],
        why: "the app is state, messages and transitions; only the loop in tuiapp joins it to the terminal and the drawing code",
    },
    Rule {
        modules: &["ui"],
        except: &[],
        forbidden: &["cli", "commands", "serve", "tuiapp", "tui", "app::runner"],
        why: "drawing reads &State and starts nothing",
    },
    Rule {
        modules: &["tui"],
        except: &[],
        forbidden: &["cli", "commands", "serve", "tuiapp", "ui"],
        why: "the terminal layer turns events into Msgs and paces frames; the loop in tuiapp draws",
    },
    Rule {
        modules: &["commands", "cli"],
        except: &[],
        forbidden: &["serve", "tuiapp", "app", "ui", "tui"],
        why: "subcommands run on the domain modules, without the TUI",
    },
    Rule {
        modules: &["app"],
        except: &["app::runner"],
        forbidden: &["app::runner"],
        why: "the pure core returns Effects; only the runners do IO",
    },
    Rule {
        modules: &["app"],
        except: &["app::runner", "app::update", "app::msg"],
        forbidden: &["app::msg"],
        why: "Msg wraps every pane's messages, so a pane that imported it would import every other pane; pane messages live with their pane",
    },
];

/// Import cycles between modules (other than a parent and its child) that the design keeps,
/// each with the reason. Any other cycle fails the test.
const KNOWN_CYCLES: &[(&[&str], &str)] = &[(
    &["app::chat", "app::state"],
    "the chat's transitions take the whole State, which holds the chat's state",
)];

// -------------------------------------------------------------------------------------------
// Reading the source

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Code tokens with their line numbers; comments, strings, chars, lifetimes and numbers dropped.
fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let s: Vec<char> = src.chars().collect();
    let n = s.len();
    let at = |i: usize| s.get(i).copied().unwrap_or('\0');
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Advances over s[from..to], counting the newlines.
    let skip = |from: usize, to: usize, line: &mut usize| {
        *line += s[from..to.min(n)].iter().filter(|c| **c == '\n').count();
        to
    };
    while i < n {
        let c = s[i];
        if c.is_whitespace() {
            i = skip(i, i + 1, &mut line);
        } else if c == '/' && at(i + 1) == '/' {
            let end = (i..n).find(|&j| s[j] == '\n').unwrap_or(n);
            i = end;
        } else if c == '/' && at(i + 1) == '*' {
            let (mut j, mut depth) = (i, 0usize);
            while j < n {
                if s[j] == '/' && at(j + 1) == '*' {
                    depth += 1;
                    j += 2;
                } else if s[j] == '*' && at(j + 1) == '/' {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            i = skip(i, j, &mut line);
        } else if let Some(end) = raw_string_end(&s, i) {
            i = skip(i, end, &mut line);
        } else if c == '"' || (c == 'b' && at(i + 1) == '"') {
            let mut j = if c == '"' { i + 1 } else { i + 2 };
            while j < n && s[j] != '"' {
                j += if s[j] == '\\' { 2 } else { 1 };
            }
            i = skip(i, j + 1, &mut line);
        } else if c == '\'' || (c == 'b' && at(i + 1) == '\'') {
            let k = if c == '\'' { i + 1 } else { i + 2 };
            if at(k) == '\\' {
                // An escaped char: '\n', '\'', '\u{1F600}'.
                let end = (k + 2..n).find(|&j| s[j] == '\'').unwrap_or(n);
                i = end + 1;
            } else if at(k + 1) == '\'' {
                i = k + 2;
            } else {
                // A lifetime or a label.
                i = k;
                while i < n && is_ident(s[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() {
            while i < n && (is_ident(s[i]) || s[i] == '.') && !(s[i] == '.' && at(i + 1) == '.') {
                i += 1;
            }
        } else if is_ident(c) {
            let start = i;
            while i < n && is_ident(s[i]) {
                i += 1;
            }
            out.push((Tok::Ident(s[start..i].iter().collect()), line));
        } else if c == ':' && at(i + 1) == ':' {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(c), line));
            i += 1;
        }
    }
    out
}

/// Where a raw string (`r"…"`, `r#"…"#`, `br"…"`) starting at `i` ends, if one starts there.
fn raw_string_end(s: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if s.get(j) == Some(&'b') {
        j += 1;
    }
    if s.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = s[j..].iter().take_while(|c| **c == '#').count();
    j += hashes;
    if s.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < s.len() {
        if s[j] == '"'
            && s[j + 1..]
                .iter()
                .take(hashes)
                .filter(|c| **c == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(s.len())
}

/// One import: the module it is written in, the path it names, where.
#[derive(Debug, Clone)]
struct Import {
    from: ModPath,
    to: ModPath,
    line: usize,
}

/// What one file's code imports, and the child modules it declares `#[cfg(test)]`.
#[derive(Debug, Default)]
struct Scan {
    imports: Vec<Import>,
    test_children: Vec<String>,
}

/// Scans one file whose module path is `module`.
fn scan(module: &[String], src: &str) -> Scan {
    let t = tokens(src);
    let ident = |k: usize| match t.get(k) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let punct = |k: usize, c: char| matches!(t.get(k), Some((Tok::Punct(p), _)) if *p == c);
    let sep = |k: usize| matches!(t.get(k), Some((Tok::PathSep, _)));
    let mut out = Scan::default();
    // Inline `mod name {` blocks we are inside, with the brace depth each one opened at.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut k = 0;
    while k < t.len() {
        if is_cfg_test(&t, k) {
            k = skip_item(&t, k + 7, &mut out.test_children);
            continue;
        }
        if ident(k) == Some("mod") && punct(k + 2, '{') {
            if let Some(name) = ident(k + 1) {
                depth += 1;
                inline.push((name.to_string(), depth));
                k += 3;
                continue;
            }
        }
        if punct(k, '{') {
            depth += 1;
        } else if punct(k, '}') {
            if inline.last().is_some_and(|(_, d)| *d == depth) {
                inline.pop();
            }
            depth = depth.saturating_sub(1);
        }
        let here: ModPath = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(m, _)| m.clone()))
            .collect();
        let line = t[k].1;
        if ident(k) == Some("crate") && sep(k + 1) && !(k > 0 && sep(k - 1)) {
            let (paths, next) = use_tree(&t, k + 2);
            for to in paths {
                out.imports.push(Import {
                    from: here.clone(),
                    to,
                    line,
                });
            }
            k = next;
            continue;
        }
        if ident(k) == Some("super") && sep(k + 1) && !(k > 0 && sep(k - 1)) {
            let mut up = 0;
            let mut j = k;
            while ident(j) == Some("super") && sep(j + 1) {
                up += 1;
                j += 2;
            }
            let base = &here[..here.len().saturating_sub(up)];
            let (paths, next) = use_tree(&t, j);
            for p in paths {
                out.imports.push(Import {
                    from: here.clone(),
                    to: base.iter().cloned().chain(p).collect(),
                    line,
                });
            }
            k = next;
            continue;
        }
        k += 1;
    }
    out
}

/// Whether `#[cfg(test)]` starts at token `k`.
fn is_cfg_test(t: &[(Tok, usize)], k: usize) -> bool {
    let want = [
        Tok::Punct('#'),
        Tok::Punct('['),
        Tok::Ident("cfg".into()),
        Tok::Punct('('),
        Tok::Ident("test".into()),
        Tok::Punct(')'),
        Tok::Punct(']'),
    ];
    t.len() >= k + want.len() && t[k..k + want.len()].iter().map(|(x, _)| x).eq(want.iter())
}

/// Skips the item that starts at `k` (after its `#[cfg(test)]`); a `mod name;` is recorded.
fn skip_item(t: &[(Tok, usize)], mut k: usize, test_children: &mut Vec<String>) -> usize {
    // Further attributes, then the visibility.
    while matches!(t.get(k), Some((Tok::Punct('#'), _))) {
        k = close_of(t, k + 1);
    }
    if matches!(t.get(k), Some((Tok::Ident(v), _)) if v == "pub") {
        k += 1;
        if matches!(t.get(k), Some((Tok::Punct('('), _))) {
            k = close_of(t, k);
        }
    }
    if let (Some((Tok::Ident(m), _)), Some((Tok::Ident(name), _)), Some((Tok::Punct(';'), _))) =
        (t.get(k), t.get(k + 1), t.get(k + 2))
    {
        if m == "mod" {
            test_children.push(name.clone());
            return k + 3;
        }
    }
    // To the end of the item: a `;` outside any bracket, or the `}` that closes its body.
    let mut depth = 0usize;
    while let Some((tok, _)) = t.get(k) {
        match tok {
            Tok::Punct('{' | '(' | '[') => depth += 1,
            Tok::Punct('}') if depth == 1 => return k + 1,
            Tok::Punct('}' | ')' | ']') => depth = depth.saturating_sub(1),
            Tok::Punct(';') if depth == 0 => return k + 1,
            _ => {}
        }
        k += 1;
    }
    k
}

/// The index just past the bracket that closes the one opening at `k`.
fn close_of(t: &[(Tok, usize)], mut k: usize) -> usize {
    let mut depth = 0usize;
    while let Some((tok, _)) = t.get(k) {
        match tok {
            Tok::Punct('{' | '(' | '[') => depth += 1,
            Tok::Punct('}' | ')' | ']') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
        k += 1;
    }
    k
}

/// The paths of a use tree (or of a plain path in code) starting at `k`: `a::b`, `a::{b, c::d}`,
/// `a::*`. Returns them with the index just past the tree.
fn use_tree(t: &[(Tok, usize)], k: usize) -> (Vec<ModPath>, usize) {
    match t.get(k) {
        Some((Tok::Punct('{'), _)) => {
            let mut paths = Vec::new();
            let mut j = k + 1;
            while j < t.len() && !matches!(t[j].0, Tok::Punct('}')) {
                let (sub, next) = use_tree(t, j);
                paths.extend(sub);
                j = next;
                if matches!(t.get(j), Some((Tok::Ident(a), _)) if a == "as") {
                    j += 2;
                }
                if matches!(t.get(j), Some((Tok::Punct(','), _))) {
                    j += 1;
                } else if !matches!(t.get(j), Some((Tok::Punct('}'), _))) {
                    // Not a use tree after all: move on rather than loop.
                    j += 1;
                }
            }
            (paths, j + 1)
        }
        Some((Tok::Punct('*'), _)) => (vec![Vec::new()], k + 1),
        Some((Tok::Ident(seg), _)) => {
            let starts_tree = |j: usize| {
                matches!(
                    t.get(j),
                    Some((Tok::Ident(_), _)) | Some((Tok::Punct('{' | '*'), _))
                )
            };
            if matches!(t.get(k + 1), Some((Tok::PathSep, _))) && starts_tree(k + 2) {
                let (sub, next) = use_tree(t, k + 2);
                let paths = sub
                    .into_iter()
                    .map(|p| std::iter::once(seg.clone()).chain(p).collect())
                    .collect();
                (paths, next)
            } else {
                (vec![vec![seg.clone()]], k + 1)
            }
        }
        _ => (Vec::new(), k + 1),
    }
}

/// The module path of a file under `src/`: `app/chat/mod.rs` → `app::chat`, `lib.rs` → root.
fn module_of(rel: &Path) -> ModPath {
    let mut parts: ModPath = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Every production file of the library with its module path and imports (the binary,
/// `main.rs`, is its own crate and is left out).
fn scan_crate() -> BTreeMap<ModPath, (PathBuf, Vec<Import>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut scanned = BTreeMap::new();
    let mut test_modules: BTreeSet<ModPath> = BTreeSet::new();
    for path in files {
        let rel = path.strip_prefix(&src).unwrap().to_path_buf();
        if rel == Path::new("main.rs") {
            continue;
        }
        let module = module_of(&rel);
        let text = std::fs::read_to_string(&path).unwrap();
        let s = scan(&module, &text);
        for child in s.test_children {
            test_modules.insert(module.iter().cloned().chain([child]).collect());
        }
        scanned.insert(module, (rel, s.imports));
    }
    scanned.retain(|m, _| !test_modules.iter().any(|t| m.starts_with(t)));
    scanned
}

fn path_of(s: &str) -> ModPath {
    s.split("::").map(String::from).collect()
}

fn show(p: &[String]) -> String {
    if p.is_empty() {
        "crate".into()
    } else {
        p.join("::")
    }
}

/// The broken rules, one line each.
fn violations(scanned: &BTreeMap<ModPath, (PathBuf, Vec<Import>)>) -> Vec<String> {
    let mut out = Vec::new();
    for (module, (file, imports)) in scanned {
        for rule in RULES {
            let bound = rule.modules.iter().any(|m| module.starts_with(&path_of(m)))
                && !rule.except.iter().any(|m| module.starts_with(&path_of(m)));
            if !bound {
                continue;
            }
            for imp in imports {
                if let Some(f) = rule
                    .forbidden
                    .iter()
                    .find(|f| imp.to.starts_with(&path_of(f)))
                {
                    out.push(format!(
                        "src/{}:{}: `{}` imports `{}` ({f} is off limits there: {})",
                        file.display(),
                        imp.line,
                        show(&imp.from),
                        show(&imp.to),
                        rule.why
                    ));
                }
            }
        }
    }
    out
}

/// Import cycles between file modules, leaving out a parent and its own descendants.
fn cycles(scanned: &BTreeMap<ModPath, (PathBuf, Vec<Import>)>) -> Vec<BTreeSet<String>> {
    let modules: Vec<&ModPath> = scanned.keys().collect();
    let index: BTreeMap<&ModPath, usize> =
        modules.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); modules.len()];
    for (i, m) in modules.iter().enumerate() {
        for imp in &scanned[*m].1 {
            // The file that defines what the path names: its longest module prefix.
            let target = (0..=imp.to.len())
                .rev()
                .find_map(|n| index.get(&imp.to[..n].to_vec()).copied());
            if let Some(j) = target {
                let (a, b) = (modules[i], modules[j]);
                if !a.starts_with(b) && !b.starts_with(a) {
                    edges[i].insert(j);
                }
            }
        }
    }
    // Strongly connected components (Tarjan, iterative over an explicit stack of frames).
    let n = modules.len();
    let (mut idx, mut low, mut on) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
    let (mut stack, mut next, mut found) = (Vec::new(), 0, Vec::new());
    for root in 0..n {
        if idx[root] != usize::MAX {
            continue;
        }
        let mut frames: Vec<(usize, Vec<usize>)> =
            vec![(root, edges[root].iter().copied().collect())];
        idx[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on[root] = true;
        while let Some((v, todo)) = frames.last_mut() {
            let v = *v;
            if let Some(w) = todo.pop() {
                if idx[w] == usize::MAX {
                    idx[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on[w] = true;
                    frames.push((w, edges[w].iter().copied().collect()));
                } else if on[w] {
                    low[v] = low[v].min(idx[w]);
                }
                continue;
            }
            frames.pop();
            if let Some((parent, _)) = frames.last() {
                low[*parent] = low[*parent].min(low[v]);
            }
            if low[v] == idx[v] {
                let mut comp = BTreeSet::new();
                while let Some(w) = stack.pop() {
                    on[w] = false;
                    comp.insert(show(modules[w]));
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    found.push(comp);
                }
            }
        }
    }
    found
}

// -------------------------------------------------------------------------------------------
// The checks

#[test]
fn no_module_imports_a_layer_above_it() {
    let scanned = scan_crate();
    let broken = violations(&scanned);
    assert!(
        broken.is_empty(),
        "imports against the layering rules (docs/ARCHITECTURE.md §2.1):\n{}",
        broken.join("\n")
    );
}

#[test]
fn no_new_import_cycles() {
    let scanned = scan_crate();
    let found = cycles(&scanned);
    let known: Vec<BTreeSet<String>> = KNOWN_CYCLES
        .iter()
        .map(|(ms, _)| ms.iter().map(|m| m.to_string()).collect())
        .collect();
    let new: Vec<String> = found
        .iter()
        .filter(|c| !known.contains(c))
        .map(|c| c.iter().cloned().collect::<Vec<_>>().join(" ↔ "))
        .collect();
    assert!(
        new.is_empty(),
        "modules that import each other (move the shared type to the module that owns it):\n{}",
        new.join("\n")
    );
    let gone: Vec<String> = known
        .iter()
        .filter(|c| !found.contains(c))
        .map(|c| c.iter().cloned().collect::<Vec<_>>().join(" ↔ "))
        .collect();
    assert!(
        gone.is_empty(),
        "these cycles are gone; remove them from KNOWN_CYCLES: {gone:?}"
    );
}

/// Every top-level module has a layer, so a new one cannot escape the rules by being unlisted.
#[test]
fn every_top_level_module_has_a_layer() {
    let scanned = scan_crate();
    let classified: Vec<&str> = DOMAIN
        .iter()
        .chain(FRONT_ENDS)
        .chain(&["app", "ui", "tui"])
        .copied()
        .collect();
    let unlisted: Vec<String> = scanned
        .keys()
        .filter(|p| p.len() == 1 && !classified.contains(&p[0].as_str()))
        .map(|p| p[0].clone())
        .collect();
    assert!(
        unlisted.is_empty(),
        "top-level modules without a layer (add each to DOMAIN or FRONT_ENDS): {unlisted:?}"
    );
}

/// The scan sees the tree: every top-level module, and imports the design relies on.
#[test]
fn the_scan_reads_the_whole_tree() {
    let scanned = scan_crate();
    for m in DOMAIN.iter().chain(FRONT_ENDS).chain(&["app", "ui", "tui"]) {
        assert!(scanned.contains_key(&path_of(m)), "module {m} not found");
    }
    let imports = |from: &str, to: &str| {
        scanned[&path_of(from)]
            .1
            .iter()
            .any(|i| i.to.starts_with(&path_of(to)))
    };
    assert!(imports("ui", "app::state"), "ui draws from app::state");
    assert!(imports("tuiapp::event_loop", "ui"), "the loop draws");
    assert!(imports("app::update", "app::msg"), "update reads Msgs");
    assert!(
        !scanned.contains_key(&path_of("app::tests")),
        "test modules are left out"
    );
}

fn module(s: &str) -> ModPath {
    path_of(s)
}

fn targets(module_path: &str, src: &str) -> Vec<String> {
    scan(&module(module_path), src)
        .imports
        .iter()
        .map(|i| show(&i.to))
        .collect()
}

#[test]
fn scanner_reads_use_trees_super_paths_and_paths_in_code() {
    let src = r#"
        use crate::{app::{msg::Msg as M, state::*}, ui};
        use super::effect::Effect;
        use super::super::fsutil;
        fn f(state: &State) {
            let area = crate::ui::chat::transcript_area(state);
            assert_eq!(crate::library::human::bytes(1), "1 B");
        }
        mod inner {
            use super::sibling;
        }
        pub(crate) fn g<'a>(x: &'a str) -> char { 'x' }
    "#;
    assert_eq!(
        targets("app::chat", src),
        [
            "app::msg::Msg",
            "app::state",
            "ui",
            "app::effect::Effect",
            "fsutil",
            "ui::chat::transcript_area",
            "library::human::bytes",
            "app::chat::sibling",
        ]
    );
}

#[test]
fn comments_strings_and_test_code_are_not_imports() {
    let src = r##"
        //! See `crate::ui::draw`.
        /* crate::tui::frame /* nested */ crate::tui */
        const A: &str = "crate::commands::Context";
        const B: &str = r#"use crate::commands;"#;
        const C: char = '"';
        #[cfg(test)]
        mod tests {
            use crate::ui::tests::text;
        }
        #[cfg(test)]
        pub(crate) mod fixtures;
        #[cfg(test)]
        fn helper() { crate::ui::draw(); }
        use crate::engine::EngineHandle;
    "##;
    let s = scan(&module("app"), src);
    let to: Vec<String> = s.imports.iter().map(|i| show(&i.to)).collect();
    assert_eq!(to, ["engine::EngineHandle"]);
    assert_eq!(s.test_children, ["fixtures"]);
    assert_eq!(s.imports[0].line, 15);
}

/// The two imports this layering removed would fail the check again.
#[test]
fn the_rules_catch_the_imports_they_forbid() {
    let fake = |module_path: &str, src: &str| {
        let mut m = BTreeMap::new();
        let module = module(module_path);
        let imports = scan(&module, src).imports;
        m.insert(module, (PathBuf::from("x.rs"), imports));
        violations(&m)
    };
    let ui_call = "fn f(s: &State) { let a = crate::ui::chat::transcript_area(s); }";
    assert_eq!(fake("app::chat", ui_call).len(), 1);
    let cli = "impl R { fn from(c: &crate::commands::Context) -> Self { Self::at(&c.hf_home) } }";
    assert_eq!(fake("library", cli).len(), 1);
    assert_eq!(fake("app::server", "use super::msg::Msg;").len(), 1);
    assert_eq!(
        fake("app::runner::server", "use crate::app::msg::Msg;").len(),
        0
    );
    assert_eq!(fake("tuiapp::event_loop", "use crate::ui::draw;").len(), 0);
}
