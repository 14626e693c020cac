//! A pre-flight check of a pickle's opcode stream before `serde_pickle` unpickles it.
//!
//! `serde_pickle` builds its value with a stack machine (no recursion), but converting, cloning
//! and dropping that value recurse once per nesting level, and a memoised value referenced `k`
//! times is copied `k` times. So a 20 KB pickle of lists nested 10,000 deep overflows the stack
//! (an abort, not an error), and a few hundred bytes of `[x, x]` pairs referencing the previous
//! pair decode to gigabytes. This module replays the stream on a model of the unpickler's stack
//! that keeps only the shape — which container holds which, and which memo slot names what — and
//! measures, without recursing:
//! - the deepest nesting through containers and memo references (the conversion's recursion);
//! - the number of values the decoded result and every copy made on the way hold.
//!
//! Both are over-estimates where the model is coarser than the unpickler (every memo slot's past
//! bindings count, `DUP` shares instead of copying): a pickle is never let through because the
//! model was optimistic. Python's pickler writes `reviews.pickle` 3–4 levels deep with each
//! value decoded once, far inside both limits. Opcodes the unpickler rejects end the replay
//! there (it fails at the same point); what was built up to that point is still measured,
//! because the unpickler drops it recursively.

use std::collections::HashMap;

use anyhow::{bail, Result};

/// Deepest nesting accepted (containers inside containers, memo references followed).
pub const MAX_PICKLE_DEPTH: u64 = 100;
/// Decoded values accepted per byte of pickle (plus a fixed allowance): a pickle may not
/// decode to much more than it says explicitly.
pub const MAX_PICKLE_EXPANSION: u64 = 16;
const EXPANSION_ALLOWANCE: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Item {
    /// A scalar, string or bytes; the weight counts it (1 per 16 bytes of text beyond the first).
    Leaf(u64),
    /// A container, by index into `Model::nodes`.
    Node(u32),
    /// A memo reference, by index into `Model::memo` (resolved when the value is converted).
    Memo(u32),
}

#[derive(Default)]
struct Model {
    /// Children of each container.
    nodes: Vec<Vec<Item>>,
    /// Every value each memo slot has been bound to (its last binding is the current one).
    memo: Vec<Vec<Item>>,
    memo_slot: HashMap<u32, u32>,
    stack: Vec<Item>,
    /// Stacks saved by MARK.
    marks: Vec<Vec<Item>>,
    /// Values the unpickler copies while parsing (DUP, PUT of a reference, arguments it resolves).
    copies: Vec<Item>,
}

/// Why the replay stopped early: the unpickler fails at the same point.
struct Stop;

impl Model {
    fn pop(&mut self) -> Result<Item, Stop> {
        self.stack.pop().ok_or(Stop)
    }

    fn pop_mark(&mut self) -> Result<Vec<Item>, Stop> {
        let prev = self.marks.pop().ok_or(Stop)?;
        Ok(std::mem::replace(&mut self.stack, prev))
    }

    fn new_node(&mut self, children: Vec<Item>) -> Item {
        self.nodes.push(children);
        Item::Node((self.nodes.len() - 1) as u32)
    }

    /// The container at the top of the stack (through a memo reference, as the unpickler does).
    fn top_node(&mut self) -> Result<usize, Stop> {
        let mut item = *self.stack.last().ok_or(Stop)?;
        if let Item::Memo(m) = item {
            item = *self.memo[m as usize].last().ok_or(Stop)?;
        }
        match item {
            Item::Node(n) => Ok(n as usize),
            _ => Err(Stop),
        }
    }

    fn extend_top(&mut self, items: Vec<Item>) -> Result<(), Stop> {
        let n = self.top_node()?;
        self.nodes[n].extend(items);
        Ok(())
    }

    fn memoize(&mut self, id: u32) -> Result<(), Stop> {
        let mut item = self.pop()?;
        if let Item::Memo(m) = item {
            // The unpickler stores a copy of the referenced value.
            item = *self.memo[m as usize].last().ok_or(Stop)?;
            self.copies.push(item);
        }
        let next = self.memo.len() as u32;
        let slot = *self.memo_slot.entry(id).or_insert(next);
        if slot == next {
            self.memo.push(Vec::new());
        }
        self.memo[slot as usize].push(item);
        self.stack.push(Item::Memo(slot));
        Ok(())
    }

