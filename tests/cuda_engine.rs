//! The engine and the `block` command on a CUDA device: offloaded ≡ resident bit for bit on
//! the GPU (LRU, LFU, Belady, with and without gate prefetch, the naive method), the budget is
//! never exceeded, every transfer path gives the same bits, a forced copy failure is an error
//! that leaves the engine usable, and `block --device cuda` matches the golden outputs.
//!
//! Without a usable device each GPU test prints why it is skipped and passes
//! (`MOE_OFFLOAD_REQUIRE_GPU=1`, set by `tools/gpu-check.sh`, makes that a failure). Without
//! the `cuda` feature, only the refusal paths are checked.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use moe_offload::Error;
use moe_offload::block::io::backend_for;
use moe_offload::cache::PolicyKind;
use moe_offload::engine::{Engine, EngineOptions, PrefetchMode};
use moe_offload::generate::{GenOptions, generate};
use moe_offload::workload::{self, RunOutput, Workload};

/// A small glam model, generated once per test binary: 3 blocks × 8 experts, hidden 64.
fn glam_model() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut o = GenOptions::preset("demo-glam").unwrap();
        o.layers = 3;
        o.hidden = 64;
        o.ffn = 128;
        o.experts = 8;
        o.seed = 5;
        let p = dir.path().join("glam");
        generate(&o, &p, &|_, _| {}).unwrap();
        (dir, p)
    })
    .1
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[cfg(not(feature = "cuda"))]
#[test]
fn without_the_feature_the_device_is_refused() {
    assert!(matches!(backend_for("cuda", 1), Err(Error::NotCompiledWithCuda)));
    assert!(matches!(backend_for("cuda:1", 1), Err(Error::NotCompiledWithCuda)));
    for budget in [None, Some("50%".to_string())] {
        let opts = EngineOptions { device: "cuda".into(), budget, ..EngineOptions::default() };
        let err = Engine::open(glam_model(), opts).unwrap_err();
        assert!(matches!(err, Error::NotCompiledWithCuda), "{err}");
    }
}

#[test]
fn unknown_devices_and_transfer_paths_are_errors() {
    let err = backend_for("tpu", 1).err().unwrap();
    assert!(err.to_string().contains("tpu"), "{err}");
    // The transfer path is checked on every device, so a typo is never silently ignored.
    let opts = EngineOptions { transfer: "carrier-pigeon".into(), ..EngineOptions::default() };
    let err = Engine::open(glam_model(), opts).unwrap_err();
    assert!(err.to_string().contains("carrier-pigeon"), "{err}");
}

/// Whether a CUDA device is usable; prints why not (and fails under `MOE_OFFLOAD_REQUIRE_GPU=1`).
fn gpu() -> bool {
    match backend_for("cuda", 1) {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("MOE_OFFLOAD_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("MOE_OFFLOAD_REQUIRE_GPU=1 but no usable CUDA device: {e}");
            }
            eprintln!("skipped: no usable CUDA device: {e}");
            false
        }
    }
}

fn workload() -> Workload {
    Workload { steps: 5, batch: 3, tokens_per_step: 1, seed: 3, locality: 0.5 }
}

fn on_cuda(budget: Option<&str>, policy: PolicyKind, prefetch: PrefetchMode) -> EngineOptions {
    EngineOptions {
        device: "cuda".into(),
        budget: budget.map(str::to_string),
        policy,
        prefetch,
        ..EngineOptions::default()
    }
}

/// Peak within budget, hits + misses = uses, every miss and prefetch moves one expert.
fn check_accounting(out: &RunOutput, expert_bytes: u64) {
    let s = &out.stats;
    assert!(s.peak_resident_bytes <= s.budget_bytes, "peak {} > budget", s.peak_resident_bytes);
    assert_eq!(s.hits + s.misses, out.accesses.len() as u64);
    assert_eq!(s.bytes_transferred, (s.misses + s.prefetch_issued) * expert_bytes);
}

