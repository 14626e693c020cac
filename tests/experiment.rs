//! The paper's experiments end to end through the binary, on tiny synthetic data with two split
//! folders and one epoch per stage: `experiment splits|strategies|lambda|sizes` write their runs,
//! tables, figures and report, skip finished runs and resume interrupted ones; `score` reproduces
//! `evaluate`'s numbers exactly and names bad lines; `attention` draws a labelled heatmap whose
//! host-side forward agrees with the backend's generation.

use std::path::{Path, PathBuf};
use std::process::Command;

use pepler_cuda::backend::cpu::CpuBackend;
use pepler_cuda::data::{synthetic, SyntheticConfig};
use pepler_cuda::experiment::attention::HostGpt2;
use pepler_cuda::experiment::plot::decode_png;
use pepler_cuda::generate::{greedy, GenPrompt};
use pepler_cuda::model::pepler::Pepler;
use pepler_cuda::train::checkpoint;

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_pepler-cuda"))
        .args(args)
        .output()
        .expect("the binary runs");
    let o = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!o.stderr.contains("panicked"), "panic: {}", o.stderr);
    o
}

fn run_ok(args: &[&str]) -> Output {
    let o = run(args);
    assert_eq!(o.code, 0, "{args:?} failed:\n{}\n{}", o.stdout, o.stderr);
    o
}

/// Tiny runs: one epoch per stage, small batches, the CPU backend with 2 threads.
const FAST: &[&str] = &[
    "--batch-size",
    "32",
    "--epochs",
    "1",
    "--device",
    "cpu",
    "--threads",
    "2",
];

/// A JSON-lines copy of a small synthetic data set and an index root with split folders `1` and
/// `2` (different seeded 8:1:1 permutations), as the released data sets are laid out.
fn dataset_with_splits(dir: &Path) -> (PathBuf, PathBuf) {
    let ds = synthetic::generate(&SyntheticConfig {
        n_users: 16,
        n_items: 16,
        n_reviews: 120,
        seed: 42,
        ..SyntheticConfig::default()
    })
    .unwrap();
    let mut lines = String::new();
    for r in &ds.reviews {
        let v = serde_json::json!({
            "user": ds.users.name(r.user).unwrap(),
            "item": ds.items.name(r.item).unwrap(),
            "rating": r.rating,
            "template": [r.feature, r.adjective, r.sentence, r.sentiment],
        });
        lines.push_str(&v.to_string());
        lines.push('\n');
    }
    let data = dir.join("reviews.jsonl");
    std::fs::write(&data, lines).unwrap();
    let root = dir.join("splits");
    let n = ds.reviews.len();
    for (k, seed) in [(1, 11u64), (2, 23u64)] {
        let mut idx: Vec<usize> = (0..n).collect();
        // A seeded Fisher-Yates shuffle (an LCG is enough for a test split).
        let mut s = seed;
        for i in (1..n).rev() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            idx.swap(i, (s >> 33) as usize % (i + 1));
        }
        let d = root.join(k.to_string());
        std::fs::create_dir_all(&d).unwrap();
        let join = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        std::fs::write(d.join("train.index"), join(&idx[..96])).unwrap();
        std::fs::write(d.join("validation.index"), join(&idx[96..108])).unwrap();
        std::fs::write(d.join("test.index"), join(&idx[108..])).unwrap();
    }
    (data, root)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&read(p)).unwrap()
}

/// A PNG that decodes, has the given size range and is not blank.
fn assert_png(p: &Path, min_w: u32) {
    let bytes = std::fs::read(p).unwrap();
    let (w, h, rgb) = decode_png(&bytes).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
    assert!(w >= min_w && h >= 200, "{}: {w}x{h}", p.display());
    let distinct: std::collections::HashSet<&[u8]> = rgb.chunks(3).collect();
    assert!(
        distinct.len() > 20,
        "{}: only {} colours",
        p.display(),
        distinct.len()
    );
}

