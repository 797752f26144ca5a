//! `run --trace-out` and `sim` agree: replaying a run's trace with the same budget and policy
//! reproduces that run's hits and misses exactly (the simulator drives the engine's own cache
//! and policy code, and the trace lists experts in the order the engine looked them up).

use std::process::Command;

use moe_offload::cache::PolicyKind;
use moe_offload::generate::{GenOptions, generate};
use moe_offload::sim::trace::TraceReader;
use moe_offload::sim::{Prefetch, SimOptions, simulate};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moe-offload"))
}

fn check_model(model: &std::path::Path, dir: &std::path::Path, budgets: &[&str], extra: &[&str]) {
    for policy in ["lru", "lfu", "belady"] {
        for &budget in budgets {
            let trace = dir.join(format!("{policy}-{}.jsonl", budget.trim_end_matches('%')));
            let stats = dir.join("stats.json");
            let out = bin()
                .args(["run", "--model"])
                .arg(model)
                .args(["--budget", budget, "--policy", policy, "--steps", "10", "--batch", "3"])
                .args(extra)
                .arg("--trace-out")
                .arg(&trace)
                .arg("--stats-json")
                .arg(&stats)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let s: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
            let kind: PolicyKind = policy.parse().unwrap();
            let opts = SimOptions { prefetch: Prefetch::None, cost: Default::default() };
            let report =
                simulate(|| TraceReader::open(&trace), &[kind], &[budget.to_string()], &opts)
                    .unwrap();
            let r = &report.results[0];
            assert_eq!(r.hits, s["hits"].as_u64().unwrap(), "{policy} {budget} hits");
            assert_eq!(r.misses, s["misses"].as_u64().unwrap(), "{policy} {budget} misses");
            assert_eq!(
                r.bytes_transferred,
                s["bytes_transferred"].as_u64().unwrap(),
                "{policy} {budget} bytes"
            );
        }
    }
}

#[test]
fn replaying_a_run_trace_reproduces_its_hits_and_misses() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = GenOptions::preset("demo-glam").unwrap();
    o.layers = 3;
    o.hidden = 32;
    o.ffn = 64;
    o.experts = 12;
    let glam = dir.path().join("glam");
    generate(&o, &glam, &|_, _| {}).unwrap();
    check_model(&glam, dir.path(), &["20%", "45%"], &[]);
    belady_from_a_trace_equals_belady_from_a_recorded_pass(&glam, dir.path());
    // A prefill chunk uses many experts per block at once (the simulator needs a budget that
    // holds a whole block; the engine would also run smaller ones, in waves).
    check_model(&glam, dir.path(), &["40%", "75%"], &["--prefill", "4"]);

    let mut p = GenOptions::preset("demo-pangu").unwrap();
    p.layers = 3;
    p.hidden = 32;
    p.ffn = 64;
    p.domains = 3;
    p.experts = 4;
    p.vocab = 128;
    let pangu = dir.path().join("pangu");
    generate(&p, &pangu, &|_, _| {}).unwrap();
    check_model(&pangu, dir.path(), &["20%", "45%"], &[]);
}

/// `run --policy belady --trace-in T` takes its future from a trace of the same workload and
/// must then count exactly what the recorded first pass gives.
fn belady_from_a_trace_equals_belady_from_a_recorded_pass(
    model: &std::path::Path,
    dir: &std::path::Path,
) {
    let trace = dir.join("lru-20.jsonl");
    let stats = |extra: &[&std::ffi::OsStr]| -> serde_json::Value {
        let out = dir.join("belady.json");
        let status = bin()
            .args(["run", "--model"])
            .arg(model)
            .args(["--budget", "20%", "--policy", "belady", "--steps", "10", "--batch", "3"])
            .args(extra)
            .arg("--stats-json")
            .arg(&out)
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
    };
    let recorded = stats(&[]);
    let from_trace = stats(&["--trace-in".as_ref(), trace.as_os_str()]);
    assert_eq!(recorded["hits"], from_trace["hits"]);
    assert_eq!(recorded["misses"], from_trace["misses"]);
}
