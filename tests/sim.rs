//! The simulator: trace format round trip and streaming, bad traces, generators (determinism
//! and target statistics), replay properties (Belady bound, full budget, prefetch), and the CLI.

use std::io::Cursor;
use std::process::Command;

use moe_offload::Error;
use moe_offload::cache::PolicyKind;
use moe_offload::sim::{
    BlockRecord, CostModel, GenConfig, Generator, MemoryTrace, ModelShape, Prefetch, RreGen,
    SimOptions, TRACE_VERSION, TraceHeader, TraceReader, TraceWriter, simulate,
};

fn header() -> TraceHeader {
    TraceHeader {
        version: TRACE_VERSION,
        model: Some("tiny".into()),
        blocks: 2,
        experts_per_block: vec![4, 3],
        expert_bytes: vec![100, 200],
        hidden_size: 8,
        top_k: Some(2),
        tokens_per_step: Some(3),
    }
}

fn gen_cfg(shape: ModelShape, steps: u64, batch: usize, seed: u64) -> GenConfig {
    GenConfig { shape, steps, batch, seed, zipf: 1.0, locality: 0.5, layer_corr: 0.2, rre: None }
}

fn small_shape(blocks: usize, experts: usize, top_k: usize) -> ModelShape {
    ModelShape::uniform("test", blocks, experts, top_k, 1 << 20, 64).unwrap()
}

fn opts(prefetch: Prefetch) -> SimOptions {
    SimOptions { cost: CostModel::default(), prefetch }
}

fn budgets(b: &[&str]) -> Vec<String> {
    b.iter().map(|s| s.to_string()).collect()
}

#[test]
fn trace_round_trips_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let recs = vec![
        BlockRecord { step: 0, block: 0, experts: vec![(1, 2), (3, 1)] },
        BlockRecord { step: 0, block: 1, experts: vec![(0, 3)] },
        BlockRecord { step: 1, block: 0, experts: vec![] },
    ];
    let mut w = TraceWriter::create(&path, &header()).unwrap();
    for r in &recs {
        w.write_block(r.step, r.block, &r.experts).unwrap();
    }
    w.finish().unwrap();
    let r = TraceReader::open(&path).unwrap();
    assert_eq!(r.header(), &header());
    let back: Vec<_> = r.map(|r| r.unwrap()).collect();
    assert_eq!(back, recs);
    // The writer refuses experts outside the model.
    let mut w = TraceWriter::create(&path, &header()).unwrap();
    assert!(w.write_block(0, 1, &[(3, 1)]).is_err());
    assert!(w.write_block(0, 2, &[(0, 1)]).is_err());
}

#[test]
fn reader_streams_and_reports_late_errors_at_their_line() {
    // Records are yielded before a bad line further down is ever read: the reader holds one line.
    let text = format!(
        "{}\n{{\"step\":0,\"block\":0,\"experts\":[[0,1]]}}\n\n{{\"step\":0,\"block\":1,\"experts\":[[2,1]]}}\n{{\"step\":1,\"block\":0,\"experts\":[[9,1]]}}\n",
        serde_json::to_string(&header()).unwrap()
    );
    let mut r = TraceReader::from_reader(Cursor::new(text), "mem").unwrap();
    assert_eq!(r.next().unwrap().unwrap().experts, vec![(0, 1)]);
    assert_eq!(r.next().unwrap().unwrap().block, 1);
    match r.next().unwrap() {
        Err(Error::BadTrace { line, reason, .. }) => {
            assert_eq!(line, 5, "blank lines count");
            assert!(reason.contains("expert 9"), "{reason}");
        }
        other => panic!("expected a bad-trace error, got {other:?}"),
    }
}

