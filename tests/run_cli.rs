//! `moe-offload run` end to end: the stats JSON schema, `--save-output` of an offloaded run
//! equal byte for byte to the resident run's, and clear errors for bad options.

use std::path::Path;
use std::process::{Command, Output};

use moe_offload::generate::{GenOptions, generate};

fn run(model: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe-offload"))
        .args(["run", "--model"])
        .arg(model)
        .args(["--steps", "5", "--batch", "2"])
        .args(args)
        .output()
        .unwrap()
}

fn small_model(dir: &Path) -> std::path::PathBuf {
    let mut o = GenOptions::preset("demo-glam").unwrap();
    o.layers = 3;
    o.hidden = 32;
    o.ffn = 64;
    o.experts = 8;
    let p = dir.join("glam");
    generate(&o, &p, &|_, _| {}).unwrap();
    p
}

#[test]
fn offloaded_output_file_equals_the_resident_one_and_stats_have_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model(dir.path());
    let resident = dir.path().join("resident.safetensors");
    let offloaded = dir.path().join("offloaded.safetensors");
    let stats = dir.path().join("stats.json");
    let out = run(&model, &["--save-output", resident.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(
        &model,
        &[
            "--budget",
            "30%",
            "--policy",
            "lfu",
            "--prefetch",
            "gate",
            "--save-output",
            offloaded.to_str().unwrap(),
            "--stats-json",
            stats.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&resident).unwrap(), std::fs::read(&offloaded).unwrap());
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    for key in [
        "steps",
        "tokens",
        "hits",
        "misses",
        "hit_rate",
        "bytes_transferred",
        "budget_bytes",
        "peak_resident_bytes",
        "stall_seconds",
        "compute_seconds",
        "wall_seconds",
        "tokens_per_second",
        "prefetch_issued",
        "prefetch_used",
    ] {
        assert!(s.get(key).is_some(), "stats JSON lacks {key}: {s}");
    }
    assert_eq!(s["steps"], 5);
    assert_eq!(s["tokens"], 10);
    assert!(s["peak_resident_bytes"].as_u64() <= s["budget_bytes"].as_u64());
}

#[test]
fn bad_options_exit_non_zero_with_an_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model(dir.path());
    for (args, needle) in [
        (&["--budget", "1KiB"][..], "too small"),
        (&["--budget", "20%", "--policy", "mru"][..], "mru"),
        (&["--budget", "20%", "--prefetch", "always"][..], "always"),
        (&["--budget", "lots"][..], "lots"),
        (&["--locality", "1.5"][..], "locality"),
        (&["--device", "tpu"][..], "tpu"),
    ] {
        let out = run(&model, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.starts_with("error: ") && err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
