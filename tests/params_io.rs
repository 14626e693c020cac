//! Parameter safetensors I/O: checkpoint round trip, loading a Hugging Face GPT-2 file (both
//! naming styles, fp16, mask buffers, vocabulary resize), the HF directory layout, and every error
//! case (missing tensor, wrong shape, wrong dtype, truncated/corrupt file) asserted on its message.

use std::collections::HashMap;
use std::path::Path;

use pepler_cuda::model::config::{ModelConfig, PromptKind, RecKind};
use pepler_cuda::model::params::{param_specs, HostTensor, ParamSet};
use pepler_cuda::model::safetensors_io::{write_f32_tensors, SafetensorsFile};
use safetensors::tensor::{Dtype, TensorView};

/// A small model (vocab kept small so the tests are fast) with every kind of PEPLER tensor.
fn small_cfg() -> ModelConfig {
    ModelConfig {
        vocab_size: 40,
        n_positions: 16,
        n_embd: 8,
        n_layer: 2,
        n_head: 2,
        bos_id: 37,
        eos_id: 38,
        pad_id: 39,
        mlp_hidden: 6,
        ..ModelConfig::tiny(3, 4)
    }
    .with_rec(RecKind::Mlp, 0.5)
}

fn write_raw(path: &Path, tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, &None, path).unwrap();
}

fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

#[test]
fn checkpoint_round_trip_is_bit_exact_and_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let cfg = small_cfg();
    let params = ParamSet::init(&cfg, 11);
    let mut extra = HashMap::new();
    extra.insert("epoch".to_string(), "3".to_string());
    params.save(&path, &extra).unwrap();
    assert!(!dir.path().join("ckpt.safetensors.tmp").exists());
    let back = ParamSet::load(&path).unwrap();
    assert_eq!(back.config(), &cfg);
    for ((sa, ta), (sb, tb)) in params.iter().zip(back.iter()) {
        assert_eq!(sa.name, sb.name);
        assert_eq!(ta.shape, tb.shape);
        let bits = |t: &HostTensor| t.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(ta), bits(tb), "{}", sa.name);
    }
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.meta("format").as_deref(), Some("pt"));
    assert_eq!(file.meta("epoch").as_deref(), Some("3"));
    assert!(
        !file.contains("lm_head.weight"),
        "the tied LM head is not stored, as HF does"
    );
    assert!(file.contains("transformer.h.1.mlp.c_proj.weight"));
    // Saving over an existing checkpoint replaces it whole.
    ParamSet::init(&cfg, 12)
        .save(&path, &HashMap::new())
        .unwrap();
    assert_eq!(ParamSet::load(&path).unwrap(), ParamSet::init(&cfg, 12));
}

