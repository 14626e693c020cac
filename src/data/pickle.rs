//! Readers for the data exactly as the PEPLER/PETER/NETE authors distribute it: `reviews.pickle`
//! (a pickled Python list of dicts with `user`, `item`, `rating` and
//! `template = (feature, adjective, sentence, sentiment)`; other keys are ignored) and a split
//! folder holding `train.index`, `validation.index`, `test.index` (space-separated review
//! indices on the first line).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_pickle::{DeOptions, HashableValue, Value};

use super::dataset::{Dataset, RawReview, Split};

/// Loads `reviews.pickle` and the split folder `index_dir` (e.g. `TripAdvisor/1`).
pub fn load_pickle_dataset(pickle: &Path, index_dir: &Path) -> Result<Dataset> {
    let raw = read_reviews_pickle(pickle)?;
    let (splits, names) = read_split_dir(index_dir)?;
    let names_ref = [names[0].as_str(), names[1].as_str(), names[2].as_str()];
    Dataset::from_raw(&pickle.display().to_string(), raw, splits, names_ref)
}

/// Reads the reviews of a `reviews.pickle`, in file order.
pub fn read_reviews_pickle(path: &Path) -> Result<Vec<RawReview>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the reviews pickle {}", path.display()))?;
    parse_reviews_pickle(&bytes, path)
}

/// [`read_reviews_pickle`] on the file's bytes; `path` names it in errors.
pub fn parse_reviews_pickle(bytes: &[u8], path: &Path) -> Result<Vec<RawReview>> {
    // The unpickler recurses once per nesting level and copies shared (memoised) values: check
    // nesting depth and the size of the decoded value before it runs (see `pickle_guard`).
    super::pickle_guard::check(bytes)
        .with_context(|| format!("{}: refusing to unpickle", path.display()))?;
    // replace_unresolved_globals: a stray class reference (e.g. a numpy scalar) becomes None
    // and is then reported as "not a number" for the field it sits in, instead of failing the
    // whole file with an opaque unpickler error. decode_strings: Python 2 `str` pickles.
    let opts = DeOptions::new()
        .replace_unresolved_globals()
        .decode_strings();
    let value = serde_pickle::value_from_slice(bytes, opts).map_err(|e| {
        anyhow!(
            "{} is not a readable pickle (truncated or corrupt?): {e}",
            path.display()
        )
    })?;
    let list = match value {
        Value::List(v) | Value::Tuple(v) => v,
        other => bail!(
            "{}: expected a pickled list of review dicts, found {}",
            path.display(),
            type_name(&other)
        ),
    };
    list.into_iter()
        .enumerate()
        .map(|(k, v)| {
            review_from_value(v).with_context(|| format!("{}: review {k}", path.display()))
        })
        .collect()
}

