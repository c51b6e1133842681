//! A pickle is a program: its GLOBAL and REDUCE opcodes can import and call any Python function.
//! This walks every opcode of a `data.pkl` without running anything and refuses the file unless
//! it is exactly a tensor archive: the only globals it may name are PyTorch's storage types, its
//! tensor rebuild functions and `collections.OrderedDict`.
//!
//! candle's reader never calls Python either, but it trusts its input in other ways (it indexes
//! into tuples, allocates what a length field says, clones memo entries without limit). So the
//! walk also checks what candle will meet: only the opcodes candle reads, lengths that fit in the
//! file, and bounded nesting and copying. Whatever passes here is safe to hand to candle.

use std::collections::HashMap;

/// Functions and classes a PyTorch state dict names.
const ALLOWED: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
];

/// Storage types candle reads, and the dtype each holds.
pub(crate) const STORAGES: &[(&str, &str)] = &[
    ("FloatStorage", "F32"),
    ("DoubleStorage", "F64"),
    ("HalfStorage", "F16"),
    ("BFloat16Storage", "BF16"),
    ("LongStorage", "I64"),
    ("ByteStorage", "U8"),
];

/// Deeper than any state dict (a tensor sits about six levels down).
const MAX_DEPTH: u32 = 64;
/// Objects candle may build, copies from the memo included. A 7B model's state dict needs a few
/// tens of thousands.
const MAX_OBJECTS: u64 = 4 << 20;

/// Why a pickle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleError {
    #[error("the pickle names the Python global `{0}`, which a PyTorch tensor archive never needs; refused without running anything (it could execute code). Only PyTorch storage types, tensor rebuild functions and collections.OrderedDict are allowed")]
    Global(String),
    #[error("the pickle computes a global's name at load time (STACK_GLOBAL from values that are not plain strings); refused without running anything")]
    HiddenGlobal,
    #[error("the pickle uses the copyreg extension registry (EXT opcodes), which can name any Python global; refused without running anything")]
    Extension,
    #[error("tensors are stored as torch.{0}, which the engine cannot read (it reads {list})", list = STORAGES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    Storage(String),
    #[error("the pickle uses opcode {name} (byte {offset}), which the engine's PyTorch reader does not support (it reads the pickle protocol 2 that torch.save writes)")]
    Unsupported { name: &'static str, offset: usize },
    #[error("the pickle is damaged at byte {offset}: {what}")]
    Malformed { offset: usize, what: String },
    #[error(
        "the pickle is too large or too deeply nested for a tensor archive (at byte {offset})"
    )]
    TooLarge { offset: usize },
}

#[derive(Debug, Clone)]
enum Item {
    Mark,
    /// A string constant, kept so STACK_GLOBAL can be checked.
    Str(String, u64),
    /// Anything else: how many objects candle would hold for it, and how deep it nests.
    Val {
        weight: u64,
        depth: u32,
    },
}

impl Item {
    fn weight(&self) -> u64 {
        match self {
            Item::Mark => 1,
            Item::Str(_, w) => *w,
            Item::Val { weight, .. } => *weight,
        }
    }
    fn depth(&self) -> u32 {
        match self {
            Item::Val { depth, .. } => *depth,
            _ => 1,
        }
    }
    fn leaf() -> Item {
        Item::Val {
            weight: 1,
            depth: 1,
        }
    }
    fn text(s: String) -> Item {
        let w = 1 + s.len() as u64 / 64;
        Item::Str(s, w)
    }
}

struct Walker<'a> {
    data: &'a [u8],
    pos: usize,
    /// Where the current opcode starts, for messages.
    at: usize,
    stack: Vec<Item>,
    memo: HashMap<u64, Item>,
    objects: u64,
    unsupported: Option<(&'static str, usize)>,
}

/// Checks one pickle. `Ok` means every global is allowed and candle can read every opcode.
pub fn check(data: &[u8]) -> Result<(), PickleError> {
    let mut w = Walker {
        data,
        pos: 0,
        at: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        objects: 0,
        unsupported: None,
    };
    w.run()?;
    match w.unsupported {
        Some((name, offset)) => Err(PickleError::Unsupported { name, offset }),
        None => Ok(()),
    }
}

fn check_global(module: &str, name: &str) -> Result<(), PickleError> {
    if ALLOWED.contains(&(module, name)) {
        return Ok(());
    }
    if module == "torch" && name.ends_with("Storage") {
        return if STORAGES.iter().any(|(s, _)| *s == name) {
            Ok(())
        } else {
            Err(PickleError::Storage(name.to_string()))
        };
    }
    Err(PickleError::Global(format!("{module}.{name}")))
}

