//! End to end through the library: train -> checkpoint -> interrupt -> resume -> generate ->
//! evaluate on a tiny synthetic dataset, checking that the interrupted-and-resumed run ends with
//! exactly the bits of an uninterrupted one, and that the files and numbers are sane.

use std::path::Path;

use pepler_cuda::backend::cpu::CpuBackend;
use pepler_cuda::cli::backend::OnBackend;
use pepler_cuda::data::Split;
use pepler_cuda::model::config::{PromptKind, RecKind};
use pepler_cuda::model::params::ParamSet;
use pepler_cuda::pipeline::{EvaluateJob, TrainJob, TrainSummary};
use pepler_cuda::train::checkpoint;
use pepler_cuda::train::config::{DataSource, TrainConfig};
use pepler_cuda::train::run_log::RunLog;
use pepler_cuda::train::trainer::RunControl;

fn tiny_config() -> TrainConfig {
    TrainConfig {
        data: DataSource::Synthetic {
            users: 24,
            items: 24,
            reviews: 240,
            seed: 3,
        },
        batch_size: 32,
        epochs: 3,
        rec: RecKind::Mf,
        rec_lambda: 0.1,
        ..TrainConfig::defaults(PromptKind::Continuous)
    }
}

fn train(cfg: &TrainConfig, out: &Path, control: RunControl) -> TrainSummary {
    TrainJob {
        cfg: cfg.clone(),
        out_dir: out.to_path_buf(),
        control,
        evaluate: true,
    }
    .run(CpuBackend::new())
    .unwrap()
}

/// The epoch records without the wall-clock fields.
fn records(dir: &Path) -> Vec<(String, u32, u64, f64, f64, bool)> {
    RunLog::open(dir, true)
        .unwrap()
        .records()
        .iter()
        .map(|r| {
            (
                r.stage.clone(),
                r.epoch,
                r.global_step,
                r.train_loss,
                r.val_loss,
                r.improved,
            )
        })
        .collect()
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_and_files_are_sane() {
    let cfg = tiny_config();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));

    let full = train(&cfg, &a, RunControl::default());
    assert!(full.finished);
    let metrics = full.metrics.expect("train evaluates at the end");

    // Interrupt mid stage 1, exactly at the stage change, mid stage 2; then finish.
    let mut resume = false;
    for stop in [Some(2), Some(1), Some(1), None] {
        let part = train(
            &cfg,
            &b,
            RunControl {
                resume,
                stop_after_epochs: stop,
            },
        );
        assert_eq!(part.finished, stop.is_none());
        assert_eq!(part.metrics.is_some(), stop.is_none());
        assert!(b.join(checkpoint::STATE_FILE).exists());
        resume = true;
    }
    let resumed = train(
        &cfg,
        &b,
        RunControl {
            resume: true,
            stop_after_epochs: None,
        },
    );
    assert!(
        resumed.finished,
        "a finished run resumes straight to evaluation"
    );

    let pa = ParamSet::load(a.join(checkpoint::MODEL_FILE)).unwrap();
    let pb = ParamSet::load(b.join(checkpoint::MODEL_FILE)).unwrap();
    for ((sa, ta), (_, tb)) in pa.iter().zip(pb.iter()) {
        assert!(
            ta.data
                .iter()
                .zip(&tb.data)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{} differs between the uninterrupted and the resumed run",
            sa.name
        );
    }
    assert_eq!(records(&a), records(&b));
    assert_eq!(resumed.metrics.as_ref(), Some(&metrics));
    assert_eq!(resumed.test_loss, full.test_loss);

    // Files: 3 epochs per stage, a plot, one generated line per test record, metrics JSON.
    let recs = records(&a);
    assert_eq!(recs.len(), 6, "{recs:?}");
    assert_eq!(recs[0].0, "prompt");
    assert_eq!(recs[5].0, "full");
    let svg = std::fs::read_to_string(a.join(RunLog::PLOT_FILE)).unwrap();
    assert!(svg.contains("<svg"));
    let generated = std::fs::read_to_string(a.join("generated.jsonl")).unwrap();
    assert_eq!(generated.lines().count(), metrics.samples);
    let first: serde_json::Value = serde_json::from_str(generated.lines().next().unwrap()).unwrap();
    assert!(first["reference"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        first["predicted_rating"].is_number(),
        "MF head predicts ratings: {first}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json["samples"].as_u64(), Some(metrics.samples as u64));

    // Sane numbers: training lowered the loss; metrics in range.
    assert!(
        recs[5].4 < recs[0].4,
        "validation loss did not fall: {recs:?}"
    );
    for v in [metrics.fmr, metrics.fcr, metrics.usr] {
        assert!((0.0..=1.0).contains(&v), "{metrics:?}");
    }
    for v in [
        metrics.bleu_1,
        metrics.bleu_4,
        metrics.rouge_1_f,
        metrics.rouge_2_f,
    ] {
        assert!((0.0..=100.0).contains(&v), "{metrics:?}");
    }
    assert!(
        metrics.bleu_1 > 5.0,
        "a trained model shares words with the references: {metrics:?}"
    );
    let (rmse, mae) = (metrics.rmse.unwrap(), metrics.mae.unwrap());
    assert!(rmse >= mae && rmse <= 4.0, "{metrics:?}");

    // `evaluate` on the saved run reproduces train's numbers.
    let out = tmp.path().join("eval");
    let again = EvaluateJob {
        run_dir: a.clone(),
        split: Split::Test,
        out_dir: out.clone(),
        batch_size: 0,
    }
    .run(CpuBackend::new())
    .unwrap();
    assert_eq!(again, metrics);
    assert!(out.join("generated.jsonl").exists());
}

#[test]
fn resume_refuses_a_changed_configuration_and_a_missing_state() {
    let mut cfg = tiny_config();
    cfg.epochs = 1;
    cfg.strategy = pepler_cuda::train::strategy::Strategy::Full;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let resume_error = |cfg: &TrainConfig| -> String {
        let job = TrainJob {
            cfg: cfg.clone(),
            out_dir: dir.clone(),
            control: RunControl {
                resume: true,
                stop_after_epochs: None,
            },
            evaluate: false,
        };
        format!(
            "{:#}",
            job.run(CpuBackend::new()).err().expect("resume must fail")
        )
    };
    let err = resume_error(&cfg);
    assert!(err.contains("state.json"), "nothing to resume: {err}");

    train(&cfg, &dir, RunControl::default());
    cfg.lr = 0.5;
    let err = resume_error(&cfg);
    assert!(err.contains("different configuration"), "{err}");
}
