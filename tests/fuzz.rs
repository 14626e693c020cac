//! Property tests of every reader of outside input: no byte string can make one panic, overflow
//! the stack or allocate without bound — each input is either read or refused with an error.
//!
//! The corpus is `tests/fixtures/fuzz/<reader>/` (valid files, near-misses and known bombs such
//! as a 20 KB pickle nested 10,000 deep). Each seed is read as is, then mutated with a fixed
//! ChaCha stream (bit flips, interesting bytes and tokens, deletions, duplications, truncations,
//! splices of two seeds), so a failure reproduces exactly. `PEPLER_FUZZ_ITERS` sets the number
//! of mutants per reader (default 1500: a few seconds in all, so CI runs it on every push).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use pepler_cuda::data::RawReview;
use pepler_cuda::data::{parse_index, parse_jsonl, parse_reviews_pickle, random_split, Dataset};
use pepler_cuda::model::config::ModelConfig;
use pepler_cuda::model::params::{param_specs, ParamSet};
use pepler_cuda::model::safetensors_io::SafetensorsFile;
use pepler_cuda::tokenizer::Tokenizer;
use pepler_cuda::train::checkpoint;
use pepler_cuda::train::run_log::parse_records;
use pepler_cuda::train::session::parse_hf_config;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fuzz");

fn iterations() -> usize {
    std::env::var("PEPLER_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500)
}

fn corpus(reader: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(CORPUS).join(reader);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// Bytes and tokens that tend to reach error paths of text and binary formats.
const TOKENS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1e308",
    b"-1e309",
    b"NaN",
    b"18446744073709551616",
    b"4294967295",
    b"\"",
    b"\\",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b"null",
    b"\n",
    b"\r\n",
    b" ",
    b"\t",
    b"\xff\xfe",
    b"\x00",
    b"(",
    b"]",
    b"}q\x00",
    b"h\x00",
    b"a",
    b"e",
    b"u",
    b"2",
    b"\x80\x05",
    b"\x8e\xff\xff\xff\xff\xff\xff\xff\x7f",
];

fn mutate(rng: &mut ChaCha8Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let len = v.len();
        let at = if len == 0 { 0 } else { rng.gen_range(0..len) };
        match rng.gen_range(0..8) {
            0 if len > 0 => v[at] ^= 1 << rng.gen_range(0..8),
            1 if len > 0 => v[at] = [0u8, 0x7f, 0x80, 0xff, b'9', b'.'][rng.gen_range(0..6)],
            2 => {
                let t = TOKENS[rng.gen_range(0..TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            3 if len > 0 => {
                let end = (at + rng.gen_range(1..=16)).min(len);
                v.drain(at..end);
            }
            4 if len > 0 => {
                let end = (at + rng.gen_range(1..=64)).min(len);
                let chunk = v[at..end].to_vec();
                for _ in 0..rng.gen_range(1..=8) {
                    v.splice(at..at, chunk.iter().copied());
                }
            }
            5 => v.truncate(at),
            6 if !other.is_empty() => {
                let from = rng.gen_range(0..other.len());
                let end = (from + rng.gen_range(1..=128)).min(other.len());
                v.splice(at..at, other[from..end].iter().copied());
            }
            _ => {
                let n = rng.gen_range(1..=8);
                let noise: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                v.splice(at..at, noise);
            }
        }
    }
    v
}

/// Runs `read` on every seed and `iters` mutants; fails with the inputs that panicked.
fn fuzz(reader: &str, iters: usize, read: impl Fn(&[u8])) {
    let seeds = corpus(reader);
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed ^ reader.len() as u64);
    let mut panics: Vec<String> = Vec::new();
    let mut run = |what: String, input: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| read(input))).is_err() {
            let preview: String = String::from_utf8_lossy(&input[..input.len().min(200)]).into();
            panics.push(format!("{what} ({} bytes): {preview:?}", input.len()));
        }
    };
    for (name, bytes) in &seeds {
        run(format!("{reader}/{name}"), bytes);
    }
    for i in 0..iters {
        let (name, seed) = &seeds[rng.gen_range(0..seeds.len())];
        let other = &seeds[rng.gen_range(0..seeds.len())].1;
        let input = mutate(&mut rng, seed, other);
        run(format!("{reader} mutant {i} of {name}"), &input);
    }
    assert!(
        panics.is_empty(),
        "{} inputs panicked the {reader} reader:\n{}",
        panics.len(),
        panics.join("\n")
    );
}

fn raw(n: usize) -> Vec<RawReview> {
    (0..n)
        .map(|k| RawReview {
            user: format!("u{}", k % 3),
            item: format!("i{}", k % 4),
            rating: 3.0,
            feature: "room".into(),
            adjective: "clean".into(),
            sentence: "the room was clean".into(),
            sentiment: 1,
        })
        .collect()
}

#[test]
fn pickle_reader_never_panics() {
    fuzz("pickle", iterations(), |bytes| {
        if let Ok(reviews) = parse_reviews_pickle(bytes, Path::new("fuzz.pickle")) {
            let n = reviews.len();
            let splits = [vec![0], vec![1 % n.max(1)], vec![2 % n.max(1)]];
            let _ = Dataset::from_raw("fuzz", reviews, splits, ["a", "b", "c"]);
        }
    });
}

