//! llama.cpp's GBNF grammars, translated to the Lark syntax llguidance compiles, so a client
//! that sends llama-server a `grammar` gets the same constraint here.
//!
//! GBNF: `name ::= alternatives`, `root` is the start rule, literals `"…"`, character classes
//! `[a-z]` / `[^…]`, `.` for any character, grouping, `* + ?` and `{m}`, `{m,}`, `{m,n}`, and `#`
//! comments. Each rule becomes one Lark line; literals are re-escaped as JSON strings (what
//! llguidance's Lark reads) and classes become regexes with every non-alphanumeric character
//! written as `\x{…}`, so no escape can change meaning between the two syntaxes. Token
//! references (`<[1234]>`, `<think>`) have no Lark equivalent and are refused.

use std::collections::{BTreeMap, BTreeSet};

/// Whether `text` reads as GBNF: its first rule is written `name ::=`.
pub fn looks_like_gbnf(text: &str) -> bool {
    let mut rest = text.trim_start();
    while let Some(comment) = rest.strip_prefix('#') {
        rest = comment
            .split_once('\n')
            .map_or("", |(_, after)| after)
            .trim_start();
    }
    let name_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .unwrap_or(rest.len());
    name_len > 0 && rest[name_len..].trim_start().starts_with("::=")
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Define,
    /// A literal's decoded text.
    Literal(String),
    /// A character class: negated, and its items as inclusive ranges.
    Class(bool, Vec<(char, char)>),
    Any,
    Open,
    Close,
    Bar,
    Op(char),
    Repeat(String),
}

/// Translates a GBNF grammar; the error says what is wrong and where.
pub fn to_lark(src: &str) -> Result<String, String> {
    let toks = lex(src)?;
    // Rules start at `name ::=`; everything up to the next one is the body.
    let mut rules: Vec<(String, Vec<Tok>)> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match (&toks[i], toks.get(i + 1)) {
            (Tok::Name(n), Some(Tok::Define)) => {
                rules.push((n.clone(), Vec::new()));
                i += 2;
            }
            (t, _) => {
                let Some((_, body)) = rules.last_mut() else {
                    return Err("a GBNF grammar starts with a rule: `root ::= …`".into());
                };
                body.push(t.clone());
                i += 1;
            }
        }
    }
    let defined: BTreeSet<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    if !defined.contains("root") {
        return Err("the GBNF grammar has no `root` rule (where the output starts)".into());
    }
    let names = lark_names(&defined);
    let mut out = String::new();
    let mut seen = BTreeSet::new();
    for (name, body) in &rules {
        if !seen.insert(name.as_str()) {
            return Err(format!("the GBNF rule `{name}` is defined twice"));
        }
        if body.is_empty() {
            return Err(format!("the GBNF rule `{name}` is empty"));
        }
        out.push_str(&names[name.as_str()]);
        out.push(':');
        for t in body {
            out.push(' ');
            match t {
                Tok::Name(n) => match names.get(n.as_str()) {
                    Some(l) => out.push_str(l),
                    None => return Err(format!("the GBNF rule `{n}` is used but not defined")),
                },
                Tok::Define => unreachable!("split off above"),
                Tok::Literal(s) => out.push_str(&lark_string(s)),
                Tok::Class(negated, items) => out.push_str(&lark_class(*negated, items)),
                Tok::Any => out.push_str("/(?s:.)/"),
                Tok::Open => out.push('('),
                Tok::Close => out.push(')'),
                Tok::Bar => out.push('|'),
                Tok::Op(c) => out.push(*c),
                Tok::Repeat(r) => out.push_str(r),
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// Lark rule names for the GBNF ones: lowercase, `-` as `_`, `root` as `start`, and distinct.
fn lark_names<'a>(defined: &BTreeSet<&'a str>) -> BTreeMap<&'a str, String> {
    let mut taken: BTreeSet<String> = BTreeSet::from(["start".to_string()]);
    let mut names = BTreeMap::from([("root", "start".to_string())]);
    for &n in defined.iter().filter(|n| **n != "root") {
        let mut base: String = n
            .chars()
            .map(|c| match c {
                '-' => '_',
                c => c.to_ascii_lowercase(),
            })
            .collect();
        if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
            base = format!("r_{base}");
        }
        let mut name = base.clone();
        let mut k = 2;
        while !taken.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        names.insert(n, name);
    }
    names
}