#[test]
fn missing_tensor_is_named_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.safetensors");
    let cfg = small_cfg();
    let params = ParamSet::init(&cfg, 1);
    let kept = params
        .iter()
        .filter(|(s, _)| s.name != "transformer.h.1.ln_2.bias")
        .map(|(s, t)| (s.name.as_str(), t));
    write_f32_tensors(&path, kept, HashMap::new()).unwrap();
    let msg = err_of(ParamSet::load_with_config(&path, &cfg));
    assert!(msg.contains("transformer.h.1.ln_2.bias"), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
    assert!(msg.contains("missing.safetensors"), "{msg}");
    // Without config metadata, `load` says so.
    let msg = err_of(ParamSet::load(&path));
    assert!(
        msg.contains("pepler_config") && msg.contains("missing.safetensors"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shape.safetensors");
    let cfg = small_cfg();
    let mut params = ParamSet::init(&cfg, 1);
    let t = params
        .get_mut("transformer.h.0.attn.c_attn.weight")
        .unwrap();
    t.shape = vec![24, 8]; // transposed (nn.Linear layout instead of Conv1D)
    let items: Vec<(&str, &HostTensor)> =
        params.iter().map(|(s, t)| (s.name.as_str(), t)).collect();
    write_f32_tensors(&path, items, HashMap::new()).unwrap();
    let msg = err_of(ParamSet::load_with_config(&path, &cfg));
    assert!(msg.contains("transformer.h.0.attn.c_attn.weight"), "{msg}");
    assert!(msg.contains("[24, 8]") && msg.contains("[8, 24]"), "{msg}");
    assert!(msg.contains("shape.safetensors"), "{msg}");
}

#[test]
fn wrong_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dtype.safetensors");
    let cfg = small_cfg();
    let params = ParamSet::init(&cfg, 1);
    let mut raw = Vec::new();
    for (s, t) in params.iter() {
        if s.name == "user_embeddings.weight" {
            let ints: Vec<u8> = t
                .data
                .iter()
                .flat_map(|&x| (x as i32).to_le_bytes())
                .collect();
            raw.push((s.name.clone(), Dtype::I32, t.shape.clone(), ints));
        } else {
            let b: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            raw.push((s.name.clone(), Dtype::F32, t.shape.clone(), b));
        }
    }
    write_raw(&path, raw);
    let msg = err_of(ParamSet::load_with_config(&path, &cfg));
    assert!(
        msg.contains("user_embeddings.weight") && msg.contains("I32"),
        "{msg}"
    );
    assert!(msg.contains("dtype.safetensors"), "{msg}");
}

#[test]
fn truncated_file_names_the_cut_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trunc.safetensors");
    let cfg = small_cfg();
    ParamSet::init(&cfg, 1)
        .save(&path, &HashMap::new())
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // Cut inside the last tensor's data.
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let msg = err_of(ParamSet::load(&path));
    assert!(
        msg.contains("trunc.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
    assert!(msg.contains("tensor `"), "names a tensor: {msg}");
    // Cut inside the header.
    std::fs::write(&path, &bytes[..20]).unwrap();
    let msg = err_of(ParamSet::load(&path));
    assert!(
        msg.contains("trunc.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
    // Too short to hold a header length; not a safetensors file at all.
    std::fs::write(&path, b"abc").unwrap();
    let msg = err_of(ParamSet::load(&path));
    assert!(msg.contains("trunc.safetensors"), "{msg}");
    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!").unwrap();
    let msg = err_of(ParamSet::load(&path));
    assert!(
        msg.contains("trunc.safetensors") && msg.contains("not a valid"),
        "{msg}"
    );
    // A file that does not exist.
    let msg = err_of(ParamSet::load(dir.path().join("nope.safetensors")));
    assert!(msg.contains("nope.safetensors"), "{msg}");
}

/// Writes a GPT-2 checkpoint the way the released `gpt2` repo stores it (no prefix, causal-mask
/// buffers) or the way `save_pretrained` does (prefix), in fp16 or fp32, with a 3-row-smaller vocab.
fn write_hf_gpt2(path: &Path, cfg: &ModelConfig, src: &ParamSet, prefixed: bool, f16: bool) {
    let mut raw = Vec::new();
    for (s, t) in src.iter().filter(|(s, _)| s.is_gpt2()) {
        let name = if prefixed {
            s.name.clone()
        } else {
            s.name.trim_start_matches("transformer.").to_string()
        };
        let (shape, data) = if s.name == "transformer.wte.weight" {
            let rows = cfg.vocab_size - 3;
            (vec![rows, cfg.n_embd], t.data[..rows * cfg.n_embd].to_vec())
        } else {
            (t.shape.clone(), t.data.clone())
        };
        let (dt, bytes): (Dtype, Vec<u8>) = if f16 {
            let b = data
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect();
            (Dtype::F16, b)
        } else {
            (
                Dtype::F32,
                data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        };
        raw.push((name, dt, shape, bytes));
    }
    let np = cfg.n_positions;
    for i in 0..cfg.n_layer {
        let pre = if prefixed { "transformer." } else { "" };
        let mask: Vec<u8> = (0..np * np).map(|k| (k % np <= k / np) as u8).collect();
        raw.push((
            format!("{pre}h.{i}.attn.bias"),
            Dtype::U8,
            vec![1, 1, np, np],
            mask,
        ));
    }
    write_raw(path, raw);
}

#[test]
fn hf_gpt2_loads_unprefixed_fp16_with_buffers_and_resizes_the_vocab() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let cfg = small_cfg();
    let src = ParamSet::init(&cfg, 5);
    write_hf_gpt2(&path, &cfg, &src, false, true);
    let a = ParamSet::from_pretrained_gpt2(&path, &cfg, 9).unwrap();
    let b = ParamSet::from_pretrained_gpt2(&path, &cfg, 9).unwrap();
    assert_eq!(a, b, "deterministic in the seed");
    let c = ParamSet::from_pretrained_gpt2(&path, &cfg, 10).unwrap();
    let (v, e) = (cfg.vocab_size, cfg.n_embd);
    let wte = &a.get("transformer.wte.weight").unwrap().data;
    for (k, (&x, &y)) in wte[..(v - 3) * e]
        .iter()
        .zip(&src.get("transformer.wte.weight").unwrap().data)
        .enumerate()
    {
        assert_eq!(
            x,
            half::f16::from_f32(y).to_f32(),
            "wte[{k}] copied from the file"
        );
    }
    let new_rows = &wte[(v - 3) * e..];
    assert!(new_rows.iter().all(|x| x.abs() < 0.2) && new_rows.iter().any(|&x| x != 0.0));
    assert_ne!(
        new_rows,
        &c.get("transformer.wte.weight").unwrap().data[(v - 3) * e..],
        "new rows come from the seed"
    );
    let w = &a.get("transformer.h.1.attn.c_proj.weight").unwrap().data;
    let ws = &src.get("transformer.h.1.attn.c_proj.weight").unwrap().data;
    assert!(w
        .iter()
        .zip(ws)
        .all(|(&x, &y)| (x - y).abs() <= 1e-3 * y.abs().max(1e-4)));
    // PEPLER tensors come from the seed, as ParamSet::init would make them.
    let fresh = ParamSet::init(&cfg, 9);
    for name in ["user_embeddings.weight", "recommender.layers.1.weight"] {
        assert_eq!(a.get(name), fresh.get(name), "{name}");
    }
}

#[test]
fn hf_gpt2_loads_prefixed_fp32_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let cfg = small_cfg()
        .with_prompt(PromptKind::Discrete)
        .with_rec(RecKind::None, 0.0);
    let src = ParamSet::init(&cfg, 5);
    write_hf_gpt2(&path, &cfg, &src, true, false);
    let a = ParamSet::from_pretrained_gpt2(&path, &cfg, 1).unwrap();
    for (s, t) in a.iter().filter(|(s, _)| s.name != "transformer.wte.weight") {
        assert_eq!(Some(t), src.get(&s.name), "{}", s.name);
    }
    assert_eq!(param_specs(&cfg).len(), a.len());
}

#[test]
fn hf_gpt2_with_more_layers_than_the_config_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deeper.safetensors");
    let cfg = small_cfg();
    let deeper = ModelConfig {
        n_layer: 3,
        ..cfg.clone()
    };
    write_hf_gpt2(&path, &deeper, &ParamSet::init(&deeper, 1), false, false);
    let msg = err_of(ParamSet::from_pretrained_gpt2(&path, &cfg, 1));
    assert!(
        msg.contains("h.2.") && msg.contains("deeper.safetensors"),
        "{msg}"
    );
    let wide = ModelConfig {
        n_embd: 12,
        n_head: 3,
        ..cfg.clone()
    };
    write_hf_gpt2(&path, &wide, &ParamSet::init(&wide, 1), false, false);
    let msg = err_of(ParamSet::from_pretrained_gpt2(&path, &cfg, 1));
    assert!(msg.contains("wte.weight") && msg.contains("shape"), "{msg}");
}

#[test]
fn hf_dir_has_a_config_json_that_parses_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_cfg();
    let params = ParamSet::init(&cfg, 3);
    params.save_hf_dir(dir.path().join("out")).unwrap();
    let text = std::fs::read_to_string(dir.path().join("out/config.json")).unwrap();
    assert_eq!(ModelConfig::from_hf_config_json(&text, 0, 0).unwrap(), cfg);
    let back = ParamSet::load(dir.path().join("out/model.safetensors")).unwrap();
    assert_eq!(back, params);
    // The saved file also loads as a "pretrained GPT-2" (prefixed names, full vocab).
    let again =
        ParamSet::from_pretrained_gpt2(dir.path().join("out/model.safetensors"), &cfg, 3).unwrap();
    assert_eq!(again, params);
}
