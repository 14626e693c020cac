//! The in-memory dataset every reader produces: id maps, reviews, the three splits, the rating
//! range, the feature set, and per-user / per-item feature lists from the training split.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};

/// Which part of the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Valid,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    /// The original's index-file stem (`train`, `validation`, `test`).
    pub fn file_stem(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "validation",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.file_stem())
    }
}

/// Raw ids (as strings) <-> dense indices, in order of first appearance
/// (the original's `EntityDictionary`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdMap {
    kind: &'static str,
    names: Vec<String>,
    index: HashMap<String, u32>,
}

impl IdMap {
    /// An empty map; `kind` ("user", "item") names it in error messages.
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            names: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Index of `raw`, adding it at the end when new.
    pub fn insert(&mut self, raw: &str) -> u32 {
        if let Some(&i) = self.index.get(raw) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(raw.to_string());
        self.index.insert(raw.to_string(), i);
        i
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Index of a raw id, if known.
    pub fn get(&self, raw: &str) -> Option<u32> {
        self.index.get(raw).copied()
    }

    /// Index of a raw id, or an error naming the id.
    pub fn lookup(&self, raw: &str) -> Result<u32> {
        match self.get(raw) {
            Some(i) => Ok(i),
            None => bail!(
                "unknown {} id {raw:?} (the dataset has {} {}s)",
                self.kind,
                self.len(),
                self.kind
            ),
        }
    }

    /// Raw id of an index, if in range.
    pub fn name(&self, idx: u32) -> Option<&str> {
        self.names.get(idx as usize).map(String::as_str)
    }

    /// All raw ids in index order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// One review: dense user/item indices, rating, and the template
/// `(feature, adjective, sentence, sentiment)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Review {
    pub user: u32,
    pub item: u32,
    pub rating: f32,
    pub feature: String,
    pub adjective: String,
    /// The explanation sentence, untokenized and untruncated.
    pub sentence: String,
    /// Template sentiment (+1 / -1 in the released data; 0 when absent or not a number).
    pub sentiment: i32,
}

/// A review as a reader sees it, before ids are mapped.
#[derive(Clone, Debug, PartialEq)]
pub struct RawReview {
    pub user: String,
    pub item: String,
    pub rating: f32,
    pub feature: String,
    pub adjective: String,
    pub sentence: String,
    pub sentiment: i32,
}

/// A loaded dataset: every reader and the synthetic generator return one.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Where it came from (file path or "synthetic(...)"), used in messages.
    pub source: String,
    pub users: IdMap,
    pub items: IdMap,
    /// All reviews, in file order (split indices point here).
    pub reviews: Vec<Review>,
    pub train: Vec<usize>,
    pub valid: Vec<usize>,
    pub test: Vec<usize>,
    /// Rating range over ALL reviews (the original's `initialize`); used to clip predictions.
    pub min_rating: f32,
    pub max_rating: f32,
    /// Every distinct feature over ALL reviews, in order of first appearance (the original's
    /// `feature_set`, used by FCR/DIV and feature detection).
    pub features: Vec<String>,
    /// Per user index: distinct features of the user's TRAINING reviews, first appearance order.
    pub user_features: Vec<Vec<String>>,
    /// Per item index: distinct features of the item's TRAINING reviews, first appearance order.
    pub item_features: Vec<Vec<String>>,
}