#[test]
fn bad_traces_are_errors_with_line_numbers() {
    let h = serde_json::to_string(&header()).unwrap();
    let cases: Vec<(String, usize, &str)> = vec![
        (String::new(), 1, "empty file"),
        ("not json".into(), 1, "bad header"),
        (h.replace("\"version\":1", "\"version\":7"), 1, "version 7"),
        (h.replace("[4,3]", "[4]"), 1, "experts_per_block has 1"),
        (format!("{h}\n{{\"step\":0,\"block\":5,\"experts\":[]}}"), 2, "block 5"),
        (format!("{h}\n{{\"step\":0,\"block\":0,\"experts\":[[4,1]]}}"), 2, "expert 4"),
        (format!("{h}\n{{\"step\":0,\"block\":0,\"experts\":[[1,1],[1,2]]}}"), 2, "twice"),
        (format!("{h}\n{{\"step\":0,\"block\":0,\"experts\":[[1,0]]}}"), 2, "0 tokens"),
        (
            format!(
                "{h}\n{{\"step\":3,\"block\":0,\"experts\":[]}}\n{{\"step\":2,\"block\":0,\"experts\":[]}}"
            ),
            3,
            "after step 3",
        ),
        (format!("{h}\n{{\"step\":0,\"block\":0}}"), 2, "not a block record"),
        (
            format!("{h}\n{{\"step\":0,\"block\":0,\"experts\":[[1,1]],\"x\":1}}"),
            2,
            "unknown field",
        ),
    ];
    for (text, want_line, want) in cases {
        let res = TraceReader::from_reader(Cursor::new(text.clone()), "bad.jsonl")
            .and_then(|r| r.collect::<Result<Vec<_>, _>>());
        match res {
            Err(Error::BadTrace { line, reason, path }) => {
                assert_eq!(line, want_line, "{text:?}: {reason}");
                assert!(reason.contains(want), "{text:?}: {reason}");
                assert_eq!(path.to_str(), Some("bad.jsonl"));
            }
            other => panic!("{text:?}: expected BadTrace, got {other:?}"),
        }
    }
    assert!(matches!(TraceReader::open("/nonexistent/trace.jsonl"), Err(Error::NotFound(_))));
}

#[test]
fn generators_are_deterministic_and_seed_dependent() {
    let cfg = gen_cfg(small_shape(4, 16, 2), 50, 3, 7);
    let a: Vec<_> = Generator::new(cfg.clone()).unwrap().collect();
    let b: Vec<_> = Generator::new(cfg.clone()).unwrap().collect();
    assert_eq!(a, b);
    assert_eq!(a.len(), 50 * 4);
    let c: Vec<_> = Generator::new(GenConfig { seed: 8, ..cfg.clone() }).unwrap().collect();
    assert_ne!(a, c);
    // Every token picks top_k distinct experts: per record, tokens sum to batch × top_k.
    for r in &a {
        assert_eq!(r.experts.iter().map(|e| e.1).sum::<u32>(), 6);
    }
    // Preset shapes generate too (a few steps).
    for name in moe_offload::sim::SHAPE_NAMES {
        let shape = ModelShape::preset(name).unwrap();
        let k = shape.top_k as u32;
        let recs: Vec<_> = Generator::new(gen_cfg(shape, 2, 4, 1)).unwrap().collect();
        assert!(recs.iter().all(|r| r.experts.iter().map(|e| e.1).sum::<u32>() == 4 * k), "{name}");
    }
    assert!(ModelShape::preset("gpt-5").unwrap_err().to_string().contains("deepseek-v3"));
}

/// One expert per record (batch 1, top-1): the sequence of chosen experts per block.
fn chosen(cfg: GenConfig) -> Vec<Vec<u32>> {
    let blocks = cfg.shape.blocks();
    let mut per_block = vec![Vec::new(); blocks];
    for r in Generator::new(cfg).unwrap() {
        assert_eq!(r.experts.len(), 1);
        per_block[r.block as usize].push(r.experts[0].0);
    }
    per_block
}