#[test]
fn pickle_bombs_are_refused_with_an_error() {
    for (name, bytes) in corpus("pickle") {
        let res = parse_reviews_pickle(&bytes, Path::new(&name));
        match name.as_str() {
            "deep_lists.pickle" | "deep_marks.pickle" => {
                let err = format!("{:#}", res.expect_err("refused"));
                assert!(err.contains("nested") && err.contains(&name), "{err}");
            }
            "memo_bomb.pickle" => {
                let err = format!("{:#}", res.expect_err("refused"));
                assert!(err.contains("decompression bomb"), "{err}");
            }
            "reviews.pickle" | "reviews_protocol2.pickle" => assert!(res.is_ok(), "{name}"),
            _ => {}
        }
    }
}

#[test]
fn jsonl_reader_never_panics() {
    fuzz("jsonl", iterations(), |bytes| {
        if let Ok(reviews) = parse_jsonl(bytes, "fuzz.jsonl") {
            let splits = random_split(&reviews, 1);
            let _ = Dataset::from_raw("fuzz", reviews, splits, ["a", "b", "c"]);
        }
    });
}

#[test]
fn split_index_reader_never_panics() {
    fuzz("index", iterations(), |bytes| {
        if let Ok(idx) = parse_index(bytes, "fuzz.index") {
            let _ = Dataset::from_raw("fuzz", raw(8), [idx, vec![7], vec![6]], ["a", "b", "c"]);
        }
    });
}

#[test]
fn safetensors_reader_never_panics() {
    let tiny = ModelConfig::tiny(2, 2);
    fuzz("safetensors", iterations(), |bytes| {
        if let Ok(f) = SafetensorsFile::from_bytes("fuzz.safetensors", bytes.to_vec()) {
            let _ = f.metadata();
            for name in f.names() {
                let _ = f.read_f32(&name, None);
                let _ = f.read_i64(&name);
                let _ = f.shape(&name);
            }
            let _ = ParamSet::from_safetensors(&f, &tiny, "");
            let _ = ParamSet::from_pretrained_gpt2_file(&f, &tiny, 1);
        }
    });
}

#[test]
fn config_json_reader_never_panics() {
    fuzz("config", iterations(), |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Ok(mc) = parse_hf_config(&text, 3, 4) {
            let total: usize = param_specs(&mc).iter().map(|s| s.numel()).sum();
            assert!(total > 0);
        }
    });
}

#[test]
fn tokenizer_json_reader_never_panics() {
    // Parsing a tokenizer is slower than the other readers: fewer mutants.
    fuzz("tokenizer", iterations() / 3, |bytes| {
        if let Ok(tok) = Tokenizer::from_json_bytes(bytes, "fuzz.json") {
            if let Ok(ids) = tok.encode("<bos> the room was clean , in there <eos>") {
                let _ = tok.decode(&ids, true);
            }
        }
    });
}

#[test]
fn run_sidecar_and_log_readers_never_panic() {
    fuzz("sidecar", iterations(), |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let _ = checkpoint::parse_sidecar(&text, "fuzz.json");
        let _ = parse_records(&text, "fuzz.jsonl");
    });
}

/// The whole checkpoint loader (`evaluate`'s and `--resume`'s entry): a real checkpoint of a
/// very small model, written by `save_model` with the corpus sidecar, then mutants of its header
/// (where the sidecar lives) and of the whole file, each loaded from a run directory.
#[test]
fn checkpoint_loader_never_panics() {
    let text = std::fs::read_to_string(Path::new(CORPUS).join("sidecar/state.json")).unwrap();
    let mut side = checkpoint::parse_sidecar(&text, "state.json").unwrap();
    let mut mc = side.model_config.clone();
    (
        mc.vocab_size,
        mc.n_positions,
        mc.n_embd,
        mc.n_layer,
        mc.n_head,
    ) = (16, 8, 8, 1, 2);
    (mc.bos_id, mc.eos_id, mc.pad_id) = (13, 14, 15);
    (mc.n_users, mc.n_items) = (2, 2);
    side.model_config = mc.clone();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    checkpoint::save_model(dir, &ParamSet::init(&mc, 1), &side).unwrap();
    let file = dir.join(checkpoint::MODEL_FILE);
    let original = std::fs::read(&file).unwrap();
    let (params, loaded) = checkpoint::load_model(dir).unwrap();
    assert_eq!(loaded, side);
    assert_eq!(params.config(), &mc);
    std::fs::remove_file(dir.join(checkpoint::MODEL_SIDECAR)).unwrap();

    let n = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let (header, data) = (&original[8..8 + n], &original[8 + n..]);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut panics = Vec::new();
    for i in 0..iterations() / 5 {
        let bytes = if i % 4 == 3 {
            mutate(&mut rng, &original, header)
        } else {
            // A consistent length field over a mutated header: the parser gets to the sidecar.
            let h = mutate(&mut rng, header, header);
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(&h);
            b.extend_from_slice(data);
            b
        };
        std::fs::write(&file, &bytes).unwrap();
        if catch_unwind(AssertUnwindSafe(|| checkpoint::load_model(dir))).is_err() {
            panics.push(format!(
                "mutant {i}: {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ));
        }
    }
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}