/// A JSON string literal (llguidance reads Lark strings as JSON), DEL escaped too.
fn lark_string(s: &str) -> String {
    serde_json::to_string(s)
        .expect("a string serialises")
        .replace('\u{7f}', "\\u007f")
}

fn lark_class(negated: bool, items: &[(char, char)]) -> String {
    let esc = |c: char| {
        if c.is_ascii_alphanumeric() {
            c.to_string()
        } else {
            format!("\\x{{{:x}}}", c as u32)
        }
    };
    let mut s = String::from(if negated { "/[^" } else { "/[" });
    for &(a, b) in items {
        s.push_str(&esc(a));
        if b != a {
            s.push('-');
            s.push_str(&esc(b));
        }
    }
    s.push_str("]/");
    s
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let line_of = |i: usize| chars[..i].iter().filter(|c| **c == '\n').count() + 1;
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ':' if chars[i..].starts_with(&[':', ':', '=']) => {
                toks.push(Tok::Define);
                i += 3;
            }
            '"' => {
                let (text, next) = literal(&chars, i + 1)
                    .map_err(|e| format!("GBNF line {}: {e}", line_of(i)))?;
                toks.push(Tok::Literal(text));
                i = next;
            }
            '[' => {
                let (negated, items, next) =
                    class(&chars, i + 1).map_err(|e| format!("GBNF line {}: {e}", line_of(i)))?;
                toks.push(Tok::Class(negated, items));
                i = next;
            }
            '{' => {
                let end = chars[i..]
                    .iter()
                    .position(|c| *c == '}')
                    .map(|p| i + p)
                    .ok_or_else(|| format!("GBNF line {}: `{{` without `}}`", line_of(i)))?;
                let inner: String = chars[i + 1..end].iter().filter(|c| **c != ' ').collect();
                let ok = !inner.is_empty()
                    && inner.chars().all(|c| c.is_ascii_digit() || c == ',')
                    && inner.matches(',').count() <= 1
                    && inner != ",";
                if !ok {
                    return Err(format!(
                        "GBNF line {}: a repetition is {{m}}, {{m,}} or {{m,n}}, not {{{inner}}}",
                        line_of(i)
                    ));
                }
                toks.push(Tok::Repeat(format!("{{{inner}}}")));
                i = end + 1;
            }
            '.' => {
                toks.push(Tok::Any);
                i += 1;
            }
            '(' => {
                toks.push(Tok::Open);
                i += 1;
            }
            ')' => {
                toks.push(Tok::Close);
                i += 1;
            }
            '|' => {
                toks.push(Tok::Bar);
                i += 1;
            }
            '*' | '+' | '?' => {
                toks.push(Tok::Op(c));
                i += 1;
            }
            '<' => {
                return Err(format!(
                    "GBNF line {}: token references (`<…>`) are not supported; write the text as a literal",
                    line_of(i)
                ))
            }
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '-' || chars[i] == '_')
                {
                    i += 1;
                }
                toks.push(Tok::Name(chars[start..i].iter().collect()));
            }
            other => {
                return Err(format!(
                    "GBNF line {}: unexpected `{other}`",
                    line_of(i)
                ))
            }
        }
    }
    Ok(toks)
}

/// One escaped character at `chars[i]` (after the backslash), and where the next one starts.
fn escape(chars: &[char], i: usize) -> Result<(char, usize), String> {
    let hex = |n: usize| -> Result<(char, usize), String> {
        let digits: String = chars.get(i + 1..i + 1 + n).unwrap_or(&[]).iter().collect();
        u32::from_str_radix(&digits, 16)
            .ok()
            .filter(|_| digits.len() == n)
            .and_then(char::from_u32)
            .map(|c| (c, i + 1 + n))
            .ok_or_else(|| format!("bad escape `\\{}{digits}`", chars[i]))
    };
    match chars.get(i) {
        Some('n') => Ok(('\n', i + 1)),
        Some('r') => Ok(('\r', i + 1)),
        Some('t') => Ok(('\t', i + 1)),
        Some('x') => hex(2),
        Some('u') => hex(4),
        Some('U') => hex(8),
        Some(c @ ('\\' | '"' | '[' | ']' | '-' | '^')) => Ok((*c, i + 1)),
        Some(c) => Err(format!("unknown escape `\\{c}`")),
        None => Err("a backslash at the end".into()),
    }
}