#[test]
fn generators_hit_their_target_statistics() {
    // Tolerance 0.02 on proportions from ≥ 8000 draws: the standard error is ≤ 0.0056, so the
    // bound is > 3.5σ (a wrong model — e.g. locality ignored — misses by ≥ 0.1).
    let e = 16;
    let n_steps = 4000;
    // Zipf s = 1.2, no locality or correlation: the most popular expert has p1 = 1 / Σ r^-1.2.
    let cfg = GenConfig {
        zipf: 1.2,
        locality: 0.0,
        layer_corr: 0.0,
        ..gen_cfg(small_shape(2, e, 1), n_steps, 1, 3)
    };
    let p1 = 1.0 / (1..=e).map(|r| (r as f64).powf(-1.2)).sum::<f64>();
    for seq in chosen(cfg) {
        let mut counts = vec![0usize; e];
        seq.iter().for_each(|&x| counts[x as usize] += 1);
        let top = *counts.iter().max().unwrap() as f64 / seq.len() as f64;
        assert!((top - p1).abs() < 0.02, "top expert share {top:.3} vs Zipf {p1:.3}");
    }
    // Locality X over uniform popularity: P(same expert as the previous step) = X + (1-X)/E.
    let x = 0.7;
    let cfg = GenConfig {
        zipf: 0.0,
        locality: x,
        layer_corr: 0.0,
        ..gen_cfg(small_shape(2, e, 1), n_steps, 1, 4)
    };
    let want = x + (1.0 - x) / e as f64;
    for seq in chosen(cfg) {
        let rep = seq.windows(2).filter(|w| w[0] == w[1]).count() as f64 / (seq.len() - 1) as f64;
        assert!((rep - want).abs() < 0.02, "repeat rate {rep:.3} vs {want:.3}");
    }
    // Layer correlation C: for each expert of block 0, its most frequent successor in block 1
    // follows it with probability C + (1-C)/E.
    let c = 0.6;
    let cfg = GenConfig {
        zipf: 0.0,
        locality: 0.0,
        layer_corr: c,
        ..gen_cfg(small_shape(2, e, 1), 2 * n_steps, 1, 5)
    };
    let seqs = chosen(cfg);
    let mut pair = vec![vec![0usize; e]; e];
    for (a, b) in seqs[0].iter().zip(&seqs[1]) {
        pair[*a as usize][*b as usize] += 1;
    }
    let follow: usize = pair.iter().map(|row| *row.iter().max().unwrap()).sum();
    let share = follow as f64 / seqs[0].len() as f64;
    let want = c + (1.0 - c) / e as f64;
    assert!((share - want).abs() < 0.02, "layer follow share {share:.3} vs {want:.3}");
}

#[test]
fn rre_generator_routes_within_the_domain_by_token_id() {
    let cfg = GenConfig {
        rre: Some(RreGen { domains: 4, vocab: 100 }),
        locality: 0.5,
        ..gen_cfg(small_shape(3, 32, 2), 300, 1, 9)
    };
    let recs: Vec<_> = Generator::new(cfg.clone()).unwrap().collect();
    assert_eq!(Generator::new(cfg).unwrap().header().top_k, Some(1));
    // Batch 1: one sequence, one domain: every expert lies in the same group of K = 8.
    let group = recs[0].experts[0].0 / 8;
    assert!(recs.iter().all(|r| r.experts.len() == 1 && r.experts[0].0 / 8 == group));
    let bad = GenConfig {
        rre: Some(RreGen { domains: 5, vocab: 100 }),
        ..gen_cfg(small_shape(1, 32, 1), 1, 1, 0)
    };
    assert!(Generator::new(bad).is_err());
}

#[test]
fn belady_bounds_every_policy_and_full_budget_misses_only_first_uses() {
    for seed in 0..4 {
        let cfg = gen_cfg(small_shape(6, 32, 2), 150, 2, seed);
        let trace = MemoryTrace::collect(Generator::new(cfg).unwrap()).unwrap();
        let report = simulate(
            || Ok(trace.source()),
            &PolicyKind::ALL,
            &budgets(&["10%", "25%", "50%", "100%"]),
            &opts(Prefetch::None),
        )
        .unwrap();
        assert_eq!(report.results.len(), 16);
        for chunk in report.results.chunks(4) {
            let best = chunk.iter().find(|r| r.policy == "belady").unwrap().hits;
            for r in chunk {
                assert!(r.hits <= best, "{} {} {} > belady {best}", r.policy, r.budget, r.hits);
                assert!(r.hit_rate_vs_belady.unwrap() <= 1.0 + 1e-12);
                assert_eq!(r.hits + r.misses, report.accesses);
                assert_eq!(r.bytes_transferred, r.misses << 20, "one expert per miss");
            }
        }
        let distinct = {
            let mut seen = std::collections::HashSet::new();
            trace.records.iter().for_each(|r| {
                r.experts.iter().for_each(|e| {
                    seen.insert((r.block, e.0));
                })
            });
            seen.len() as u64
        };
        for r in report.results.iter().filter(|r| r.budget == "100%") {
            assert_eq!(r.misses, distinct, "{} at 100%", r.policy);
        }
    }
}