fn review_from_value(v: Value) -> Result<RawReview> {
    let mut dict = match v {
        Value::Dict(d) => d,
        other => bail!("expected a dict, found {}", type_name(&other)),
    };
    let user = id_string(take(&mut dict, "user")?).context("field 'user'")?;
    let item = id_string(take(&mut dict, "item")?).context("field 'item'")?;
    let rating = number(&take(&mut dict, "rating")?).context("field 'rating' is not a number")?;
    let rating = rating_f32(rating).context("field 'rating'")?;
    let template = match take(&mut dict, "template")? {
        Value::Tuple(t) | Value::List(t) => t,
        other => bail!(
            "field 'template' should be a (feature, adjective, sentence, sentiment) tuple, found {}",
            type_name(&other)
        ),
    };
    if template.len() < 3 {
        bail!(
            "field 'template' should be a (feature, adjective, sentence, sentiment) tuple, found {} elements",
            template.len()
        );
    }
    let mut t = template.into_iter();
    let feature = text(t.next().unwrap_or(Value::None)).context("template feature")?;
    let adjective = text(t.next().unwrap_or(Value::None)).context("template adjective")?;
    let sentence = text(t.next().unwrap_or(Value::None)).context("template sentence")?;
    let sentiment = t.next().and_then(|v| number(&v).ok()).unwrap_or(0.0) as i32;
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

/// A rating as the f32 the model uses: a finite number within f32's range (1e308 is a finite
/// f64 but would become infinity).
pub(crate) fn rating_f32(x: f64) -> Result<f32> {
    if !x.is_finite() {
        bail!("{x} is not a finite number");
    }
    if x.abs() > f32::MAX as f64 {
        bail!("{x} is outside the range of ratings this program handles (|rating| <= 3.4e38)");
    }
    Ok(x as f32)
}

fn take(dict: &mut BTreeMap<HashableValue, Value>, key: &str) -> Result<Value> {
    dict.remove(&HashableValue::String(key.to_string()))
        .or_else(|| dict.remove(&HashableValue::Bytes(key.as_bytes().to_vec())))
        .ok_or_else(|| anyhow!("has no '{key}' field"))
}

/// A user/item id as a string key; ints are written in decimal.
pub(crate) fn id_string(v: Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s),
        Value::Bytes(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Value::I64(i) => Ok(i.to_string()),
        Value::Int(i) => Ok(i.to_string()),
        other => bail!(
            "expected a string or integer id, found {}",
            type_name(&other)
        ),
    }
}

fn number(v: &Value) -> Result<f64> {
    match v {
        Value::F64(x) if x.is_finite() => Ok(*x),
        Value::F64(x) => bail!("{x} is not a finite number"),
        Value::Int(i) => bail!("{i} is too large"),
        Value::I64(i) => Ok(*i as f64),
        Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        other => bail!("found {}", type_name(other)),
    }
}

fn text(v: Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s),
        Value::Bytes(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        other => bail!("expected a string, found {}", type_name(&other)),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::I64(_) | Value::Int(_) => "an int",
        Value::F64(_) => "a float",
        Value::Bytes(_) => "bytes",
        Value::String(_) => "a str",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Set(_) | Value::FrozenSet(_) => "a set",
        Value::Dict(_) => "a dict",
    }
}

/// Reads `<dir>/{train,validation,test}.index`. Returns the three index lists and the file
/// paths (for messages).
pub fn read_split_dir(dir: &Path) -> Result<([Vec<usize>; 3], [String; 3])> {
    if !dir.is_dir() {
        bail!(
            "split folder {} does not exist or is not a folder",
            dir.display()
        );
    }
    let mut lists: [Vec<usize>; 3] = Default::default();
    let mut names: [String; 3] = Default::default();
    for (k, split) in Split::ALL.iter().enumerate() {
        let path = dir.join(format!("{}.index", split.file_stem()));
        lists[k] = read_index_file(&path)?;
        names[k] = path.display().to_string();
    }
    Ok((lists, names))
}

/// One index file: non-negative integer review indices separated by any whitespace, on one
/// line (as the original writes them: `f.readline().split(' ')`) or on many (every line is read;
/// the original's reader would silently keep only the first). An empty list is returned as-is;
/// `Dataset::from_raw` reports it as an empty split, and duplicates or indices shared between
/// splits.
pub fn read_index_file(path: &Path) -> Result<Vec<usize>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read index file {}", path.display()))?;
    parse_index(&bytes, &path.display().to_string())
}

/// Largest index accepted (far beyond any dataset; keeps a garbage number from looking valid).
pub const MAX_INDEX: usize = u32::MAX as usize;

/// [`read_index_file`] on the file's bytes; `source` names it in errors (with the line).
pub fn parse_index(bytes: &[u8], source: &str) -> Result<Vec<usize>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "index file {source}: not text (invalid UTF-8 at byte {})",
            e.valid_up_to()
        )
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for tok in line.split_whitespace() {
            match tok.parse::<usize>() {
                Ok(i) if i <= MAX_INDEX => out.push(i),
                _ => bail!(
                    "index file {source} line {}: {tok:?} is not a non-negative integer index",
                    n + 1
                ),
            }
        }
    }
    Ok(out)
}
