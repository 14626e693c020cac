//! A built-in synthetic hotel-review dataset for the default run and the tests, with structure a
//! personalized model can learn and a non-personalized one cannot:
//!
//! - each user cares about a few aspects (features) from a vocabulary of 24 English hotel words,
//!   with weights; each user also has a rating bias (generous or strict);
//! - each item has a few aspects, each with a quality in [-1, 1] around an item-wide level;
//! - a review exists only for a (user, item) pair that shares at least one aspect; its rating is
//!   `3 + 2 * (user-weighted mean quality of the shared aspects) + user bias + noise`, rounded and
//!   clipped to 1..5;
//! - its explanation mentions a shared aspect (one the USER cares about and the ITEM has, drawn by
//!   the user's weights) with an adjective whose sentiment follows the rating (>= 4 positive,
//!   <= 2 negative, 3 neutral), from a small grammar: "the breakfast was delicious",
//!   "friendly staff", "great location and friendly staff", ...
//!
//! So the feature (FMR) and the sentiment (BLEU) of an explanation depend on the (user, item)
//! pair: a model that reads the prompts can score well above one that ignores them (always
//! saying the most common sentence gives FMR around 1/24).
//!
//! Everything is drawn from one seeded ChaCha8 stream with plain arithmetic (no transcendental
//! functions), so the same config gives the same dataset bits on every platform.

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::dataset::{Dataset, RawReview};
use super::jsonl::{random_split, shuffle};

/// The aspect vocabulary: (feature, positive adjectives, negative adjectives). Each word is a
/// single common English word so the tiny model's tokenizer sees few BPE pieces.
pub const FEATURES: [(&str, [&str; 2], [&str; 2]); 24] = [
    ("room", ["spacious", "comfortable"], ["small", "dirty"]),
    ("staff", ["friendly", "helpful"], ["rude", "unhelpful"]),
    ("breakfast", ["delicious", "excellent"], ["bland", "poor"]),
    ("location", ["great", "convenient"], ["noisy", "remote"]),
    ("pool", ["lovely", "clean"], ["crowded", "cold"]),
    ("bed", ["comfortable", "huge"], ["hard", "uncomfortable"]),
    ("bathroom", ["clean", "modern"], ["tiny", "dirty"]),
    ("service", ["excellent", "quick"], ["slow", "poor"]),
    (
        "view",
        ["stunning", "beautiful"],
        ["disappointing", "limited"],
    ),
    ("price", ["reasonable", "fair"], ["expensive", "high"]),
    (
        "restaurant",
        ["excellent", "lovely"],
        ["overpriced", "mediocre"],
    ),
    ("bar", ["lively", "nice"], ["loud", "expensive"]),
    ("wifi", ["fast", "free"], ["slow", "unreliable"]),
    ("parking", ["easy", "free"], ["expensive", "difficult"]),
    ("lobby", ["elegant", "beautiful"], ["dark", "crowded"]),
    ("shower", ["hot", "powerful"], ["weak", "cold"]),
    ("beach", ["beautiful", "quiet"], ["dirty", "crowded"]),
    ("food", ["delicious", "tasty"], ["bland", "cold"]),
    ("coffee", ["great", "fresh"], ["weak", "bitter"]),
    ("spa", ["relaxing", "wonderful"], ["tiny", "overpriced"]),
    ("gym", ["modern", "spacious"], ["small", "outdated"]),
    ("balcony", ["large", "private"], ["tiny", "noisy"]),
    ("neighborhood", ["safe", "charming"], ["sketchy", "noisy"]),
    ("decor", ["modern", "stylish"], ["dated", "tired"]),
];

/// Adjectives for a 3-star (neutral) explanation.
pub const NEUTRAL_ADJECTIVES: [&str; 4] = ["okay", "average", "fine", "decent"];

/// Sizes and seed of the synthetic dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticConfig {
    pub n_users: usize,
    pub n_items: usize,
    pub n_reviews: usize,
    /// Aspects drawn from the first `n_features` entries of [`FEATURES`] (at most 24).
    pub n_features: usize,
    pub features_per_user: usize,
    pub features_per_item: usize,
    /// Scale of the rating noise (sum of three uniforms, std = 0.5 * scale).
    pub rating_noise: f32,
    pub seed: u64,
}

impl Default for SyntheticConfig {
    /// 100 users x 120 items, 6000 reviews (4800 train / 600 / 600): with batch 128 that is
    /// 38 training steps per epoch, so a 2-layer n_embd-64 GPT-2 with the full 50260-token head
    /// trains an epoch in well under a minute on 2 CPU cores. Users care about 3 of 24 aspects
    /// and items have 6, so about 60% of the 12000 pairs share an aspect (enough eligible pairs
    /// for 6000 distinct reviews) and most pairs share exactly one, which makes the feature
    /// predictable from the pair.
    fn default() -> Self {
        Self {
            n_users: 100,
            n_items: 120,
            n_reviews: 6000,
            n_features: FEATURES.len(),
            features_per_user: 3,
            features_per_item: 6,
            rating_noise: 0.5,
            seed: 42,
        }
    }
}

