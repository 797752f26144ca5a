//! The `block`, `extract` and `bench block` commands, run as a user would: golden models,
//! a generated PanGu-Σ model, and the errors a user can cause.

mod blockmath_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use blockmath_support::{Pangu, T, write_pangu};
use moe_offload::DType;
use moe_offload::dtype::encode_from_f32;
use safetensors::{Dtype, SafeTensors};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moe-offload"))
}

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(case)
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn write_st(path: &Path, tensors: &[(String, T)]) {
    let items: Vec<(&str, &T)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::serialize_to_file(items, None::<HashMap<String, String>>, path).unwrap();
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns its stderr, which must start with `error:`.
fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "should fail; stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.starts_with("error:"), "{err}");
    err
}

fn block(model: &Path, input: &Path, output: &Path) -> Command {
    let mut c = bin();
    c.arg("block").arg("--model").arg(model).arg("--input").arg(input).arg("--output").arg(output);
    c
}

#[test]
fn block_on_golden_inputs_writes_outputs_ids_and_weights() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["mixtral-top2", "switch-top1-capacity"] {
        let out = dir.path().join(format!("{case}.safetensors"));
        run_ok(
            block(&golden(case), &golden(case).join("golden.safetensors"), &out)
                .args(["--threads", "2"]),
        );
        let want_bytes = std::fs::read(golden(case).join("golden.safetensors")).unwrap();
        let want = SafeTensors::deserialize(&want_bytes).unwrap();
        let got_bytes = std::fs::read(&out).unwrap();
        let got = SafeTensors::deserialize(&got_bytes).unwrap();
        let mut blocks = 0;
        for name in want.names().into_iter().filter(|n| n.ends_with(".input")) {
            let p = name.trim_end_matches(".input");
            let w = want.tensor(&format!("{p}.output")).unwrap();
            let g = got.tensor(&format!("{p}.output")).unwrap();
            assert_eq!(g.shape(), w.shape());
            let (gv, wv) = (f32s(g.data()), f32s(w.data()));
            let num: f32 = gv.iter().zip(&wv).map(|(a, b)| (a - b) * (a - b)).sum();
            let den: f32 = wv.iter().map(|b| b * b).sum();
            // Same tolerance as the golden conformance test (see there).
            assert!((num / den).sqrt() < 1e-4, "{case} {p}");
            let ids = got.tensor(&format!("{p}.expert_ids")).unwrap();
            assert_eq!(ids.dtype(), Dtype::I32);
            let k = if case.starts_with("switch") { 1 } else { 2 };
            let mut shape = w.shape().to_vec();
            *shape.last_mut().unwrap() = k;
            assert_eq!(ids.shape(), shape.as_slice());
            let ws = got.tensor(&format!("{p}.expert_weights")).unwrap();
            assert_eq!(ws.shape(), shape.as_slice());
            let idv: Vec<i32> = ids
                .data()
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if case.starts_with("switch") {
                // The golden Switch case has capacity drops: marked -1 with weight 0.
                let wsv = f32s(ws.data());
                assert!(idv.contains(&-1));
                assert!(idv.iter().zip(&wsv).all(|(&e, &w)| e >= 0 || w == 0.0));
            }
            blocks += 1;
        }
        assert!(blocks >= 2);
    }
}

#[test]
fn block_accepts_2d_and_half_precision_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let case = golden("mixtral-top2");
    let gb = std::fs::read(case.join("golden.safetensors")).unwrap();
    let g = SafeTensors::deserialize(&gb).unwrap();
    let p = "model.layers.0.block_sparse_moe";
    let x = f32s(g.tensor(&format!("{p}.input")).unwrap().data());
    let n = x.len() / 64;
    for (dt, sdt) in [(DType::BF16, Dtype::BF16), (DType::F16, Dtype::F16)] {
        let input = dir.path().join("in.safetensors");
        write_st(
            &input,
            &[(
                format!("{p}.input"),
                T { dtype: sdt, shape: vec![n, 64], data: encode_from_f32(&dt, &x) },
            )],
        );
        let out = dir.path().join("out.safetensors");
        run_ok(&mut block(&case, &input, &out));
        let ob = std::fs::read(&out).unwrap();
        let o = SafeTensors::deserialize(&ob).unwrap();
        assert_eq!(o.tensor(&format!("{p}.output")).unwrap().shape(), &[n, 64]);
        assert_eq!(o.tensor(&format!("{p}.expert_ids")).unwrap().shape(), &[n, 2]);
    }
}

const P: Pangu = Pangu { hidden: 16, ffn: 24, layers: 2, domains: 2, k: 3, vocab: 20, seed: 4 };

fn rre_input(path: &Path, domain: i64, ids: &[i64], hidden: usize, prefix: &str) {
    let x: Vec<f32> =
        (0..2 * ids.len() / 2 * hidden).map(|i| ((i % 7) as f32 - 3.0) * 0.3).collect();
    let t = ids.len() / 2;
    write_st(
        path,
        &[
            (
                format!("{prefix}.input"),
                T {
                    dtype: Dtype::F32,
                    shape: vec![2, t, hidden],
                    data: encode_from_f32(&DType::F32, &x),
                },
            ),
            (
                format!("{prefix}.token_ids"),
                T {
                    dtype: Dtype::I64,
                    shape: vec![2, t],
                    data: ids.iter().flat_map(|v| v.to_le_bytes()).collect(),
                },
            ),
            (
                format!("{prefix}.domain"),
                T {
                    dtype: Dtype::I32,
                    shape: vec![2],
                    data: [domain as i32, domain as i32]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                },
            ),
        ],
    );
}