#[test]
fn file_and_memory_replays_agree_and_absolute_budgets_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.jsonl");
    let cfg = gen_cfg(small_shape(4, 16, 2), 100, 4, 2);
    let trace = MemoryTrace::collect(Generator::new(cfg).unwrap()).unwrap();
    let mut w = TraceWriter::create(&path, &trace.header).unwrap();
    trace.records.iter().for_each(|r| w.write_record(r).unwrap());
    w.finish().unwrap();
    let b = budgets(&["20MiB", "50%"]);
    let from_file =
        simulate(|| TraceReader::open(&path), &PolicyKind::ALL, &b, &opts(Prefetch::Next)).unwrap();
    let from_mem =
        simulate(|| Ok(trace.source()), &PolicyKind::ALL, &b, &opts(Prefetch::Next)).unwrap();
    assert_eq!(from_file, from_mem);
    assert_eq!(from_file.results[0].slots, 20);
    assert_eq!(from_file.results[0].budget, "20MiB");
}

#[test]
fn exact_next_block_prefetch_cuts_stall_time() {
    let cfg = gen_cfg(small_shape(8, 16, 2), 200, 1, 11);
    let trace = MemoryTrace::collect(Generator::new(cfg).unwrap()).unwrap();
    let run = |p| {
        simulate(|| Ok(trace.source()), &[PolicyKind::Lru], &budgets(&["100%", "50%"]), &opts(p))
            .unwrap()
    };
    let (none, next) = (run(Prefetch::None), run(Prefetch::Next));
    for (a, b) in none.results.iter().zip(&next.results) {
        assert!(
            b.stall_seconds < a.stall_seconds,
            "{}: {} !< {}",
            a.budget,
            b.stall_seconds,
            a.stall_seconds
        );
        assert!(b.prefetch_issued > 0 && b.prefetch_used > 0);
    }
}

#[test]
fn simulation_errors_are_clear() {
    let cfg = gen_cfg(small_shape(2, 16, 4), 10, 4, 0);
    let trace = MemoryTrace::collect(Generator::new(cfg).unwrap()).unwrap();
    let run = |b: &[&str]| {
        simulate(|| Ok(trace.source()), &[PolicyKind::Lru], &budgets(b), &opts(Prefetch::None))
    };
    let e = run(&["1%"]).unwrap_err();
    assert!(matches!(e, Error::BudgetTooSmall { .. }), "{e}");
    assert!(e.to_string().contains("one block uses up to"), "{e}");
    assert!(run(&["lots"]).unwrap_err().to_string().contains("budget \"lots\""));
}

#[test]
fn cli_writes_json_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let svg = dir.path().join("r.svg");
    let trace = dir.path().join("t.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_moe-offload"))
        .args(["sim", "--gen", "--shape", "mixtral-8x7b", "--steps", "40", "--batch", "2"])
        .args(["--policies", "lru,lfu,static,belady", "--budgets", "25%,50%,40GiB"])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .arg("--trace-out")
        .arg(&trace)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("belady") && stdout.contains("vs belady"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 12);
    for key in [
        "policy",
        "budget",
        "hits",
        "misses",
        "hit_rate",
        "bytes_transferred",
        "stall_seconds",
        "tokens_per_second",
    ] {
        assert!(results.iter().all(|r| !r[key].is_null()), "{key}");
    }
    assert_eq!(results[0]["budget"], "25%");
    assert_eq!(results[8]["budget"], "40GiB");
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<svg") && svg_text.contains("polyline"), "not an SVG chart");
    // PNG too (text from the embedded bitmap font).
    let png = dir.path().join("r.png");
    let out_png = Command::new(env!("CARGO_BIN_EXE_moe-offload"))
        .args(["sim", "--trace"])
        .arg(&trace)
        .args(["--budgets", "25%,50%", "--plot"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(out_png.status.success(), "{}", String::from_utf8_lossy(&out_png.stderr));
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let bad_ext = Command::new(env!("CARGO_BIN_EXE_moe-offload"))
        .args(["sim", "--trace"])
        .arg(&trace)
        .args(["--plot", "x.gif"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad_ext.stderr).contains(".svg or .png"));
    // The written trace replays to the same table.
    let out2 = Command::new(env!("CARGO_BIN_EXE_moe-offload"))
        .args([
            "sim",
            "--policies",
            "lru,lfu,static,belady",
            "--budgets",
            "25%,50%,40GiB",
            "--trace",
        ])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(out2.status.success(), "{}", String::from_utf8_lossy(&out2.stderr));
    assert_eq!(String::from_utf8_lossy(&out2.stdout), stdout);
    // Errors: unknown policy, both sources missing.
    let bad = Command::new(env!("CARGO_BIN_EXE_moe-offload"))
        .args(["sim", "--gen", "--shape", "mixtral-8x7b", "--policies", "fifo"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lru, lfu, static, belady"));
}
