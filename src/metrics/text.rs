//! Text post-processing shared by generated and reference explanations, as the original PEPLER
//! (lileipisces/PEPLER `utils.py`: `postprocessing`, `ids2tokens`): decode with the slow-tokenizer
//! semantics, separate punctuation and clitics, split on whitespace, cut at the first `<eos>`.
//! The original does not lowercase here (its data is already lowercase), so neither do we.

use anyhow::Result;
use rayon::prelude::*;

use crate::tokenizer::{Tokenizer, EOS_TOKEN};

/// Python's `str.isspace` for one character: Unicode White_Space plus the four ASCII
/// separators U+001C..U+001F, which Python counts as whitespace and Rust does not.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()` (no argument): split on runs of whitespace, no empty pieces.
pub fn py_split(s: &str) -> Vec<&str> {
    s.split(py_isspace).filter(|w| !w.is_empty()).collect()
}

/// `re.sub(c + '+', repl, s)`: every maximal run of `c` becomes `repl`.
fn replace_runs(s: &str, c: char, repl: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut in_run = false;
    for ch in s.chars() {
        if ch == c {
            if !in_run {
                out.push_str(repl);
                in_run = true;
            }
        } else {
            out.push(ch);
            in_run = false;
        }
    }
    out
}

/// The original's `postprocessing` (adopted there from yoonkim/CNN_sentence): the same
/// substitutions in the same order, then runs of spaces collapsed and the ends stripped.
/// `"good!it's (ok)"` -> `"good ! it 's ( ok )"`.
pub fn postprocessing(s: &str) -> String {
    let s = s
        .replace("'s", " 's")
        .replace("'m", " 'm")
        .replace("'ve", " 've")
        .replace("n't", " n't")
        .replace("'re", " 're")
        .replace("'d", " 'd")
        .replace("'ll", " 'll")
        .replace('(', " ( ")
        .replace(')', " ) ");
    let s = replace_runs(&s, ',', " , ");
    let s = replace_runs(&s, ':', " , ");
    let s = replace_runs(&s, ';', " . ");
    let s = replace_runs(&s, '.', " . ");
    let s = replace_runs(&s, '!', " ! ");
    let s = replace_runs(&s, '?', " ? ");
    let s = replace_runs(&s, ' ', " ");
    s.trim_matches(py_isspace).to_string()
}

/// The original's `ids2tokens`: `decode(ids)` (special tokens kept, joined by spaces, clean-up on),
/// `postprocessing`, whitespace split, stop before the first `"<eos>"` word.
///
/// The caller passes what the original passes: generated ids after the `<bos>` prompt, or a
/// reference sequence without its leading `<bos>` (`seq[1:]`, padding included).
pub fn ids2tokens(ids: &[u32], tokenizer: &Tokenizer) -> Result<Vec<String>> {
    let text = postprocessing(&tokenizer.decode(ids, false)?);
    Ok(py_split(&text)
        .into_iter()
        .take_while(|w| *w != EOS_TOKEN)
        .map(str::to_string)
        .collect())
}

/// [`ids2tokens`] over many sequences in parallel; order preserved.
pub fn ids2tokens_batch<S: AsRef<[u32]> + Sync>(
    seqs: &[S],
    tokenizer: &Tokenizer,
) -> Result<Vec<Vec<String>>> {
    seqs.par_iter()
        .map(|ids| ids2tokens(ids.as_ref(), tokenizer))
        .collect()
}