#[test]
fn splits_experiment_aggregates_skips_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, root) = dataset_with_splits(tmp.path());
    let exp = tmp.path().join("exp");
    let mut args: Vec<String> = [
        "experiment",
        "splits",
        "--variants",
        "pepler,pepler-mf",
        "--data",
        data.to_str().unwrap(),
        "--index-root",
        root.to_str().unwrap(),
        "--out",
        exp.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(FAST.iter().map(|s| s.to_string()));
    let with = |extra: &[&str]| -> Vec<String> {
        let mut a = args.clone();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let call = |a: &[String]| run_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // 1. One run only.
    let o = call(&with(&["--max-runs", "1"]));
    assert!(o.stdout.contains("1 of 4 runs finished"), "{}", o.stdout);
    assert!(exp.join("pepler/split-1/run.json").exists());
    assert!(!exp.join("pepler/split-2/run.json").exists());

    // 2. An interrupted run: the next run stops after one epoch, leaving its resume state.
    let o = call(&with(&["--stop-after", "1"]));
    assert!(
        o.stdout.contains("finished earlier, skipped"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("not complete"), "{}", o.stdout);
    assert!(checkpoint::has_state(&exp.join("pepler/split-2")));
    assert!(!exp.join("pepler/split-2/run.json").exists());

    // 3. The rest: split 2 resumes, the MF variant trains on both splits.
    let o = call(&args);
    assert!(o.stdout.contains("resuming"), "{}", o.stdout);
    assert!(
        o.stdout.contains("4 of 4 runs finished (3 now, 1 earlier)"),
        "{}",
        o.stdout
    );

    // A resumed grid run gives the same numbers as an uninterrupted `train` of the same options.
    let direct = tmp.path().join("direct");
    let split2 = root.join("2");
    let mut targs = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--index-dir",
        split2.to_str().unwrap(),
        "--out",
        direct.to_str().unwrap(),
    ];
    targs.extend_from_slice(FAST);
    run_ok(&targs);
    assert_eq!(
        read(&direct.join("metrics.json")),
        read(&exp.join("pepler/split-2/metrics.json")),
        "a resumed run must match an uninterrupted one"
    );

    // The table: two rows, mean ± std over 2 splits, RMSE only where there is a rating head.
    let md = read(&exp.join("table.md"));
    assert!(
        md.contains("| PEPLER | 2 |") && md.contains("| PEPLER (MF) | 2 |"),
        "{md}"
    );
    assert!(
        md.contains(" ± ") && md.contains("RMSE") && md.contains("B4"),
        "{md}"
    );
    let t = json(&exp.join("table.json"));
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let b4 = &rows[0]["metrics"]["bleu_4"];
    let vals: Vec<f64> = b4["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(vals.len(), 2);
    let mean = (vals[0] + vals[1]) / 2.0;
    assert!((b4["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    let std = ((vals[0] - mean).powi(2) + (vals[1] - mean).powi(2)).sqrt(); // n - 1 = 1
    assert!((b4["std"].as_f64().unwrap() - std).abs() < 1e-9);
    assert!(rows[0]["metrics"].get("rmse").is_none());
    let rmse = rows[1]["metrics"]["rmse"]["mean"].as_f64().unwrap();
    assert!(rmse > 0.0 && rmse < 5.0, "RMSE {rmse}");
    for (spec, row) in ["pepler", "pepler-mf"].iter().zip(rows) {
        let fmr = row["metrics"]["fmr"]["mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&fmr), "{spec}: FMR {fmr}");
    }
    let csv = read(&exp.join("table.csv"));
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        csv.starts_with("variant,x,x_name,splits,fmr_mean,fmr_std"),
        "{csv}"
    );
    assert_eq!(read(&exp.join("results.csv")).lines().count(), 5);
    let report = read(&exp.join("report.md"));
    assert!(
        report.contains("experiment splits") && report.contains("--variants"),
        "{report}"
    );
    assert!(report.contains("4 of 4 finished"), "{report}");
    for run in [
        "pepler/split-1",
        "pepler/split-2",
        "pepler-mf/split-1",
        "pepler-mf/split-2",
    ] {
        assert_png(&exp.join(run).join("loss_curve.png"), 600);
    }

    // 4. Everything finished: a re-run trains nothing and leaves the numbers as they were.
    let before = read(&exp.join("table.json"));
    let o = call(&args);
    assert_eq!(
        o.stdout.matches("finished earlier, skipped").count(),
        4,
        "{}",
        o.stdout
    );
    assert_eq!(read(&exp.join("table.json")), before);

    // Changed options for a finished run are an error, not a silent reuse.
    let o = run(&with(&["--seed", "7"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("other options"), "{}", o.stderr);
}

#[test]
fn sweeps_write_results_and_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, root) = dataset_with_splits(tmp.path());
    let (data, root) = (data.to_str().unwrap(), root.to_str().unwrap());

    // Fig. 6: two strategies x two learning rates on one split.
    let exp = tmp.path().join("strategies");
    let mut a = vec![
        "experiment",
        "strategies",
        "--strategies",
        "full,prompt-only",
        "--lrs",
        "1e-3,1e-2",
        "--data",
        data,
        "--index-dir",
        "",
        "--out",
        exp.to_str().unwrap(),
    ];
    let split1 = format!("{root}/1");
    a[9] = &split1;
    a.extend_from_slice(FAST);
    run_ok(&a);
    let res = read(&exp.join("results.csv"));
    assert_eq!(res.lines().count(), 5, "{res}");
    assert!(exp.join("full/lr-1e-3/split-main/run.json").exists());
    let svg = read(&exp.join("bleu_4.svg"));
    for label in [
        "learning rate",
        "BLEU-4",
        "prompt+LM fine-tuning",
        "fixed-LM prompt tuning",
    ] {
        assert!(svg.contains(label), "bleu_4.svg lacks {label}");
    }
    assert_png(&exp.join("bleu_4.png"), 700);
    let report = read(&exp.join("report.md"));
    assert!(report.contains("![BLEU-4](bleu_4.png)"), "{report}");

    // Fig. 7: MF over two λ on both splits: BLEU-4 and RMSE with error bars over the splits.
    let exp = tmp.path().join("lambda");
    let mut a = vec![
        "experiment",
        "lambda",
        "--recs",
        "mf",
        "--lambdas",
        "0.1,1",
        "--data",
        data,
        "--index-root",
        root,
        "--out",
        exp.to_str().unwrap(),
    ];
    a.extend_from_slice(FAST);
    run_ok(&a);
    assert!(exp.join("mf/lambda-1e-1/split-2/run.json").exists());
    for fig in ["bleu_4", "rmse"] {
        let svg = read(&exp.join(format!("{fig}.svg")));
        assert!(svg.contains("mean ± std over 2 splits"), "{fig}.svg");
        assert!(svg.contains("regularisation coefficient"), "{fig}.svg");
        assert_png(&exp.join(format!("{fig}.png")), 700);
    }
    let sum = read(&exp.join("table.csv"));
    assert_eq!(sum.lines().count(), 3, "{sum}");

    // Fig. 9: sizes (the tiny shape here; the GPT-2 shapes are checked by unit tests).
    let exp = tmp.path().join("sizes");
    let mut a = vec![
        "experiment",
        "sizes",
        "--sizes",
        "tiny",
        "--synthetic-users",
        "16",
        "--synthetic-items",
        "16",
        "--synthetic-reviews",
        "120",
        "--out",
        exp.to_str().unwrap(),
    ];
    a.extend_from_slice(FAST);
    let o = run_ok(&a);
    assert!(o.stdout.contains("RANDOMLY INITIALISED"), "{}", o.stdout);
    assert!(exp.join("tiny/split-main/run.json").exists());
    assert!(read(&exp.join("bleu_4.svg")).contains("GPT-2 size"));
    let o = run(&["experiment", "sizes", "--sizes", "tiny", "--size", "small"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("--sizes NAME[=DIR]"), "{}", o.stderr);
    let o = run(&["experiment", "sizes", "--sizes", "tiny,huge"]);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("unknown model size `huge`"),
        "{}",
        o.stderr
    );
}

#[test]
fn score_reproduces_evaluate_and_attention_draws_the_map() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let mut a = vec![
        "train",
        "--rec",
        "mf",
        "--synthetic-users",
        "16",
        "--synthetic-items",
        "16",
        "--synthetic-reviews",
        "120",
        "--out",
        run_dir.to_str().unwrap(),
    ];
    a.extend_from_slice(FAST);
    run_ok(&a);

    // score on the run's own generated.jsonl: exactly evaluate's metrics.json.
    let out = tmp.path().join("scored");
    let gen = run_dir.join("generated.jsonl");
    let o = run_ok(&[
        "score",
        "--generated",
        gen.to_str().unwrap(),
        "--run",
        run_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        o.stdout.contains("BLEU-4") && o.stdout.contains("RMSE"),
        "{}",
        o.stdout
    );
    let evaluated = read(&run_dir.join("metrics.json"));
    assert_eq!(read(&out.join("metrics.json")), evaluated);
    assert!(json(&out.join("metrics.json"))["rmse"].as_f64().is_some());

    // The same with an explicit feature list and rating range.
    let ds = synthetic::generate(&SyntheticConfig {
        n_users: 16,
        n_items: 16,
        n_reviews: 120,
        seed: 42,
        ..SyntheticConfig::default()
    })
    .unwrap();
    let feats = tmp.path().join("features.txt");
    std::fs::write(&feats, ds.features.join("\n")).unwrap();
    let range = format!("{},{}", ds.min_rating, ds.max_rating);
    let out2 = tmp.path().join("scored2");
    run_ok(&[
        "score",
        "--generated",
        gen.to_str().unwrap(),
        "--features",
        feats.to_str().unwrap(),
        "--rating-range",
        &range,
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert_eq!(read(&out2.join("metrics.json")), evaluated);

    // A malformed line is named by its number.
    let bad = tmp.path().join("bad.jsonl");
    let first = read(&gen).lines().next().unwrap().to_string();
    std::fs::write(&bad, format!("{first}\n{{\"reference\": \"x\"}}\n")).unwrap();
    let o = run(&[
        "score",
        "--generated",
        bad.to_str().unwrap(),
        "--features",
        feats.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("line 2") && o.stderr.contains("generated"),
        "{}",
        o.stderr
    );

    // The host forward behind the heatmap agrees with the backend: its next-token argmax
    // reproduces greedy generation, and each attention row is a causal distribution.
    let (params, _) = checkpoint::load_model(&run_dir).unwrap();
    let cfg = params.config().clone();
    let model = Pepler::new(CpuBackend::new(), &params).unwrap();
    let host = HostGpt2::new(&params).unwrap();
    for (u, i) in [(0u32, 1u32), (3, 5)] {
        let gen = greedy(
            &model,
            GenPrompt::Continuous {
                users: &[u],
                items: &[i],
            },
            12,
        )
        .unwrap()
        .pop()
        .unwrap();
        let mut toks = vec![cfg.bos_id];
        toks.extend_from_slice(&gen);
        let fwd = host.forward(u, i, &toks).unwrap();
        let logits = host.logits(&fwd).unwrap();
        let v = cfg.vocab_size;
        for (k, &t) in gen.iter().enumerate() {
            let row = &logits[(2 + k) * v..(3 + k) * v];
            let arg = (0..v).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            assert_eq!(arg as u32, t, "pair ({u},{i}) token {k}");
        }
        let l = fwd.len;
        let att = fwd.att.last().unwrap();
        for h in 0..cfg.n_head {
            for q in 0..l {
                let row = &att[(h * l + q) * l..(h * l + q + 1) * l];
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                assert!(row[q + 1..].iter().all(|&x| x == 0.0), "causal");
            }
        }
    }

    // `attention --compare-init`: both panels, labelled axes, a colour bar, PNG and SVG.
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let (user, item) = (
        first["user"].as_str().unwrap(),
        first["item"].as_str().unwrap(),
    );
    let maps = tmp.path().join("maps");
    let o = run_ok(&[
        "attention",
        "--run",
        run_dir.to_str().unwrap(),
        "--user",
        user,
        "--item",
        item,
        "--compare-init",
        "--out",
        maps.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(o.stdout.contains("before training:") && o.stdout.contains("after training:"));
    let svg = read(&maps.join("attention.svg"));
    for label in [
        "(a) before training",
        "(b) after training",
        &format!("user {user}"),
        &format!("item {item}"),
        "&lt;bos&gt;",
        "attention weight",
        "query (attending token)",
        "key (attended-to token)",
    ] {
        assert!(svg.contains(label), "attention.svg lacks {label}");
    }
    assert_png(&maps.join("attention.png"), 600);
    let j = json(&maps.join("attention.json"));
    let panels = j["panels"].as_array().unwrap();
    assert_eq!(panels.len(), 2);
    for p in panels {
        let n = p["labels"].as_array().unwrap().len();
        assert_eq!(p["weights"].as_array().unwrap().len(), n * n);
        assert_eq!(p["labels"][2], "<bos>");
    }
    assert_eq!(j["layer"], cfg.n_layer - 1);

    // Bad requests are errors that say what is wrong.
    let o = run(&[
        "attention",
        "--run",
        run_dir.to_str().unwrap(),
        "--user",
        "nobody",
        "--item",
        item,
        "--device",
        "cpu",
    ]);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("unknown user id \"nobody\""),
        "{}",
        o.stderr
    );
    let o = run(&[
        "attention",
        "--run",
        run_dir.to_str().unwrap(),
        "--user",
        user,
        "--item",
        item,
        "--head",
        "9",
        "--device",
        "cpu",
        "--out",
        maps.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("--head 9"), "{}", o.stderr);
}

#[test]
fn help_explains_every_option_of_the_new_commands() {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let explained = |help: &str| {
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("--") {
                // clap puts the explanation after the flag (short help) or on the next line.
                let same_line = line.trim().contains("  ");
                let next = lines.get(i + 1).copied().unwrap_or("");
                assert!(
                    same_line || (!next.trim().is_empty() && indent(next) > indent(line)),
                    "no explanation for `{}`",
                    line.trim()
                );
            }
        }
    };
    for (sub, flags) in [
        (
            "splits",
            vec![
                "--variants",
                "--index-root",
                "--splits",
                "--max-runs",
                "--stop-after",
            ],
        ),
        (
            "strategies",
            vec!["--strategies", "--lrs", "--out", "--epochs"],
        ),
        ("lambda", vec!["--recs", "--lambdas", "--device"]),
        ("sizes", vec!["--sizes", "--model", "--size"]),
    ] {
        let h = run_ok(&["experiment", sub, "--help"]).stdout;
        for f in flags {
            assert!(h.contains(f), "experiment {sub} --help lacks {f}");
        }
        explained(&h);
    }
    let h = run_ok(&["attention", "--help"]).stdout;
    for f in [
        "--run",
        "--user",
        "--item",
        "--layer",
        "--head",
        "--compare-init",
        "--out",
    ] {
        assert!(h.contains(f), "attention --help lacks {f}");
    }
    explained(&h);
    let h = run_ok(&["score", "--help"]).stdout;
    for f in [
        "--generated",
        "--features",
        "--data",
        "--run",
        "--rating-range",
        "--out",
    ] {
        assert!(h.contains(f), "score --help lacks {f}");
    }
    explained(&h);
}
