//! The transcript both chat benchmarks render: questions, and answers with markdown and code.

/// Message `i`: even ones are short questions, odd ones rich markdown answers with a code block.
pub fn message(i: usize) -> String {
    if i.is_multiple_of(2) {
        return format!("Question {i}: how do I read a file line by line in Rust?");
    }
    format!(
        "## Answer {i}\n\nUse a **`BufReader`** and iterate over `lines()`; each item is an \
`io::Result<String>`, so handle errors with `?`. See [the docs](https://doc.rust-lang.org/std/io/trait.BufRead.html).\n\n\
1. Open the file.\n2. Wrap it in a reader.\n   - buffering matters for big files\n3. Iterate.\n\n\
```rust\nuse std::fs::File;\nuse std::io::{{BufRead, BufReader}};\n\nfn main() -> std::io::Result<()> {{\n    \
let file = File::open(\"input.txt\")?;\n    for (n, line) in BufReader::new(file).lines().enumerate() {{\n        \
println!(\"{{n}}: {{}}\", line?);\n    }}\n    Ok(())\n}}\n```\n\n| step | cost |\n|---|---:|\n| open | 1 |\n| read | {i} |\n"
    )
}