fn literal(chars: &[char], mut i: usize) -> Result<(String, usize), String> {
    let mut out = String::new();
    loop {
        match chars.get(i) {
            None => return Err("a literal without its closing `\"`".into()),
            Some('"') => return Ok((out, i + 1)),
            Some('\\') => {
                let (c, next) = escape(chars, i + 1)?;
                out.push(c);
                i = next;
            }
            Some(c) => {
                out.push(*c);
                i += 1;
            }
        }
    }
}

type ClassItems = Vec<(char, char)>;

fn class(chars: &[char], mut i: usize) -> Result<(bool, ClassItems, usize), String> {
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut items = Vec::new();
    let one = |i: usize| -> Result<(char, usize), String> {
        match chars.get(i) {
            None => Err("a character class without its closing `]`".into()),
            Some('\\') => escape(chars, i + 1),
            Some(c) => Ok((*c, i + 1)),
        }
    };
    loop {
        match chars.get(i) {
            None => return Err("a character class without its closing `]`".into()),
            Some(']') => {
                if items.is_empty() {
                    return Err("an empty character class `[]`".into());
                }
                return Ok((negated, items, i + 1));
            }
            _ => {
                let (a, next) = one(i)?;
                i = next;
                if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
                    let (b, next) = one(i + 1)?;
                    if b < a {
                        return Err(format!("the range `{a}-{b}` runs backwards"));
                    }
                    items.push((a, b));
                    i = next;
                } else {
                    items.push((a, a));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_grammars_translate_rule_by_rule() {
        let src = r#"
# a yes/no answer, then a number
root ::= answer " " num-list
answer ::= ("yes" | "no")
  "!"?
num-list ::= [0-9]+ ("," [0-9]{1,3})* | "none"
any ::= [^"\\\n] .
"#;
        assert!(looks_like_gbnf(src));
        let lark = to_lark(src).unwrap();
        assert_eq!(
            lark,
            concat!(
                "start: answer \" \" num_list\n",
                "answer: ( \"yes\" | \"no\" ) \"!\" ?\n",
                "num_list: /[0-9]/ + ( \",\" /[0-9]/ {1,3} ) * | \"none\"\n",
                "any: /[^\\x{22}\\x{5c}\\x{a}]/ /(?s:.)/\n",
            )
        );
    }

    #[test]
    fn escapes_are_decoded_then_written_as_json() {
        let lark = to_lark(r#"root ::= "a\"b\\c\n\x41\u00e9" [\]\-]"#).unwrap();
        assert_eq!(lark, "start: \"a\\\"b\\\\c\\nAé\" /[\\x{5d}\\x{2d}]/\n");
    }

    #[test]
    fn names_stay_distinct_and_lark_grammars_are_not_gbnf() {
        let lark = to_lark("root ::= a-b a_b Start\na-b ::= \"1\"\na_b ::= \"2\"\nStart ::= \"3\"")
            .unwrap();
        assert!(lark.starts_with("start: a_b a_b_2 start_2\n"), "{lark}");
        assert!(!looks_like_gbnf("start: \"yes\" | \"no\""));
        assert!(!looks_like_gbnf("%llguidance {}\nstart: \"x\""));
        assert!(looks_like_gbnf("# c\n  root::= \"x\""));
    }

    #[test]
    fn mistakes_are_named() {
        for (src, want) in [
            ("answer ::= \"x\"", "no `root` rule"),
            ("root ::= missing", "`missing` is used but not defined"),
            ("root ::= \"x", "closing `\"`"),
            ("root ::= [a-", "closing `]`"),
            ("root ::= [z-a]", "runs backwards"),
            ("root ::= <think>", "token references"),
            ("root ::= \"x\"{a}", "repetition"),
            ("root ::= \"a\"\nroot ::= \"b\"", "defined twice"),
            ("root ::= \"\\q\"", "unknown escape"),
            ("\"x\" root ::= \"y\"", "starts with a rule"),
        ] {
            let e = to_lark(src).unwrap_err();
            assert!(e.contains(want), "{src:?}: {e}");
        }
    }
}