#[test]
fn without_a_usable_device_opening_is_an_error_not_a_panic() {
    // With a GPU this is the success path, checked by the tests below.
    if backend_for("cuda", 1).is_ok() {
        return;
    }
    let err = Engine::open(glam_model(), on_cuda(Some("50%"), PolicyKind::Lru, PrefetchMode::None))
        .unwrap_err();
    assert!(!err.to_string().is_empty());
}

#[test]
fn offloaded_equals_resident_on_the_gpu_for_every_policy_and_prefetch() {
    if !gpu() {
        return;
    }
    let model = glam_model();
    let w = workload();
    let resident =
        workload::run_model(model, on_cuda(None, PolicyKind::Lru, PrefetchMode::None), &w, None)
            .unwrap();
    let eb = Engine::open(model, EngineOptions::default()).unwrap().spec().max_expert_bytes();
    for policy in [PolicyKind::Lru, PolicyKind::Lfu, PolicyKind::Belady] {
        for prefetch in [PrefetchMode::None, PrefetchMode::Gate] {
            let out = workload::run_model(model, on_cuda(Some("25%"), policy, prefetch), &w, None)
                .unwrap();
            assert_eq!(
                bits(&out.hidden),
                bits(&resident.hidden),
                "{policy} + {prefetch} on cuda differs from resident on cuda"
            );
            assert_eq!(out.accesses, resident.accesses);
            check_accounting(&out, eb);
            assert!(out.stats.misses > 0, "a 25% budget must miss");
        }
    }
    let naive =
        EngineOptions { naive: true, ..on_cuda(Some("10%"), PolicyKind::Lru, PrefetchMode::None) };
    let out = workload::run_model(model, naive, &w, None).unwrap();
    assert_eq!(bits(&out.hidden), bits(&resident.hidden), "naive on cuda differs");
    assert_eq!(out.stats.hits, 0);
}

#[test]
fn every_transfer_path_gives_the_same_bits() {
    if !gpu() {
        return;
    }
    let model = glam_model();
    let w = workload();
    let resident =
        workload::run_model(model, on_cuda(None, PolicyKind::Lru, PrefetchMode::None), &w, None)
            .unwrap();
    for path in ["auto", "registered", "pinned:1", "pinned:4", "pageable"] {
        let opts = EngineOptions {
            transfer: path.into(),
            ..on_cuda(Some("30%"), PolicyKind::Lru, PrefetchMode::Gate)
        };
        let out = workload::run_model(model, opts, &w, None).unwrap();
        assert_eq!(bits(&out.hidden), bits(&resident.hidden), "transfer path {path} differs");
        assert!(out.stats.bytes_transferred > 0);
    }
}

#[test]
fn a_failed_copy_on_the_gpu_is_an_error_and_the_engine_stays_usable() {
    if !gpu() {
        return;
    }
    let model = glam_model();
    let h = 64;
    let tokens = 4;
    let input: Vec<f32> = (0..tokens * h).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
    let resident = Engine::open(model, on_cuda(None, PolicyKind::Lru, PrefetchMode::None)).unwrap();
    let mut want = input.clone();
    resident.step(&mut want, tokens, 1, None, None).unwrap();
    for path in ["registered", "pinned:2", "pageable"] {
        let opts = EngineOptions {
            transfer: path.into(),
            ..on_cuda(Some("25%"), PolicyKind::Lru, PrefetchMode::None)
        };
        let engine = Engine::open(model, opts).unwrap();
        engine.inject_copy_failure(2);
        let mut h1 = input.clone();
        let err = engine.step(&mut h1, tokens, 1, None, None).unwrap_err();
        assert!(matches!(err, Error::Transfer { .. }), "{path}: {err}");
        assert!(err.to_string().contains("injected"), "{path}: {err}");
        let mut h2 = input.clone();
        engine.step(&mut h2, tokens, 1, None, None).unwrap();
        assert_eq!(bits(&h2), bits(&want), "{path}: the call after a failure differs");
    }
}