/// The latent structure behind a generated dataset, indexed like the dataset's id maps.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticTruth {
    /// Per dataset user index: the aspects the user cares about, with weights (sum 1).
    pub user_prefs: Vec<Vec<(String, f32)>>,
    /// Per dataset item index: the item's aspects with their quality in [-1, 1].
    pub item_aspects: Vec<Vec<(String, f32)>>,
}

struct User {
    prefs: Vec<(usize, f32)>,
    bias: f32,
}

struct Item {
    aspects: Vec<(usize, f32)>,
}

/// Generates the dataset (seeded 8:1:1 split, every user and item in train).
pub fn generate(cfg: &SyntheticConfig) -> Result<Dataset> {
    Ok(generate_with_truth(cfg)?.0)
}

/// [`generate`] plus the latent preferences and qualities (for tests and analysis).
pub fn generate_with_truth(cfg: &SyntheticConfig) -> Result<(Dataset, SyntheticTruth)> {
    check(cfg)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let users: Vec<User> = (0..cfg.n_users)
        .map(|_| {
            let fs = pick_distinct(&mut rng, cfg.n_features, cfg.features_per_user);
            let raw: Vec<f32> = fs.iter().map(|_| rng.gen_range(0.5f32..1.5)).collect();
            let total: f32 = raw.iter().sum();
            let bias = rng.gen_range(-0.5f32..0.5);
            User {
                prefs: fs.into_iter().zip(raw.iter().map(|w| w / total)).collect(),
                bias,
            }
        })
        .collect();
    let items: Vec<Item> = (0..cfg.n_items)
        .map(|_| {
            let level = rng.gen_range(-0.1f32..0.8);
            let fs = pick_distinct(&mut rng, cfg.n_features, cfg.features_per_item);
            let aspects = fs
                .into_iter()
                .map(|f| (f, (level + rng.gen_range(-0.6f32..0.6)).clamp(-1.0, 1.0)))
                .collect();
            Item { aspects }
        })
        .collect();

    // All pairs that share an aspect, in a seeded random order; the first n_reviews are used.
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for (u, user) in users.iter().enumerate() {
        for (i, item) in items.iter().enumerate() {
            if user
                .prefs
                .iter()
                .any(|(f, _)| item.aspects.iter().any(|(g, _)| g == f))
            {
                pairs.push((u, i));
            }
        }
    }
    if pairs.len() < cfg.n_reviews {
        bail!(
            "synthetic dataset: only {} (user, item) pairs share an aspect, fewer than the {} reviews asked; raise n_users/n_items or features_per_user/features_per_item",
            pairs.len(),
            cfg.n_reviews
        );
    }
    shuffle(&mut pairs, &mut rng);
    pairs.truncate(cfg.n_reviews);

    let raw: Vec<RawReview> = pairs
        .iter()
        .map(|&(u, i)| review(&mut rng, cfg, u, &users[u], i, &items[i]))
        .collect();
    let splits = random_split(&raw, cfg.seed.wrapping_add(0x5eed));
    let source = format!(
        "synthetic(users={}, items={}, reviews={}, seed={})",
        cfg.n_users, cfg.n_items, cfg.n_reviews, cfg.seed
    );
    let ds = Dataset::from_raw(&source, raw, splits, [source.as_str(); 3])?;

    let name = |f: usize| FEATURES[f].0.to_string();
    let mut user_prefs = vec![Vec::new(); ds.n_users()];
    for (u, user) in users.iter().enumerate() {
        if let Some(k) = ds.users.get(&user_id(u)) {
            user_prefs[k as usize] = user.prefs.iter().map(|&(f, w)| (name(f), w)).collect();
        }
    }
    let mut item_aspects = vec![Vec::new(); ds.n_items()];
    for (i, item) in items.iter().enumerate() {
        if let Some(k) = ds.items.get(&item_id(i)) {
            item_aspects[k as usize] = item.aspects.iter().map(|&(f, q)| (name(f), q)).collect();
        }
    }
    Ok((
        ds,
        SyntheticTruth {
            user_prefs,
            item_aspects,
        },
    ))
}

/// Largest synthetic user or item count.
pub const MAX_ENTITIES: usize = 1_000_000;
/// Largest synthetic review count (the largest real dataset, Yelp, has 1.29M).
pub const MAX_REVIEWS: usize = 5_000_000;
/// Largest users x items product (the generator scans every pair).
pub const MAX_PAIRS: usize = 20_000_000;