#[test]
fn rre_block_and_extract_give_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("pangu");
    write_pangu(&model, P);
    let prefix = "layers.1.moe";
    let ids: Vec<i64> = (0..10).map(|i| (i * 3) % 20).collect();
    let input = dir.path().join("in.safetensors");
    rre_input(&input, 1, &ids, P.hidden, prefix);
    let full = dir.path().join("full.safetensors");
    run_ok(&mut block(&model, &input, &full));
    let sub = dir.path().join("sub");
    let msg = run_ok(
        bin()
            .arg("extract")
            .arg("--model")
            .arg(&model)
            .args(["--domain", "1"])
            .arg("--out")
            .arg(&sub),
    );
    assert!(msg.contains("domain 1"), "{msg}");
    let part = dir.path().join("part.safetensors");
    run_ok(&mut block(&sub, &input, &part));
    let (a, b) = (std::fs::read(&full).unwrap(), std::fs::read(&part).unwrap());
    let (a, b) = (SafeTensors::deserialize(&a).unwrap(), SafeTensors::deserialize(&b).unwrap());
    let o = format!("{prefix}.output");
    assert_eq!(a.tensor(&o).unwrap().data(), b.tensor(&o).unwrap().data(), "bit-identical");
    // The sub-model refuses domain 0.
    rre_input(&input, 0, &ids, P.hidden, prefix);
    let err = run_err(&mut block(&sub, &input, &part));
    assert!(err.contains("domain 0"), "{err}");
}

#[test]
fn user_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("pangu");
    write_pangu(&model, P);
    let input = dir.path().join("in.safetensors");
    let out = dir.path().join("out.safetensors");
    let prefix = "layers.0.moe";
    // Token id ≥ vocab.
    let mut ids: Vec<i64> = vec![1; 8];
    ids[5] = 20;
    rre_input(&input, 0, &ids, P.hidden, prefix);
    assert!(run_err(&mut block(&model, &input, &out)).contains("token id 20"));
    // Domain outside the model.
    rre_input(&input, 2, &[1; 8], P.hidden, prefix);
    assert!(run_err(&mut block(&model, &input, &out)).contains("domain 2"));
    // Missing token ids.
    write_st(
        &input,
        &[(
            format!("{prefix}.input"),
            T { dtype: Dtype::F32, shape: vec![2, P.hidden], data: vec![0; 2 * P.hidden * 4] },
        )],
    );
    assert!(run_err(&mut block(&model, &input, &out)).contains("token_ids"));
    // Unknown prefix.
    write_st(
        &input,
        &[(
            "nope.input".into(),
            T { dtype: Dtype::F32, shape: vec![2, P.hidden], data: vec![0; 2 * P.hidden * 4] },
        )],
    );
    assert!(run_err(&mut block(&model, &input, &out)).contains("nope"));
    // Wrong hidden size and non-finite values, on a golden model.
    let m = golden("mixtral-top2");
    let p = "model.layers.0.block_sparse_moe";
    write_st(
        &input,
        &[(
            format!("{p}.input"),
            T { dtype: Dtype::F32, shape: vec![3, 65], data: vec![0; 3 * 65 * 4] },
        )],
    );
    assert!(run_err(&mut block(&m, &input, &out)).contains("[3, 65]"));
    let mut x = vec![0.5f32; 3 * 64];
    x[70] = f32::NAN;
    write_st(
        &input,
        &[(
            format!("{p}.input"),
            T { dtype: Dtype::F32, shape: vec![3, 64], data: encode_from_f32(&DType::F32, &x) },
        )],
    );
    assert!(run_err(&mut block(&m, &input, &out)).contains("not finite"));
    // No CUDA in this build (tests run without the cuda feature).
    if !cfg!(feature = "cuda") {
        x[70] = 0.0;
        write_st(
            &input,
            &[(
                format!("{p}.input"),
                T { dtype: Dtype::F32, shape: vec![3, 64], data: encode_from_f32(&DType::F32, &x) },
            )],
        );
        assert!(run_err(block(&m, &input, &out).args(["--device", "cuda"])).contains("CUDA"));
    }
    // extract of a non-RRE model, and of a domain the model lacks.
    assert!(
        run_err(
            bin()
                .arg("extract")
                .arg("--model")
                .arg(&m)
                .args(["--domain", "0"])
                .arg("--out")
                .arg(dir.path().join("x"))
        )
        .contains("pangu_sigma")
    );
    assert!(
        run_err(
            bin()
                .arg("extract")
                .arg("--model")
                .arg(&model)
                .args(["--domain", "5"])
                .arg("--out")
                .arg(dir.path().join("x"))
        )
        .contains("domain 5")
    );
}

#[test]
fn bench_block_prints_json() {
    let out = run_ok(
        bin()
            .arg("bench")
            .arg("block")
            .arg("--model")
            .arg(golden("qwen2moe-shared"))
            .args(["--tokens", "4", "--iters", "3", "--json"]),
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in ["tokens", "median_ms", "gflops", "weight_gbps"] {
        assert!(v.get(key).is_some_and(|x| x.is_number()), "{key} in {out}");
    }
    assert_eq!(v["tokens"], 4);
}