    fn get(&mut self, id: u32) -> Result<(), Stop> {
        let slot = *self.memo_slot.get(&id).ok_or(Stop)?;
        self.stack.push(Item::Memo(slot));
        Ok(())
    }

    /// Pops a value the unpickler resolves (copies, when it is a memo reference).
    fn pop_resolve(&mut self) -> Result<Item, Stop> {
        let item = self.pop()?;
        if let Item::Memo(_) = item {
            self.copies.push(item);
        }
        Ok(item)
    }
}

/// A cursor over the pickle bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Stop> {
        let end = self.pos.checked_add(n).ok_or(Stop)?;
        let s = self.bytes.get(self.pos..end).ok_or(Stop)?;
        self.pos = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, Stop> {
        Ok(self.take(1)?[0])
    }
    fn line(&mut self) -> Result<&[u8], Stop> {
        let rest = &self.bytes[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or(Stop)?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }
    fn le(&mut self, n: usize) -> Result<u64, Stop> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    }
    /// A length-prefixed string's bytes.
    fn prefixed(&mut self, len_bytes: usize) -> Result<usize, Stop> {
        // A length past the end of the file (or negative, for BINSTRING's signed one) stops
        // the replay: the unpickler fails there too.
        let n = usize::try_from(self.le(len_bytes)?).map_err(|_| Stop)?;
        self.take(n)?;
        Ok(n)
    }
}

fn leaf(len: usize) -> Item {
    Item::Leaf(1 + len as u64 / 16)
}

/// Replays one opcode; `Ok(false)` at STOP.
fn step(m: &mut Model, r: &mut Reader) -> Result<bool, Stop> {
    let op = r.byte()?;
    match op {
        b'.' => {
            m.pop()?;
            return Ok(false);
        }
        b'(' => {
            let saved = std::mem::take(&mut m.stack);
            m.marks.push(saved);
        }
        b'0' => {
            if m.stack.is_empty() {
                m.pop_mark()?;
            } else {
                m.pop()?;
            }
        }
        b'1' => {
            m.pop_mark()?;
        }
        b'2' => {
            let top = *m.stack.last().ok_or(Stop)?;
            m.copies.push(top);
            m.stack.push(top);
        }
        // Memo.
        b'p' => {
            let id = std::str::from_utf8(r.line()?)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or(Stop)?;
            m.memoize(id)?;
        }
        b'q' => {
            let id = r.byte()? as u32;
            m.memoize(id)?;
        }
        b'r' => {
            let id = r.le(4)? as u32;
            m.memoize(id)?;
        }
        0x94 => {
            let id = m.memo_slot.len() as u32;
            m.memoize(id)?;
        }
        b'g' => {
            let id = std::str::from_utf8(r.line()?)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or(Stop)?;
            m.get(id)?;
        }
        b'h' => {
            let id = r.byte()? as u32;
            m.get(id)?;
        }
        b'j' => {
            let id = r.le(4)? as u32;
            m.get(id)?;
        }
        // Scalars.
        b'N' | 0x88 | 0x89 => m.stack.push(leaf(0)),
        b'I' | b'L' | b'F' | b'S' | b'V' => {
            let n = r.line()?.len();
            m.stack.push(leaf(n));
        }
        b'G' => {
            r.take(8)?;
            m.stack.push(leaf(0));
        }
        b'J' => {
            r.take(4)?;
            m.stack.push(leaf(0));
        }
        b'K' => {
            r.take(1)?;
            m.stack.push(leaf(0));
        }
        b'M' => {
            r.take(2)?;
            m.stack.push(leaf(0));
        }
        0x8a | b'C' | b'U' | 0x8c => {
            let n = r.prefixed(1)?;
            m.stack.push(leaf(n));
        }
        0x8b | b'B' | b'T' | b'X' => {
            let n = r.prefixed(4)?;
            m.stack.push(leaf(n));
        }
        0x8d | 0x8e | 0x96 => {
            let n = r.prefixed(8)?;
            m.stack.push(leaf(n));
        }
        // Containers.
        b')' | b']' | b'}' | 0x8f => {
            let node = m.new_node(Vec::new());
            m.stack.push(node);
        }
        0x85..=0x87 => {
            let k = (op - 0x84) as usize;
            if m.stack.len() < k {
                return Err(Stop);
            }
            let items = m.stack.split_off(m.stack.len() - k);
            let node = m.new_node(items);
            m.stack.push(node);
        }
        b't' | b'l' | b'd' | 0x91 => {
            let items = m.pop_mark()?;
            let node = m.new_node(items);
            m.stack.push(node);
        }
        b'a' => {
            let v = m.pop()?;
            m.extend_top(vec![v])?;
        }
        b's' => {
            let v = m.pop()?;
            let k = m.pop()?;
            m.extend_top(vec![k, v])?;
        }
        b'e' | b'u' | 0x90 => {
            let items = m.pop_mark()?;
            m.extend_top(items)?;
        }
        // Globals and objects: the unpickler keeps at most their arguments.
        b'c' => {
            r.line()?;
            r.line()?;
            m.stack.push(leaf(0));
        }
        0x93 => {
            m.pop_resolve()?;
            m.pop_resolve()?;
            m.stack.push(leaf(0));
        }
        b'R' => {
            let args = m.pop_resolve()?;
            m.pop_resolve()?;
            let node = m.new_node(vec![args]);
            m.stack.push(node);
        }
        b'i' => {
            r.line()?;
            r.line()?;
            let items = m.pop_mark()?;
            let node = m.new_node(items);
            m.stack.push(node);
        }
        b'o' => {
            let items = m.pop_mark()?;
            m.pop()?;
            let node = m.new_node(items);
            m.stack.push(node);
        }
        0x81 => {
            let args = m.pop()?;
            m.pop()?;
            let node = m.new_node(vec![args]);
            m.stack.push(node);
        }
        0x92 => {
            let kwargs = m.pop()?;
            let args = m.pop()?;
            m.pop()?;
            let node = m.new_node(vec![args, kwargs]);
            m.stack.push(node);
        }
        b'b' => {
            let state = m.pop()?;
            m.pop()?;
            m.stack.push(state);
        }
        // Framing.
        0x80 => {
            r.take(1)?;
        }
        0x95 => {
            r.take(8)?;
        }
        // PERSID, BINPERSID, EXT1/2/4, NEXT_BUFFER, READONLY_BUFFER and unknown bytes: the
        // unpickler rejects them.
        _ => return Err(Stop),
    }
    Ok(true)
}

