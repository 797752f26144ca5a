//! Bad checkpoints give clear errors — naming the file, tensor, expected and found values — and
//! never a panic, through the library (`Checkpoint::open` + `ModelSpec::from_checkpoint`) and
//! through the CLI (`inspect` exits non-zero printing `error: ...`). Also: a sharded copy of a
//! golden model inspects exactly like the single file.

mod common;

use std::path::{Path, PathBuf};

use common::{
    cli, copy_model, golden_cases, inspect_json, load_tensors, path_str, read_config, save_tensors,
    shard_model, write_config,
};
use moe_offload::generate::{GenOptions, generate};
use moe_offload::{Checkpoint, Error, ModelSpec};
use safetensors::Dtype;
use tempfile::TempDir;

/// Opens and specs a model with the library; returns the error (panics if it loads).
fn lib_error(dir: &Path) -> Error {
    match Checkpoint::open(dir).and_then(|c| ModelSpec::from_checkpoint(&c)) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

/// Runs `inspect` and returns its stderr, checking the exit code and the `error: ` prefix.
fn cli_error(dir: &Path) -> String {
    let out = cli(&["inspect", "--model", path_str(dir)]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "inspect succeeded on {}", dir.display());
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "stderr does not start with 'error: ': {stderr}");
    assert!(!stderr.contains("panicked"), "inspect panicked: {stderr}");
    stderr
}

/// Checks the library error and the CLI message: every `needle` must appear in both.
fn check(dir: &Path, needles: &[&str], variant: fn(&Error) -> bool) {
    let e = lib_error(dir);
    assert!(variant(&e), "unexpected error variant: {e:?}");
    let msg = e.to_string();
    let stderr = cli_error(dir);
    for n in needles {
        assert!(msg.contains(n), "library message {msg:?} lacks {n:?}");
        assert!(stderr.contains(n), "CLI message {stderr:?} lacks {n:?}");
    }
}

fn mixtral_golden() -> PathBuf {
    golden_cases().into_iter().find(|p| p.ends_with("mixtral-top2")).expect("mixtral-top2 case")
}

/// A copy of the mixtral-top2 golden model in a temp dir.
fn golden_copy() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("model");
    copy_model(&mixtral_golden(), &dir);
    (tmp, dir)
}

/// A tiny native glam model (1 block, 4 experts, hidden 8, ffn 16, f32).
fn tiny_native() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("model");
    let mut o = GenOptions::preset("demo-glam").unwrap();
    (o.layers, o.experts, o.hidden, o.ffn) = (1, 4, 8, 16);
    generate(&o, &dir, &|_, _| {}).unwrap();
    (tmp, dir)
}

/// Rewrites one tensor of a single-file model (`None` removes it).
fn edit_tensor(dir: &Path, name: &str, f: impl FnOnce(common::Tensor) -> Option<common::Tensor>) {
    let path = dir.join("model.safetensors");
    let mut t = load_tensors(&path);
    let old = t.remove(name).unwrap_or_else(|| panic!("{name} not in the model"));
    if let Some(new) = f(old) {
        t.insert(name.to_string(), new);
    }
    save_tensors(&path, &t);
}

#[test]
fn missing_path() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("no-such-model");
    check(&dir, &["no-such-model", "no such file"], |e| matches!(e, Error::NotFound(_)));
}

#[test]
fn folder_without_weights() {
    let (_t, dir) = golden_copy();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    check(&dir, &["model.safetensors", "no such file"], |e| matches!(e, Error::NotFound(_)));
}

#[test]
fn not_a_safetensors_file() {
    let (_t, dir) = golden_copy();
    std::fs::write(dir.join("model.safetensors"), b"this is a text file, not safetensors\n")
        .unwrap();
    check(&dir, &["model.safetensors", "not a valid safetensors file"], |e| {
        matches!(e, Error::BadSafetensors { .. })
    });
}

#[test]
fn tiny_file_shorter_than_the_header_length() {
    let (_t, dir) = golden_copy();
    std::fs::write(dir.join("model.safetensors"), b"\x10\x00").unwrap();
    check(&dir, &["model.safetensors", "shorter than the 8-byte header length"], |e| {
        matches!(e, Error::BadSafetensors { .. })
    });
}

#[test]
fn truncated_file() {
    let (_t, dir) = golden_copy();
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    // The tensor at the end of the file is the one cut short; the message names it.
    check(&dir, &["model.safetensors", "truncated", "ends at byte", "tensor "], |e| {
        matches!(e, Error::BadSafetensors { .. })
    });
}

#[test]
fn trailing_bytes_after_the_last_tensor() {
    let (_t, dir) = golden_copy();
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0u8; 24]);
    std::fs::write(&path, &bytes).unwrap();
    check(&dir, &["model.safetensors", "24 bytes follow the last tensor"], |e| {
        matches!(e, Error::BadSafetensors { .. })
    });
}

#[test]
fn truncated_inside_the_header() {
    let (_t, dir) = golden_copy();
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..40]).unwrap();
    check(&dir, &["model.safetensors", "not a valid safetensors file"], |e| {
        matches!(e, Error::BadSafetensors { .. })
    });
}

#[test]
fn corrupt_header() {
    let (_t, dir) = golden_copy();
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    // Overwrite JSON in the middle of the header (the length prefix stays valid).
    for b in &mut bytes[20..40] {
        *b = b'#';
    }
    std::fs::write(&path, &bytes).unwrap();
    check(&dir, &["model.safetensors", "not a valid safetensors file"], |e| {
        matches!(e, Error::BadSafetensors { .. })
    });
}

#[test]
fn header_length_past_the_end() {
    let (_t, dir) = golden_copy();
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    check(&dir, &["model.safetensors", "not a valid safetensors file"], |e| {
        matches!(e, Error::BadSafetensors { .. })
    });
}