/// `block --device cuda` on the f32 golden case: relative L2 error ≤ 1e-4 against
/// transformers (f32 weights run in true f32 on cuBLAS, no TF32: errors are rounding only,
/// ~1e-6; TF32 would give ~1e-3 and fail).
#[test]
fn block_on_cuda_matches_the_mixtral_golden() {
    if !gpu() {
        return;
    }
    use moe_offload::{Checkpoint, ModelSpec};
    // Relative to the working directory (the package root under `cargo test`, the source
    // tree under tools/gpu-check.sh, which runs prebuilt executables from there).
    let dir = Path::new("tests/golden/mixtral-top2");
    let ckpt = Checkpoint::open(dir).unwrap();
    let spec = ModelSpec::from_checkpoint(&ckpt).unwrap();
    let backend = backend_for("cuda", 1).unwrap();
    let golden_path = dir.join("golden.safetensors");
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("out.safetensors");
    let res =
        moe_offload::block::io::run_file(&ckpt, &spec, backend.as_ref(), &golden_path, &out_path)
            .unwrap();
    assert!(!res.is_empty());
    let golden_bytes = std::fs::read(&golden_path).unwrap();
    let golden = safetensors::SafeTensors::deserialize(&golden_bytes).unwrap();
    let got_bytes = std::fs::read(&out_path).unwrap();
    let got = safetensors::SafeTensors::deserialize(&got_bytes).unwrap();
    let f32s = |t: safetensors::tensor::TensorView<'_>| -> Vec<f32> {
        t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    for r in &res {
        let name = format!("{}.output", r.prefix);
        let want = f32s(golden.tensor(&name).unwrap());
        let have = f32s(got.tensor(&name).unwrap());
        let num: f64 = have.iter().zip(&want).map(|(a, b)| ((*a - *b) as f64).powi(2)).sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        let err = (num / den.max(f64::MIN_POSITIVE)).sqrt();
        println!("{name}: relative L2 error {err:.3e}");
        assert!(err <= 1e-4, "{name}: relative L2 error {err:.3e} > 1e-4");
    }
}

/// `bench decode` with device options: on the CPU every row matches resident, LFU rows are
/// optional, and the transfer bound is tokens / (bytes moved / ceiling) exactly; on CUDA it
/// runs when a device is usable and is refused otherwise.
#[test]
fn bench_decode_takes_a_device_and_reports_the_transfer_bound() {
    use moe_offload::bench::{DecodeOptions, decode};
    let model = glam_model();
    let w = Workload { steps: 2, batch: 2, tokens_per_step: 1, seed: 1, locality: 0.5 };
    let ceiling = 2e9;
    let o = DecodeOptions {
        threads: 1,
        ceiling_bytes_per_second: Some(ceiling),
        lfu: false,
        ..Default::default()
    };
    let report = decode(model, &["50%".to_string()], &w, &o).unwrap();
    let methods: Vec<&str> = report.rows.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["resident", "naive", "lru", "lru+gate"]);
    let tokens = (w.steps * w.batch) as f64;
    for r in &report.rows {
        assert!(r.matches_resident, "{} differs from resident", r.method);
        if r.bytes_transferred == 0 {
            assert!(r.transfer_bound_tokens_per_second.is_infinite());
        } else {
            let want = tokens / (r.bytes_transferred as f64 / ceiling);
            assert_eq!(r.transfer_bound_tokens_per_second, want, "{}", r.method);
        }
    }
    let on_gpu = DecodeOptions { device: "cuda".into(), ..o };
    match decode(model, &["50%".to_string()], &w, &on_gpu) {
        Ok(r) => assert!(r.rows.iter().all(|r| r.matches_resident), "cuda decode differs"),
        Err(e) => assert!(!gpu_usable(), "a usable GPU failed bench decode: {e}"),
    }
}

fn gpu_usable() -> bool {
    backend_for("cuda", 1).is_ok()
}
