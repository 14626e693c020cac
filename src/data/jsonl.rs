//! A JSON-lines reader for users bringing their own data, one review per line:
//! `{"user": .., "item": .., "rating": 4, "template": [feature, adjective, sentence, sentiment]}`
//! or with flat keys `{"user": .., "item": .., "rating": .., "feature": .., "text": ..}`
//! (optional `adjective`, `sentiment`). Blank lines are skipped. Splits come from an index folder
//! as for the pickle, or from [`random_split`] (seeded 8:1:1).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::dataset::{Dataset, RawReview};
use super::pickle::read_split_dir;

/// Loads a JSON-lines file with the splits of `index_dir`, or a seeded 8:1:1 [`random_split`].
pub fn load_jsonl_dataset(path: &Path, index_dir: Option<&Path>, seed: u64) -> Result<Dataset> {
    let raw = read_jsonl(path)?;
    let source = path.display().to_string();
    match index_dir {
        Some(dir) => {
            let (splits, names) = read_split_dir(dir)?;
            let names_ref = [names[0].as_str(), names[1].as_str(), names[2].as_str()];
            Dataset::from_raw(&source, raw, splits, names_ref)
        }
        None => {
            let splits = random_split(&raw, seed);
            let name = format!("{source} (random 8:1:1 split, seed {seed})");
            Dataset::from_raw(
                &source,
                raw,
                splits,
                [name.as_str(), name.as_str(), name.as_str()],
            )
        }
    }
}

/// Reads the reviews of a JSON-lines file, in file order.
pub fn read_jsonl(path: &Path) -> Result<Vec<RawReview>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read JSON-lines file {}", path.display()))?;
    parse_jsonl(&bytes, &path.display().to_string())
}

/// [`read_jsonl`] on the file's bytes; `source` names it in errors (with the line).
pub fn parse_jsonl(bytes: &[u8], source: &str) -> Result<Vec<RawReview>> {
    let mut out = Vec::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(line).map_err(|e| {
            anyhow!(
                "{source} line {}: not UTF-8 text (invalid byte at column {})",
                n + 1,
                e.valid_up_to() + 1
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let review = parse_line(line).with_context(|| format!("{source} line {}", n + 1))?;
        out.push(review);
    }
    if out.is_empty() {
        bail!("{source}: no reviews");
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<RawReview> {
    let v: Value = serde_json::from_str(line).map_err(|e| anyhow!("not valid JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| anyhow!("expected a JSON object"))?;
    let id = |key: &str| -> Result<String> {
        match obj.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(other) => bail!("field '{key}' should be a string or number, found {other}"),
            None => bail!("has no '{key}' field"),
        }
    };
    let user = id("user")?;
    let item = id("item")?;
    let rating = match obj.get("rating") {
        Some(Value::Number(n)) => n
            .as_f64()
            .ok_or_else(|| anyhow!("field 'rating' is not a number"))
            .and_then(|x| super::pickle::rating_f32(x).context("field 'rating'"))?,
        Some(other) => bail!("field 'rating' is not a number: {other}"),
        None => bail!("has no 'rating' field"),
    };
    let string = |v: Option<&Value>, what: &str| -> Result<String> {
        match v {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => bail!("{what} should be a string, found {other}"),
            None => Ok(String::new()),
        }
    };
    let sentiment_of = |v: Option<&Value>| v.and_then(Value::as_f64).unwrap_or(0.0) as i32;
    let (feature, adjective, sentence, sentiment) = if let Some(t) = obj.get("template") {
        let t = t.as_array().ok_or_else(|| {
            anyhow!("field 'template' should be [feature, adjective, sentence, sentiment]")
        })?;
        if t.len() < 3 {
            bail!(
                "field 'template' should be [feature, adjective, sentence, sentiment], found {} elements",
                t.len()
            );
        }
        (
            string(t.first(), "template feature")?,
            string(t.get(1), "template adjective")?,
            string(t.get(2), "template sentence")?,
            sentiment_of(t.get(3)),
        )
    } else {
        if !obj.contains_key("text") {
            bail!("has neither a 'template' nor a 'text' field");
        }
        (
            string(obj.get("feature"), "field 'feature'")?,
            string(obj.get("adjective"), "field 'adjective'")?,
            string(obj.get("text"), "field 'text'")?,
            sentiment_of(obj.get("sentiment")),
        )
    };
    Ok(RawReview {
        user,
        item,
        rating,
        feature,
        adjective,
        sentence,
        sentiment,
    })
}

/// Seeded 8:1:1 split of `reviews` (train, validation, test), each list sorted.
///
/// Every user and every item gets at least one training review (the released NETE/PETER splits
/// have that property, and a prompt never trained would make the test meaningless): in a
/// shuffled order, a review that brings a user or item not yet covered goes to train; the rest
/// fill train up to 80%, then validation to 10%, then test. Needs at least 10 reviews beyond the
/// forced ones to make every split non-empty; otherwise `Dataset::from_raw` reports the empty split.
pub fn random_split(reviews: &[RawReview], seed: u64) -> [Vec<usize>; 3] {
    let n = reviews.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    shuffle(&mut order, &mut rng);
    let mut users = std::collections::HashSet::new();
    let mut items = std::collections::HashSet::new();
    let mut train = Vec::new();
    let mut rest = Vec::new();
    for &k in &order {
        let new_user = users.insert(reviews[k].user.as_str());
        let new_item = items.insert(reviews[k].item.as_str());
        if new_user || new_item {
            train.push(k);
        } else {
            rest.push(k);
        }
    }
    split_rest(n, train, rest)
}

/// Distributes `rest` (in its order) after the forced training reviews: train to 80% of `n`,
/// validation to 10%, the remainder to test.
pub(crate) fn split_rest(n: usize, mut train: Vec<usize>, rest: Vec<usize>) -> [Vec<usize>; 3] {
    let n_train = (n * 8).div_ceil(10);
    let n_valid = n / 10;
    let mut it = rest.into_iter();
    while train.len() < n_train {
        match it.next() {
            Some(k) => train.push(k),
            None => break,
        }
    }
    let mut valid: Vec<usize> = it.by_ref().take(n_valid).collect();
    let mut test: Vec<usize> = it.collect();
    train.sort_unstable();
    valid.sort_unstable();
    test.sort_unstable();
    [train, valid, test]
}

/// Fisher-Yates with a ChaCha stream: same seed, same order on every platform.
pub(crate) fn shuffle<T>(v: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.gen_range(0..=i);
        v.swap(i, j);
    }
}