/// Depth and decoded size of every container and memo slot, computed iteratively (a
/// recursive walk would overflow on exactly the inputs this guards against).
struct Measure {
    node_depth: Vec<u64>,
    node_size: Vec<u64>,
    memo_depth: Vec<u64>,
    memo_size: Vec<u64>,
}

#[derive(Clone, Copy, PartialEq)]
enum Vertex {
    Node(u32),
    Memo(u32),
}

fn measure(m: &Model, cap: u64) -> Result<Measure> {
    const UNSEEN: u8 = 0;
    const OPEN: u8 = 1;
    const DONE: u8 = 2;
    let mut out = Measure {
        node_depth: vec![0; m.nodes.len()],
        node_size: vec![0; m.nodes.len()],
        memo_depth: vec![0; m.memo.len()],
        memo_size: vec![0; m.memo.len()],
    };
    let mut node_state = vec![UNSEEN; m.nodes.len()];
    let mut memo_state = vec![UNSEEN; m.memo.len()];
    let children = |v: Vertex| -> &[Item] {
        match v {
            Vertex::Node(n) => &m.nodes[n as usize],
            Vertex::Memo(s) => &m.memo[s as usize],
        }
    };
    let roots = (0..m.nodes.len() as u32)
        .map(Vertex::Node)
        .chain((0..m.memo.len() as u32).map(Vertex::Memo));
    for root in roots {
        let seen = match root {
            Vertex::Node(n) => node_state[n as usize],
            Vertex::Memo(s) => memo_state[s as usize],
        };
        if seen != UNSEEN {
            continue;
        }
        // (vertex, index of the next child to visit)
        let mut path: Vec<(Vertex, usize)> = vec![(root, 0)];
        match root {
            Vertex::Node(n) => node_state[n as usize] = OPEN,
            Vertex::Memo(s) => memo_state[s as usize] = OPEN,
        }
        while let Some(&mut (v, ref mut next)) = path.last_mut() {
            let kids = children(v);
            if let Some(&child) = kids.get(*next) {
                *next += 1;
                let cv = match child {
                    Item::Leaf(_) => continue,
                    Item::Node(n) => Vertex::Node(n),
                    Item::Memo(s) => Vertex::Memo(s),
                };
                let state = match cv {
                    Vertex::Node(n) => &mut node_state[n as usize],
                    Vertex::Memo(s) => &mut memo_state[s as usize],
                };
                match *state {
                    UNSEEN => {
                        *state = OPEN;
                        path.push((cv, 0));
                    }
                    OPEN => bail!("the pickle holds a recursive structure (a value inside itself)"),
                    _ => {}
                }
                continue;
            }
            // All children measured: this vertex's depth and size.
            let (mut depth, mut size) = (0u64, 0u64);
            for &c in kids {
                let (d, s) = match c {
                    Item::Leaf(w) => (0, w),
                    Item::Node(n) => (out.node_depth[n as usize], out.node_size[n as usize]),
                    Item::Memo(s) => (out.memo_depth[s as usize], out.memo_size[s as usize]),
                };
                match v {
                    // A memo slot is one of its bindings: the largest counts.
                    Vertex::Memo(_) => {
                        depth = depth.max(d);
                        size = size.max(s);
                    }
                    Vertex::Node(_) => {
                        depth = depth.max(d);
                        size = size.saturating_add(s).min(cap);
                    }
                }
            }
            match v {
                Vertex::Node(n) => {
                    out.node_depth[n as usize] = depth + 1;
                    out.node_size[n as usize] = size.saturating_add(1).min(cap);
                    node_state[n as usize] = DONE;
                }
                Vertex::Memo(s) => {
                    out.memo_depth[s as usize] = depth;
                    out.memo_size[s as usize] = size;
                    memo_state[s as usize] = DONE;
                }
            }
            path.pop();
        }
    }
    Ok(out)
}

