//! PyTorch parity on the CPU backend: every fixture in tests/fixtures/parity passes every row of
//! the check (forward, every gradient, every AdamW step, frozen parameters bit-identical), every
//! tensor a dump records is checked, and the check does fail when a parameter is perturbed.

use std::collections::HashMap;
use std::path::PathBuf;

use pepler_cuda::model::params::HostTensor;
use pepler_cuda::model::safetensors_io::write_f32_tensors;
use pepler_cuda::parity::{
    check_dump, check_dump_from, classify, format_table, BackendChoice, ParityDump,
};

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    v.sort();
    assert!(
        v.len() >= 4,
        "expected the four committed fixtures, found {v:?}"
    );
    v
}

#[test]
fn every_fixture_passes_every_row_on_cpu() {
    let mut failed = Vec::new();
    for path in fixtures() {
        let dump = ParityDump::open(&path).unwrap();
        let report = check_dump(&dump, BackendChoice::Cpu).unwrap();
        let table = format_table(&format!("{} on cpu", report.case), &report.rows);
        println!("{table}");
        if !report.pass() {
            failed.push(table);
        }
    }
    assert!(failed.is_empty(), "parity failures:\n{}", failed.join("\n"));
}

#[test]
fn every_recorded_tensor_is_checked() {
    for path in fixtures() {
        let dump = ParityDump::open(&path).unwrap();
        let report = check_dump(&dump, BackendChoice::Cpu).unwrap();
        for name in dump.file().names() {
            if classify(&name).is_some() {
                assert!(
                    report.row(&name).is_some(),
                    "{}: `{name}` is in the dump but not checked",
                    path.display()
                );
            }
        }
        // Every frozen parameter gets a bitwise row; every trainable one a row per step.
        let steps = dump.optimizer.steps;
        for name in dump.params.names() {
            let row = if dump.trainable.iter().any(|t| t == name) {
                format!("step{steps}.param.{name}")
            } else {
                format!("frozen.{name}")
            };
            assert!(report.row(&row).is_some(), "{}: no row `{row}`", dump.case);
        }
    }
}

fn fixture(case: &str) -> ParityDump {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/parity/{case}.safetensors"));
    ParityDump::open(p).unwrap()
}

#[test]
fn perturbed_frozen_parameter_fails_on_that_tensor() {
    // continuous_mlp trains only the prompts and the rating head: the LM is frozen.
    let dump = fixture("continuous_mlp");
    let name = "transformer.h.1.mlp.c_fc.bias";
    assert!(!dump.trainable.iter().any(|t| t == name));
    let mut start = dump.params.clone();
    start.get_mut(name).unwrap().data[3] += 1e-3;
    let report = check_dump_from(&dump, BackendChoice::Cpu, &start).unwrap();
    assert!(!report.pass());
    let row = report.row(&format!("frozen.{name}")).unwrap();
    assert!(!row.pass && row.worst_index == 3, "{row:?}");
    assert!(
        !report.row("out.logits").unwrap().pass,
        "the logits notice it too"
    );
}

#[test]
fn perturbed_trainable_parameter_fails_on_that_tensor() {
    let dump = fixture("continuous_ragged");
    let name = "user_embeddings.weight";
    assert!(dump.trainable.iter().any(|t| t == name));
    let mut start = dump.params.clone();
    // A user row the batch does not use: only the parameter check itself can notice.
    let users = &dump.batch.users;
    let unused = (0..dump.config.n_users as u32)
        .find(|u| !users.contains(u))
        .expect("the fixture leaves some user out");
    let c = dump.config.n_embd;
    start.get_mut(name).unwrap().data[unused as usize * c + 5] += 0.01;
    let report = check_dump_from(&dump, BackendChoice::Cpu, &start).unwrap();
    let failing: Vec<&str> = report.failures().map(|r| r.name.as_str()).collect();
    assert!(!failing.is_empty());
    assert!(
        failing.iter().all(|n| n.ends_with(name)),
        "only `{name}` rows fail: {failing:?}"
    );
    assert!(failing.contains(&"step1.param.user_embeddings.weight"));
}

#[test]
fn gpu_backends_say_they_are_not_available_yet() {
    let dump = fixture("discrete");
    for b in ["emu", "cuda"] {
        let err = check_dump(&dump, b.parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("not available yet"), "{err}");
    }
    assert!("tpu".parse::<BackendChoice>().is_err());
}

#[test]
fn a_file_that_is_not_a_parity_dump_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not_a_dump.safetensors");
    let t = HostTensor::zeros(&[2]);
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_f32_tensors(&path, [("x", &t)], meta).unwrap();
    let err = format!("{:#}", ParityDump::open(&path).unwrap_err());
    assert!(
        err.contains("not_a_dump.safetensors") && err.contains("pepler-parity/1"),
        "{err}"
    );
    // A dump whose trainable list names an unknown parameter.
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity/discrete.safetensors");
    let f = pepler_cuda::model::safetensors_io::SafetensorsFile::open(&src).unwrap();
    let mut meta = f.metadata();
    meta.insert("trainable".into(), r#"["transformer.nope.weight"]"#.into());
    let tensors: Vec<(String, HostTensor)> = f
        .names()
        .into_iter()
        .filter(|n| n.starts_with("param."))
        .map(|n| {
            let t = f.read_f32(&n, None).unwrap();
            (n, t)
        })
        .collect();
    let bad = dir.path().join("bad_trainable.safetensors");
    write_f32_tensors(&bad, tensors.iter().map(|(n, t)| (n.as_str(), t)), meta).unwrap();
    let err = format!("{:#}", ParityDump::open(&bad).unwrap_err());
    assert!(
        err.contains("transformer.nope.weight") && err.contains("bad_trainable"),
        "{err}"
    );
}