impl<'a> Walker<'a> {
    fn bad(&self, what: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            offset: self.at,
            what: what.into(),
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
        let data: &'a [u8] = self.data;
        let left = (data.len() - self.pos) as u64;
        if n > left {
            return Err(self.bad(format!("an argument of {n} bytes runs past the end")));
        }
        let s = &data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, n: u64) -> Result<u64, PickleError> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |a, x| (a << 8) | *x as u64))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| self.bad("a text argument has no end of line"))?;
        let s = String::from_utf8_lossy(&rest[..end])
            .trim_end_matches('\r')
            .to_string();
        self.pos += end + 1;
        Ok(s)
    }

    fn push(&mut self, item: Item) -> Result<(), PickleError> {
        self.objects = self.objects.saturating_add(item.weight());
        if self.objects > MAX_OBJECTS || item.depth() > MAX_DEPTH {
            return Err(PickleError::TooLarge { offset: self.at });
        }
        self.stack.push(item);
        Ok(())
    }

    fn pop(&mut self) -> Result<Item, PickleError> {
        match self.stack.pop() {
            Some(Item::Mark) => Err(self.bad("a MARK where a value was expected")),
            Some(i) => Ok(i),
            None => Err(self.bad("the stack is empty")),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Item>, PickleError> {
        let at = self
            .stack
            .iter()
            .rposition(|i| matches!(i, Item::Mark))
            .ok_or_else(|| self.bad("no MARK to pop to"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    /// A container built from `items` (moved, so only the container itself is new).
    fn container(items: &[Item]) -> Item {
        Item::Val {
            weight: 1 + items.iter().map(Item::weight).sum::<u64>(),
            depth: 1 + items.iter().map(Item::depth).max().unwrap_or(0),
        }
    }

    /// Adds `items` into the container on top of the stack (APPEND, SETITEM and friends).
    fn add_to_top(&mut self, items: Vec<Item>) -> Result<(), PickleError> {
        let Some(top) = self.stack.pop() else {
            return Err(self.bad("nothing to add items to"));
        };
        if matches!(top, Item::Mark) {
            return Err(self.bad("a MARK where a list or dict was expected"));
        }
        let grown = Item::Val {
            weight: top.weight() + items.iter().map(Item::weight).sum::<u64>(),
            depth: top
                .depth()
                .max(1 + items.iter().map(Item::depth).max().unwrap_or(0)),
        };
        // The items were already counted when pushed; only the depth can newly exceed the limit.
        if grown.depth() > MAX_DEPTH {
            return Err(PickleError::TooLarge { offset: self.at });
        }
        self.stack.push(grown);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        let item =
            self.memo.get(&key).cloned().ok_or_else(|| {
                self.bad(format!("memo entry {key} is read before it is written"))
            })?;
        // candle clones the object: it counts again.
        self.push(item)
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let top = match self.stack.last() {
            Some(Item::Mark) | None => return Err(self.bad("nothing to memoize")),
            Some(t) => t.clone(),
        };
        self.objects = self.objects.saturating_add(top.weight());
        if self.objects > MAX_OBJECTS {
            return Err(PickleError::TooLarge { offset: self.at });
        }
        self.memo.insert(key, top);
        Ok(())
    }

    fn unsupported(&mut self, name: &'static str) {
        self.unsupported.get_or_insert((name, self.at));
    }

    fn run(&mut self) -> Result<(), PickleError> {
        loop {
            self.at = self.pos;
            if self.pos >= self.data.len() {
                return Err(self.bad("the pickle ends without a STOP opcode"));
            }
            let op = self.u8()?;
            match op {
                // --- what torch.save writes, and candle reads ---
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.bad(format!("unknown pickle protocol {proto}")));
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    check_global(&module, &name)?;
                    self.push(Item::leaf())?;
                }
                b'.' => return Ok(()),
                b'(' => {
                    self.objects += 1;
                    self.stack.push(Item::Mark);
                }
                b')' | b']' | b'}' | b'N' | 0x88 | 0x89 => self.push(Item::leaf())?,
                b'K' => {
                    self.take(1)?;
                    self.push(Item::leaf())?;
                }
                b'M' => {
                    self.take(2)?;
                    self.push(Item::leaf())?;
                }
                b'J' => {
                    self.take(4)?;
                    self.push(Item::leaf())?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Item::leaf())?;
                }
                0x8a => {
                    let n = self.u8()?;
                    if n > 8 {
                        return Err(self.bad(format!("a {n}-byte integer (at most 8 are read)")));
                    }
                    self.take(n as u64)?;
                    self.push(Item::leaf())?;
                }
                b'X' => {
                    let n = self.uint(4)?;
                    let s = String::from_utf8(self.take(n)?.to_vec())
                        .map_err(|_| self.bad("a string that is not UTF-8"))?;
                    self.push(Item::text(s))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Self::container(&items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    self.push(Self::container(&items))?;
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.push(Self::container(&[id]))?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.push(Self::container(&[callable, args]))?;
                }
                b'b' => {
                    let state = self.pop()?;
                    self.add_to_top(vec![state])?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.add_to_top(vec![v])?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.add_to_top(vec![k, v])?;
                }
                b'e' | b'u' => {
                    let items = self.pop_mark()?;
                    if op == b'u' && items.len() % 2 != 0 {
                        return Err(self.bad("SETITEMS with an odd number of values"));
                    }
                    self.add_to_top(items)?;
                }
                b'h' => {
                    let k = self.uint(1)?;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.uint(4)?;
                    self.memo_get(k)?;
                }
                b'q' => {
                    let k = self.uint(1)?;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.uint(4)?;
                    self.memo_put(k)?;
                }
                // candle reads DICT as an empty dict without popping its MARK; no torch pickle
                // writes it, so it is refused rather than misread.
                b'd' => {
                    self.unsupported("DICT");
                    let items = self.pop_mark()?;
                    self.push(Self::container(&items))?;
                }

                // --- opcodes that name code: refused outright ---
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    check_global(&module, &name)?;
                    self.unsupported("INST");
                    let items = self.pop_mark()?;
                    self.push(Self::container(&items))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Item::Str(m, _), Item::Str(n, _)) => check_global(&m, &n)?,
                        _ => return Err(PickleError::HiddenGlobal),
                    }
                    self.unsupported("STACK_GLOBAL");
                    self.push(Item::leaf())?;
                }
                0x82..=0x84 => return Err(PickleError::Extension),

                // --- valid pickle that candle does not read: walked so a forbidden global
                //     further on is still the error reported ---
                b'I' | b'L' | b'F' => {
                    self.unsupported(match op {
                        b'I' => "INT",
                        b'L' => "LONG",
                        _ => "FLOAT",
                    });
                    self.line()?;
                    self.push(Item::leaf())?;
                }
                b'S' | b'V' => {
                    self.unsupported(if op == b'S' { "STRING" } else { "UNICODE" });
                    let s = self.line()?;
                    self.push(Item::text(s))?;
                }
                b'U' | b'T' | b'C' | b'B' | 0x8c | 0x8d | 0x8e | 0x96 => {
                    let (name, width) = match op {
                        b'U' => ("SHORT_BINSTRING", 1),
                        b'T' => ("BINSTRING", 4),
                        b'C' => ("SHORT_BINBYTES", 1),
                        b'B' => ("BINBYTES", 4),
                        0x8c => ("SHORT_BINUNICODE", 1),
                        0x8d => ("BINUNICODE8", 8),
                        0x8e => ("BINBYTES8", 8),
                        _ => ("BYTEARRAY8", 8),
                    };
                    self.unsupported(name);
                    let n = self.uint(width)?;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.push(Item::text(s))?;
                }
                0x8b => {
                    self.unsupported("LONG4");
                    let n = self.uint(4)?;
                    self.take(n)?;
                    self.push(Item::leaf())?;
                }
                b'l' | 0x91 => {
                    self.unsupported(if op == b'l' { "LIST" } else { "FROZENSET" });
                    let items = self.pop_mark()?;
                    self.push(Self::container(&items))?;
                }
                0x8f => {
                    self.unsupported("EMPTY_SET");
                    self.push(Item::leaf())?;
                }
                0x90 => {
                    self.unsupported("ADDITEMS");
                    let items = self.pop_mark()?;
                    self.add_to_top(items)?;
                }
                b'0' => {
                    self.unsupported("POP");
                    self.stack.pop();
                }
                b'1' => {
                    self.unsupported("POP_MARK");
                    self.pop_mark()?;
                }
                b'2' => {
                    self.unsupported("DUP");
                    let top = self
                        .stack
                        .last()
                        .cloned()
                        .ok_or_else(|| self.bad("nothing to duplicate"))?;
                    self.push(top)?;
                }
                b'g' | b'p' => {
                    self.unsupported(if op == b'g' { "GET" } else { "PUT" });
                    let k = self
                        .line()?
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| self.bad("a memo key that is not a number"))?;
                    if op == b'g' {
                        self.memo_get(k)?;
                    } else {
                        self.memo_put(k)?;
                    }
                }
                0x94 => {
                    self.unsupported("MEMOIZE");
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                0x95 => {
                    self.unsupported("FRAME");
                    self.take(8)?;
                }
                b'o' => {
                    self.unsupported("OBJ");
                    let items = self.pop_mark()?;
                    self.push(Self::container(&items))?;
                }
                0x92 => {
                    self.unsupported("NEWOBJ_EX");
                    let kw = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(Self::container(&[cls, args, kw]))?;
                }
                b'P' => {
                    self.unsupported("PERSID");
                    self.line()?;
                    self.push(Item::leaf())?;
                }
                0x97 => {
                    self.unsupported("NEXT_BUFFER");
                    self.push(Item::leaf())?;
                }
                0x98 => {
                    self.unsupported("READONLY_BUFFER");
                    let v = self.pop()?;
                    self.push(v)?;
                }
                other => return Err(self.bad(format!("unknown opcode 0x{other:02x}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `os.system("echo pwned")` as `pickle.dumps` writes it with protocol 2.
    const OS_SYSTEM: &[u8] =
        b"\x80\x02cos\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";

    #[test]
    fn refuses_a_global_that_runs_code() {
        let err = check(OS_SYSTEM).unwrap_err();
        assert_eq!(err, PickleError::Global("os.system".into()));
        assert!(err.to_string().contains("`os.system`"), "{err}");
    }

    #[test]
    fn refuses_at_the_global_before_reading_further() {
        // Garbage after the global: the refusal comes first, so nothing after it was looked at.
        let mut p = b"\x80\x02cbuiltins\neval\n".to_vec();
        p.extend_from_slice(&[0xff; 16]);
        assert_eq!(
            check(&p).unwrap_err(),
            PickleError::Global("builtins.eval".into())
        );
    }

    #[test]
    fn refuses_stack_global_and_extensions() {
        // Protocol 4: SHORT_BINUNICODE "posix", MEMOIZE, SHORT_BINUNICODE "system", STACK_GLOBAL.
        let p = b"\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94.";
        assert_eq!(
            check(p).unwrap_err(),
            PickleError::Global("posix.system".into())
        );
        // The module name read back from the memo is still seen.
        let p = b"\x80\x04\x8c\x02os\x94\x8c\x05popen\x94h\x00h\x01\x93.";
        assert_eq!(
            check(p).unwrap_err(),
            PickleError::Global("os.popen".into())
        );
        // A name the walk cannot know.
        let p = b"\x80\x04\x8c\x02os\x8c\x01a\x8c\x01b\x86\x93.";
        assert_eq!(check(p).unwrap_err(), PickleError::HiddenGlobal);
        assert_eq!(
            check(b"\x80\x02\x82\x01.").unwrap_err(),
            PickleError::Extension
        );
        let p = b"(ios\nsystem\nX\x02\x00\x00\x00id.";
        assert_eq!(
            check(p).unwrap_err(),
            PickleError::Global("os.system".into())
        );
    }

    #[test]
    fn storages_and_rebuild_functions_pass() {
        let p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02ctorch\nFloatStorage\nq\x03\x86\x85Nb.";
        check(p).unwrap();
        let p = b"\x80\x02ctorch\nIntStorage\n.";
        assert_eq!(
            check(p).unwrap_err(),
            PickleError::Storage("IntStorage".into())
        );
    }

    #[test]
    fn lengths_nesting_and_copies_are_bounded() {
        // A string that claims 4 GB.
        let err = check(b"\x80\x02X\xff\xff\xff\xff").unwrap_err();
        assert!(matches!(err, PickleError::Malformed { .. }), "{err}");
        // An integer wider than candle's reader shifts safely.
        let err = check(b"\x80\x02\x8a\x09\0\0\0\0\0\0\0\0\0.").unwrap_err();
        assert!(matches!(err, PickleError::Malformed { .. }), "{err}");
        // Nesting deeper than any state dict.
        let mut p = b"\x80\x02)".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 100));
        p.push(b'.');
        assert!(matches!(check(&p), Err(PickleError::TooLarge { .. })));
        // A list doubled through the memo 40 times: 2^40 objects for candle to clone.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            p.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        p.push(b'.');
        assert!(matches!(check(&p), Err(PickleError::TooLarge { .. })));
        // No STOP.
        assert!(matches!(
            check(b"\x80\x02N"),
            Err(PickleError::Malformed { .. })
        ));
    }

    #[test]
    fn valid_opcodes_candle_cannot_read_are_named() {
        let p = b"\x80\x04\x8c\x01a\x94.";
        assert_eq!(
            check(p).unwrap_err(),
            PickleError::Unsupported {
                name: "SHORT_BINUNICODE",
                offset: 2
            }
        );
    }
}
