//! The data layer: load reviews, split them, tokenize, batch.
//!
//! ```text
//! Dataset::load("TripAdvisor/reviews.pickle", Some("TripAdvisor/1"), seed)  // original format
//! Dataset::load("my.jsonl", None, seed)                                     // JSON lines, 8:1:1
//! synthetic::generate(&SyntheticConfig::default())                          // built-in toy data
//!   -> Dataset { users, items: IdMap, reviews, train/valid/test, min/max_rating, features, .. }
//! encode_split(&ds, Split::Train, &tokenizer, &EncodeOptions::default())
//!   -> EncodedSplit { sequences: <bos> w.. <eos>, prompts (PEPLER-D), features, .. }
//! split.shuffled_batches(128, Padding::Batch, seed, epoch) / split.batches(128, Padding::Batch)
//!   -> Batch { users, items, ratings, text/mask: B x T, prompt: B x P, features, .. }
//! ```
//!
//! Mirrors the original PEPLER `utils.py` (`DataLoader`, `Batchify`, `Batchify2`): user and item
//! ids become indices in order of first appearance over the whole file; the rating range and the
//! feature set cover all reviews; user/item feature lists (for the discrete prompt) come from the
//! training split; explanations are cut to 20 BPE tokens and tokenized exactly as the original
//! does (see [`TextStyle::Original`]). Deliberate differences, each documented where it lives:
//! deterministic discrete-prompt order ([`Dataset::prompt_features`]), per-batch text padding by
//! default ([`Padding`]), a shuffle in every epoch including the first
//! ([`EncodedSplit::shuffled_batches`]), and no crash for users/items absent from training.
//!
//! Bad input (missing/corrupt pickle, a review without a template, a non-numeric rating, an index
//! past the end, an empty split, an unreadable index file, an unknown id) is an `anyhow` error
//! naming the file and the problem.

mod batch;
mod dataset;
mod encode;
mod jsonl;
mod pickle;
mod pickle_guard;
pub mod synthetic;

use std::path::Path;

use anyhow::Result;

pub use batch::{Batch, Batches, Padding};
pub use dataset::{Dataset, IdMap, RawReview, Review, Split};
pub use encode::{
    encode_explanation, encode_split, EncodeOptions, EncodedSplit, TextStyle,
    MAX_EXPLANATION_TOKENS, MAX_PROMPT_TOKENS,
};
pub use jsonl::{load_jsonl_dataset, parse_jsonl, random_split, read_jsonl};
pub use pickle::{
    load_pickle_dataset, parse_index, parse_reviews_pickle, read_index_file, read_reviews_pickle,
    read_split_dir,
};
pub use pickle_guard::{MAX_PICKLE_DEPTH, MAX_PICKLE_EXPANSION};
pub use synthetic::{SyntheticConfig, SyntheticTruth};

impl Dataset {
    /// Loads `path` by extension: `.jsonl`/`.json` as JSON lines (splits from `index_dir`, or a
    /// seeded 8:1:1 split when `None`), anything else as the original `reviews.pickle`, which
    /// needs `index_dir` (the split folder, e.g. `TripAdvisor/1`).
    pub fn load(path: &Path, index_dir: Option<&Path>, seed: u64) -> Result<Dataset> {
        if path.is_dir() {
            anyhow::bail!(
                "{}: is a folder; --data takes the reviews file itself (reviews.pickle or a \
                 .jsonl), and --index-dir the split folder",
                path.display()
            );
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        if ext == "jsonl" || ext == "json" {
            return load_jsonl_dataset(path, index_dir, seed);
        }
        match index_dir {
            Some(dir) => load_pickle_dataset(path, dir),
            None => anyhow::bail!(
                "{}: a reviews pickle needs its split folder (e.g. <data>/1 with train.index, validation.index, test.index)",
                path.display()
            ),
        }
    }
}
