//! Cost of the evaluation metrics at the original's scale (about 100k test records for the largest
//! data set). DIV is the one the original marks "time-consuming" (O(n^2) pairwise set
//! intersections); ours counts per-feature occurrences. The naive form runs on a 5k subset and
//! the ratio fast/naive on that subset is printed, plus the naive time extrapolated to 100k
//! (it scales with n^2).
//!
//! `cargo bench --bench metrics`

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pepler_cuda::metrics::{evaluate_all, features, EvalInputs, FeatureIndex, RatingInputs};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N: usize = 100_000;
const SUBSET: usize = 5_000;
/// Roughly TripAdvisor's feature-set size.
const N_FEATURES: u32 = 5_000;

/// Detected-feature sets shaped like real output: 0..=3 features per text, skewed to frequent
/// features (a few features such as "room" and "staff" dominate).
fn feature_sets(n: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let k = rng.gen_range(0..=3);
            let mut s: Vec<u32> = (0..k)
                .map(|_| {
                    let u: f64 = rng.gen();
                    ((u * u * u) * N_FEATURES as f64) as u32
                })
                .collect();
            s.sort_unstable();
            s.dedup();
            s
        })
        .collect()
}

const WORDS: &[&str] = &[
    "the",
    "room",
    "was",
    "clean",
    "staff",
    "friendly",
    "location",
    "great",
    "breakfast",
    "good",
    "bed",
    "comfortable",
    "pool",
    "view",
    "and",
    "very",
    "a",
    "is",
    ",",
    ".",
    "!",
    "service",
];

fn sentences(n: usize, seed: u64) -> Vec<Vec<String>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.gen_range(3..=20);
            (0..len)
                .map(|_| WORDS[rng.gen_range(0..WORDS.len())].to_string())
                .collect()
        })
        .collect()
}

fn bench_div(c: &mut Criterion) {
    let sets = feature_sets(N, 1);
    let sub = &sets[..SUBSET];
    let mut g = c.benchmark_group("cpu");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("feature_diversity/100k", |b| {
        b.iter(|| features::feature_diversity(black_box(&sets)))
    });
    g.throughput(Throughput::Elements(SUBSET as u64));
    g.bench_function("feature_diversity/5k", |b| {
        b.iter(|| features::feature_diversity(black_box(sub)))
    });
    g.sample_size(10);
    g.bench_function("feature_diversity_naive/5k", |b| {
        b.iter(|| features::feature_diversity_naive(black_box(sub)))
    });
    g.finish();

    // The ratio, measured directly on the same subset (median of a few runs each).
    let time = |f: &dyn Fn() -> f64, reps: usize| {
        let mut t: Vec<f64> = (0..reps)
            .map(|_| {
                let s = Instant::now();
                black_box(f());
                s.elapsed().as_secs_f64()
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[reps / 2]
    };
    let fast = time(&|| features::feature_diversity(sub), 51);
    let naive = time(&|| features::feature_diversity_naive(sub), 5);
    let fast_full = time(&|| features::feature_diversity(&sets), 21);
    assert_eq!(
        features::feature_diversity(sub).to_bits(),
        features::feature_diversity_naive(sub).to_bits()
    );
    let scale = (N as f64 / SUBSET as f64).powi(2);
    eprintln!(
        "DIV on {SUBSET}: fast {:.3} ms, naive {:.1} ms, naive/fast = {:.0}x; \
         on {N}: fast {:.3} ms, naive extrapolated (n^2) {:.1} s",
        fast * 1e3,
        naive * 1e3,
        naive / fast,
        fast_full * 1e3,
        naive * scale
    );
}

fn bench_evaluate_all(c: &mut Criterion) {
    let refs = sentences(N, 2);
    let gens = sentences(N, 3);
    let index = FeatureIndex::new(["room", "staff", "location", "breakfast", "bed", "pool"]);
    let tf: Vec<String> = (0..N)
        .map(|i| ["room", "staff", "pool"][i % 3].into())
        .collect();
    let truth: Vec<f64> = (0..N).map(|i| (i % 5 + 1) as f64).collect();
    let pred: Vec<f64> = (0..N).map(|i| (i % 7) as f64 * 0.8).collect();
    let mut g = c.benchmark_group("cpu");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("evaluate_all/100k", |b| {
        b.iter(|| {
            evaluate_all(&EvalInputs {
                generated: &gens,
                references: &refs,
                test_features: &tf,
                features: &index,
                ratings: Some(RatingInputs {
                    truth: &truth,
                    predicted: &pred,
                    min_rating: 1.0,
                    max_rating: 5.0,
                }),
            })
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_div, bench_evaluate_all);
criterion_main!(benches);