#[test]
fn expert_weight_stored_as_f64() {
    let (_t, dir) = tiny_native();
    let name = "layers.0.moe.experts.2.up.weight";
    edit_tensor(&dir, name, |t| {
        let data: Vec<u8> = t
            .data
            .chunks_exact(4)
            .flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) as f64).to_le_bytes())
            .collect();
        Some(common::Tensor { dtype: Dtype::F64, shape: t.shape, data })
    });
    check(&dir, &[name, "f64", "expected f32, bf16 or f16"], |e| {
        matches!(e, Error::UnsupportedDtype { .. })
    });
}

#[test]
fn hf_expert_weight_stored_as_f64() {
    let (_t, dir) = golden_copy();
    let name = "model.layers.1.block_sparse_moe.experts.3.w2.weight";
    edit_tensor(&dir, name, |t| {
        let data = t.data.iter().flat_map(|&b| [b, b]).collect();
        Some(common::Tensor { dtype: Dtype::F64, shape: t.shape, data })
    });
    check(&dir, &[name, "f64"], |e| matches!(e, Error::UnsupportedDtype { .. }));
}

#[test]
fn expert_tensor_missing() {
    let (_t, dir) = tiny_native();
    let name = "layers.0.moe.experts.3.down.weight";
    edit_tensor(&dir, name, |_| None);
    check(&dir, &[name, "missing"], |e| matches!(e, Error::MissingTensor { .. }));
}

#[test]
fn hf_expert_tensor_missing() {
    let (_t, dir) = golden_copy();
    let name = "model.layers.0.block_sparse_moe.experts.7.w3.weight";
    edit_tensor(&dir, name, |_| None);
    check(&dir, &[name, "missing"], |e| matches!(e, Error::MissingTensor { .. }));
}

#[test]
fn expert_tensor_with_the_wrong_shape() {
    let (_t, dir) = tiny_native();
    let name = "layers.0.moe.experts.1.gate.weight";
    // [16, 8] stored as [8, 16]: same bytes, transposed shape.
    edit_tensor(&dir, name, |t| Some(common::Tensor { shape: vec![8, 16], ..t }));
    check(&dir, &[name, "expected shape [16, 8]", "found [8, 16]"], |e| {
        matches!(e, Error::ShapeMismatch { .. })
    });
}

#[test]
fn router_with_the_wrong_shape() {
    let (_t, dir) = golden_copy();
    let cfg = read_config(&dir);
    let hidden = cfg["hidden_size"].as_u64().unwrap() as usize;
    let name = "model.layers.0.block_sparse_moe.gate.weight";
    edit_tensor(&dir, name, |t| {
        let data = t.data[..t.data.len() / 2].to_vec();
        Some(common::Tensor { shape: vec![4, hidden], data, ..t })
    });
    let expected = format!("expected shape [8, {hidden}]");
    let found = format!("found [4, {hidden}]");
    check(&dir, &[name, &expected, &found], |e| matches!(e, Error::ShapeMismatch { .. }));
}

#[test]
fn unknown_model_type() {
    let (_t, dir) = golden_copy();
    let mut cfg = read_config(&dir);
    cfg["model_type"] = "llama4_moe_unheard_of".into();
    write_config(&dir, &cfg);
    check(&dir, &["llama4_moe_unheard_of", "unknown model_type"], |e| {
        matches!(e, Error::UnknownModelType(_))
    });
}

#[test]
fn config_missing_a_needed_field() {
    let (_t, dir) = golden_copy();
    let mut cfg = read_config(&dir);
    cfg.as_object_mut().unwrap().remove("num_local_experts");
    write_config(&dir, &cfg);
    check(&dir, &["config.json", "num_local_experts", "missing"], |e| {
        matches!(e, Error::BadConfig { .. })
    });
}

#[test]
fn native_config_missing_a_needed_field() {
    let (_t, dir) = tiny_native();
    let mut cfg = read_config(&dir);
    cfg.as_object_mut().unwrap().remove("intermediate_size");
    write_config(&dir, &cfg);
    check(&dir, &["config.json", "intermediate_size"], |e| matches!(e, Error::BadConfig { .. }));
}

#[test]
fn config_field_of_the_wrong_type() {
    let (_t, dir) = golden_copy();
    let mut cfg = read_config(&dir);
    cfg["hidden_size"] = "sixty-four".into();
    write_config(&dir, &cfg);
    check(&dir, &["config.json", "hidden_size"], |e| matches!(e, Error::BadConfig { .. }));
}

#[test]
fn config_missing_or_not_json() {
    let (_t, dir) = golden_copy();
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    check(&dir, &["config.json", "not valid JSON"], |e| matches!(e, Error::BadConfig { .. }));
    std::fs::remove_file(dir.join("config.json")).unwrap();
    check(&dir, &["config.json", "missing"], |e| matches!(e, Error::BadConfig { .. }));
}

#[test]
fn index_naming_a_missing_shard() {
    let (_t, dir) = golden_copy();
    shard_model(&dir, 2);
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    check(&dir, &["model-00002-of-00002.safetensors"], |e| matches!(e, Error::NotFound(_)));
}

#[test]
fn sharded_golden_models_inspect_like_the_single_file() {
    for case in golden_cases() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("model");
        copy_model(&case, &dir);
        shard_model(&dir, 2);
        assert!(!dir.join("model.safetensors").exists());
        assert!(dir.join("model-00002-of-00002.safetensors").exists());
        let ckpt = Checkpoint::open(&dir).unwrap();
        assert_eq!(ckpt.files().len(), 2, "{}", case.display());
        assert_eq!(inspect_json(&dir), inspect_json(&case), "{}", case.display());
    }
}