impl Dataset {
    /// Maps ids (first appearance over all reviews, like the original's `initialize`), checks
    /// the splits (non-empty, in range) and derives the rating range and feature lists.
    /// `split_sources` names where each split came from, for error messages.
    pub fn from_raw(
        source: &str,
        raw: Vec<RawReview>,
        splits: [Vec<usize>; 3],
        split_sources: [&str; 3],
    ) -> Result<Self> {
        if raw.is_empty() {
            bail!("{source}: no reviews");
        }
        let mut users = IdMap::new("user");
        let mut items = IdMap::new("item");
        let mut min_rating = f32::INFINITY;
        let mut max_rating = f32::NEG_INFINITY;
        let mut features = Vec::new();
        let mut seen_feature = HashMap::new();
        let mut reviews = Vec::with_capacity(raw.len());
        for (k, r) in raw.into_iter().enumerate() {
            if !r.rating.is_finite() {
                bail!("{source}: review {k} has a rating that is not a finite number");
            }
            min_rating = min_rating.min(r.rating);
            max_rating = max_rating.max(r.rating);
            if !seen_feature.contains_key(&r.feature) {
                seen_feature.insert(r.feature.clone(), features.len());
                features.push(r.feature.clone());
            }
            reviews.push(Review {
                user: users.insert(&r.user),
                item: items.insert(&r.item),
                rating: r.rating,
                feature: r.feature,
                adjective: r.adjective,
                sentence: r.sentence,
                sentiment: r.sentiment,
            });
        }
        let [train, valid, test] = splits;
        for ((split, idx), src) in Split::ALL
            .iter()
            .zip([&train, &valid, &test])
            .zip(split_sources)
        {
            if idx.is_empty() {
                bail!("{src}: empty {split} split (no indices)");
            }
            if let Some(&bad) = idx.iter().find(|&&i| i >= reviews.len()) {
                bail!(
                    "{src}: index {bad} is past the end of the {} reviews in {source}",
                    reviews.len()
                );
            }
        }
        // Each review in at most one split, at most once: a review in two splits leaks test
        // data into training (or validation), and a duplicate silently weights a review twice.
        let mut owner: Vec<Option<usize>> = vec![None; reviews.len()];
        for (k, idx) in [&train, &valid, &test].into_iter().enumerate() {
            for &i in idx.iter() {
                match owner[i] {
                    None => owner[i] = Some(k),
                    Some(j) if j == k => bail!(
                        "{}: index {i} appears more than once in the {} split",
                        split_sources[k],
                        Split::ALL[k]
                    ),
                    Some(j) => bail!(
                        "index {i} is in both the {} split ({}) and the {} split ({}): the \
                         splits must not share reviews",
                        Split::ALL[j],
                        split_sources[j],
                        Split::ALL[k],
                        split_sources[k]
                    ),
                }
            }
        }
        let mut user_features = vec![Vec::new(); users.len()];
        let mut item_features = vec![Vec::new(); items.len()];
        let mut seen_user: HashSet<(u32, &str)> = HashSet::new();
        let mut seen_item: HashSet<(u32, &str)> = HashSet::new();
        for &i in &train {
            let r = &reviews[i];
            if seen_user.insert((r.user, &r.feature)) {
                user_features[r.user as usize].push(r.feature.clone());
            }
            if seen_item.insert((r.item, &r.feature)) {
                item_features[r.item as usize].push(r.feature.clone());
            }
        }
        Ok(Self {
            source: source.to_string(),
            users,
            items,
            reviews,
            train,
            valid,
            test,
            min_rating,
            max_rating,
            features,
            user_features,
            item_features,
        })
    }

    pub fn n_users(&self) -> usize {
        self.users.len()
    }

    pub fn n_items(&self) -> usize {
        self.items.len()
    }

    /// Review indices of one split, in file order.
    pub fn split(&self, split: Split) -> &[usize] {
        match split {
            Split::Train => &self.train,
            Split::Valid => &self.valid,
            Split::Test => &self.test,
        }
    }

    /// The discrete prompt's feature words for (user, item), from the TRAINING split:
    /// features shared by user and item first, then the rest of the union (the user's remaining
    /// features, then the item's), each group in order of first appearance in the training split.
    ///
    /// Differences from the original `Batchify2` (documented on purpose):
    /// - the original iterates Python sets, whose string order changes with `PYTHONHASHSEED`
    ///   on every run; we use first-appearance order so the same data gives the same prompt;
    /// - the original computes `ufea | ifea - intersection`, which by operator precedence is
    ///   `ufea | (ifea - intersection)` = the whole union, so shared features appear TWICE
    ///   (once in the intersection, once in the "difference"). `repeat_shared = true`
    ///   reproduces that; `false` gives the paper's description (each feature once).
    /// - the original raises `KeyError` for a user or item with no training review; we give
    ///   them no features.
    pub fn prompt_features(&self, user: u32, item: u32, repeat_shared: bool) -> Vec<&str> {
        let uf: &[String] = self
            .user_features
            .get(user as usize)
            .map_or(&[], Vec::as_slice);
        let itf: &[String] = self
            .item_features
            .get(item as usize)
            .map_or(&[], Vec::as_slice);
        // Hash sets for membership: real items can have hundreds of features.
        let item_set: HashSet<&str> = itf.iter().map(String::as_str).collect();
        let mut out: Vec<&str> = uf
            .iter()
            .map(String::as_str)
            .filter(|f| item_set.contains(f))
            .collect();
        let shared: HashSet<&str> = out.iter().copied().collect();
        let mut rest_seen: HashSet<&str> = HashSet::new();
        for f in uf.iter().chain(itf.iter()).map(String::as_str) {
            if (repeat_shared || !shared.contains(f)) && rest_seen.insert(f) {
                out.push(f);
            }
        }
        out
    }
}