/// Checks that unpickling `bytes` neither nests deeper than [`MAX_PICKLE_DEPTH`] nor decodes to
/// more than [`MAX_PICKLE_EXPANSION`] values per byte. Malformed streams pass: the unpickler
/// reports them (what they built before the fault is still checked).
pub fn check(bytes: &[u8]) -> Result<()> {
    let mut m = Model::default();
    let mut r = Reader { bytes, pos: 0 };
    while let Ok(true) = step(&mut m, &mut r) {}
    let cap = (bytes.len() as u64)
        .saturating_mul(MAX_PICKLE_EXPANSION)
        .saturating_add(EXPANSION_ALLOWANCE);
    let ms = measure(&m, cap)?;
    let size_of = |it: &Item| match *it {
        Item::Leaf(w) => w,
        Item::Node(n) => ms.node_size[n as usize],
        Item::Memo(s) => ms.memo_size[s as usize],
    };
    let depth = ms
        .node_depth
        .iter()
        .chain(&ms.memo_depth)
        .copied()
        .max()
        .unwrap_or(0);
    if depth > MAX_PICKLE_DEPTH {
        bail!(
            "its values are nested {depth} levels deep, more than the {MAX_PICKLE_DEPTH} \
             supported (a reviews pickle is a list of dicts, 3-4 levels)"
        );
    }
    // What the unpickler materialises: every container as parsed, every copy it makes, and the
    // fully expanded values left on its stacks (the result among them).
    let direct: u64 = m
        .nodes
        .iter()
        .map(|c| {
            c.iter()
                .map(|i| if let Item::Leaf(w) = i { *w } else { 0 })
                .sum::<u64>()
                + 1
        })
        .fold(0u64, u64::saturating_add);
    let total = m
        .copies
        .iter()
        .chain(&m.stack)
        .chain(m.marks.iter().flatten())
        .map(size_of)
        .fold(direct, u64::saturating_add);
    if total >= cap {
        bail!(
            "it decodes to more than {cap} values ({} bytes of pickle): shared values referenced \
             over and over (a decompression bomb)",
            bytes.len()
        );
    }
    Ok(())
}