fn check(cfg: &SyntheticConfig) -> Result<()> {
    if cfg.n_users == 0 || cfg.n_items == 0 || cfg.n_reviews == 0 {
        bail!("synthetic dataset: n_users, n_items and n_reviews must be positive");
    }
    // The generator visits every (user, item) pair and keeps every review in memory: bound the
    // sizes before allocating anything (the real datasets have at most ~1.3M reviews).
    for (name, v, max) in [
        ("n_users (--synthetic-users)", cfg.n_users, MAX_ENTITIES),
        ("n_items (--synthetic-items)", cfg.n_items, MAX_ENTITIES),
        (
            "n_reviews (--synthetic-reviews)",
            cfg.n_reviews,
            MAX_REVIEWS,
        ),
    ] {
        if v > max {
            bail!("synthetic dataset: {name} is {v}, at most {max} are supported");
        }
    }
    if cfg.n_users.saturating_mul(cfg.n_items) > MAX_PAIRS {
        bail!(
            "synthetic dataset: {} users x {} items = {} pairs to consider, at most {MAX_PAIRS} \
             are supported; use fewer users or items",
            cfg.n_users,
            cfg.n_items,
            cfg.n_users.saturating_mul(cfg.n_items)
        );
    }
    if cfg.n_features == 0 || cfg.n_features > FEATURES.len() {
        bail!(
            "synthetic dataset: n_features must be in 1..={}, got {}",
            FEATURES.len(),
            cfg.n_features
        );
    }
    if cfg.features_per_user == 0
        || cfg.features_per_item == 0
        || cfg.features_per_user > cfg.n_features
        || cfg.features_per_item > cfg.n_features
    {
        bail!(
            "synthetic dataset: features_per_user ({}) and features_per_item ({}) must be in 1..=n_features ({})",
            cfg.features_per_user,
            cfg.features_per_item,
            cfg.n_features
        );
    }
    if !(cfg.rating_noise.is_finite() && cfg.rating_noise >= 0.0) {
        bail!("synthetic dataset: rating_noise must be a finite non-negative number");
    }
    Ok(())
}

fn user_id(u: usize) -> String {
    format!("U{u:04}")
}

fn item_id(i: usize) -> String {
    format!("I{i:04}")
}

/// `k` distinct values from `0..n` in draw order (partial Fisher-Yates).
fn pick_distinct(rng: &mut ChaCha8Rng, n: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    for j in 0..k {
        let r = rng.gen_range(j..n);
        all.swap(j, r);
    }
    all.truncate(k);
    all
}

fn review(
    rng: &mut ChaCha8Rng,
    cfg: &SyntheticConfig,
    u: usize,
    user: &User,
    i: usize,
    item: &Item,
) -> RawReview {
    // Shared aspects in the user's order, with the user's weight and the item's quality.
    let shared: Vec<(usize, f32, f32)> = user
        .prefs
        .iter()
        .filter_map(|&(f, w)| {
            item.aspects
                .iter()
                .find(|(g, _)| *g == f)
                .map(|&(_, q)| (f, w, q))
        })
        .collect();
    let wsum: f32 = shared.iter().map(|s| s.1).sum();
    let score: f32 = shared.iter().map(|s| s.1 * s.2).sum::<f32>() / wsum;
    let noise = cfg.rating_noise * (rng.gen::<f32>() + rng.gen::<f32>() + rng.gen::<f32>() - 1.5);
    let rating = (3.0 + 2.0 * score + user.bias + noise)
        .round()
        .clamp(1.0, 5.0);

    // The mentioned aspect: drawn among the shared ones by the user's weights.
    let mut x = rng.gen::<f32>() * wsum;
    let mut main = 0;
    for (k, s) in shared.iter().enumerate() {
        main = k;
        if x < s.1 {
            break;
        }
        x -= s.1;
    }
    let f = shared[main].0;
    let sentiment: i32 = if rating >= 4.0 {
        1
    } else if rating <= 2.0 {
        -1
    } else {
        0
    };
    let adj_of = |rng: &mut ChaCha8Rng, f: usize| -> &'static str {
        let (_, pos, neg) = FEATURES[f];
        match sentiment {
            1 => pos[rng.gen_range(0..2)],
            -1 => neg[rng.gen_range(0..2)],
            _ => NEUTRAL_ADJECTIVES[rng.gen_range(0..NEUTRAL_ADJECTIVES.len())],
        }
    };
    let a = adj_of(rng, f);
    let fname = FEATURES[f].0;
    let n_templates = if sentiment == 0 { 2 } else { 5 };
    let sentence = match rng.gen_range(0..n_templates) {
        0 => format!("the {fname} was {a}"),
        1 => format!("the {fname} is {a}"),
        2 => format!("{a} {fname}"),
        3 if sentiment > 0 => format!("the {fname} was really {a}"),
        3 => format!("the {fname} was very {a}"),
        _ => {
            // Two aspects when the pair shares another one; else the plain form.
            match shared.iter().find(|s| s.0 != f) {
                Some(&(g, _, _)) => {
                    let b = adj_of(rng, g);
                    format!("{a} {fname} and {b} {}", FEATURES[g].0)
                }
                None => format!("the {fname} was {a}"),
            }
        }
    };
    RawReview {
        user: user_id(u),
        item: item_id(i),
        rating,
        feature: fname.to_string(),
        adjective: a.to_string(),
        sentence,
        sentiment,
    }
}
