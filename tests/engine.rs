//! The offload engine's properties: offloaded ≡ resident bit for bit (every policy, prefetch
//! mode, thread count), the budget is never exceeded, bytes moved add up, Belady bounds the
//! other policies, exact RRE prefetch cuts stalls, and errors leave the engine usable.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use moe_offload::Error;
use moe_offload::cache::PolicyKind;
use moe_offload::engine::{Engine, EngineOptions, PrefetchMode};
use moe_offload::generate::{GenOptions, generate};
use moe_offload::workload::{self, RunOutput, Workload};

/// Generates a small model once per test binary (glam: 4 blocks × 16 experts of 96 KiB).
fn glam_model() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut o = GenOptions::preset("demo-glam").unwrap();
        o.layers = 4;
        o.hidden = 64;
        o.ffn = 128;
        o.experts = 16;
        o.seed = 7;
        let p = dir.path().join("glam");
        generate(&o, &p, &|_, _| {}).unwrap();
        (dir, p)
    })
    .1
}

/// A small RRE model: 3 blocks, 4 domains × 4 experts, vocab 256.
fn pangu_model() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut o = GenOptions::preset("demo-pangu").unwrap();
        o.layers = 3;
        o.hidden = 64;
        o.ffn = 128;
        o.domains = 4;
        o.experts = 4;
        o.vocab = 256;
        let p = dir.path().join("pangu");
        generate(&o, &p, &|_, _| {}).unwrap();
        (dir, p)
    })
    .1
}

fn workload() -> Workload {
    Workload { steps: 6, batch: 3, tokens_per_step: 1, seed: 11, locality: 0.5 }
}

fn resident(model: &Path, threads: usize, w: &Workload) -> RunOutput {
    let opts = EngineOptions { threads, ..EngineOptions::default() };
    workload::run_model(model, opts, w, None).unwrap()
}

fn offloaded(
    budget: &str,
    policy: PolicyKind,
    prefetch: PrefetchMode,
    threads: usize,
) -> EngineOptions {
    EngineOptions {
        budget: Some(budget.into()),
        policy,
        prefetch,
        threads,
        copy_threads: 2,
        ..EngineOptions::default()
    }
}

/// Checks the invariants every offloaded run must satisfy.
fn check_accounting(out: &RunOutput, expert_bytes: u64) {
    let s = &out.stats;
    assert!(
        s.peak_resident_bytes <= s.budget_bytes,
        "peak {} > budget {}",
        s.peak_resident_bytes,
        s.budget_bytes
    );
    assert_eq!(s.hits + s.misses, out.accesses.len() as u64);
    // Every miss and every prefetch moves exactly one expert.
    assert_eq!(s.bytes_transferred, (s.misses + s.prefetch_issued) * expert_bytes);
    // The per-block totals add up to the run's.
    assert_eq!(s.per_block.iter().map(|b| b.hits).sum::<u64>(), s.hits);
    assert_eq!(s.per_block.iter().map(|b| b.experts).sum::<u64>(), s.hits + s.misses);
    assert_eq!(s.per_block.iter().map(|b| b.bytes_moved).sum::<u64>(), s.bytes_transferred);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn offloaded_equals_resident_for_every_policy_prefetch_and_thread_count() {
    let model = glam_model();
    let w = workload();
    let eb = Engine::open(model, EngineOptions::default()).unwrap().spec().max_expert_bytes();
    for threads in [1, 2] {
        let reference = resident(model, threads, &w);
        for policy in [PolicyKind::Lru, PolicyKind::Lfu, PolicyKind::Static, PolicyKind::Belady] {
            for prefetch in [PrefetchMode::None, PrefetchMode::Gate] {
                let opts = offloaded("25%", policy, prefetch, threads);
                let out = workload::run_model(model, opts, &w, None).unwrap();
                assert_eq!(
                    bits(&out.hidden),
                    bits(&reference.hidden),
                    "{policy} + {prefetch} prefetch, {threads} threads differs from resident"
                );
                assert_eq!(out.accesses, reference.accesses);
                check_accounting(&out, eb);
                assert!(out.stats.misses > 0, "a 25% budget must miss");
            }
        }
    }
}

#[test]
fn outputs_do_not_depend_on_the_thread_count() {
    let model = glam_model();
    let w = workload();
    assert_eq!(bits(&resident(model, 1, &w).hidden), bits(&resident(model, 2, &w).hidden));
}

#[test]
fn prefill_chunks_and_the_naive_method_match_resident() {
    let model = glam_model();
    let w = Workload { steps: 2, batch: 2, tokens_per_step: 9, ..workload() };
    let reference = resident(model, 2, &w);
    // A budget of a few slots forces a prefill block to run its experts in waves.
    let tight = offloaded("5%", PolicyKind::Lru, PrefetchMode::None, 2);
    let out = workload::run_model(model, tight, &w, None).unwrap();
    assert_eq!(bits(&out.hidden), bits(&reference.hidden));
    let naive =
        EngineOptions { naive: true, ..offloaded("5%", PolicyKind::Lru, PrefetchMode::None, 2) };
    let out = workload::run_model(model, naive, &w, None).unwrap();
    assert_eq!(bits(&out.hidden), bits(&reference.hidden));
    assert_eq!(out.stats.hits, 0, "the naive method keeps nothing");
}

#[test]
fn belady_bounds_every_policy_and_a_full_budget_misses_only_on_first_use() {
    let model = glam_model();
    let w = Workload { steps: 12, ..workload() };
    let mut rates = Vec::new();
    for policy in [PolicyKind::Lru, PolicyKind::Lfu, PolicyKind::Static, PolicyKind::Belady] {
        let opts = offloaded("20%", policy, PrefetchMode::None, 2);
        let out = workload::run_model(model, opts, &w, None).unwrap();
        rates.push((policy, out.stats.hit_rate));
    }
    let belady = rates.iter().find(|(p, _)| *p == PolicyKind::Belady).unwrap().1;
    for (p, r) in &rates {
        assert!(belady >= *r, "belady {belady} < {p} {r}");
    }
    let full = offloaded("100%", PolicyKind::Lru, PrefetchMode::None, 2);
    let out = workload::run_model(model, full, &w, None).unwrap();
    let distinct: std::collections::HashSet<_> = out.accesses.iter().collect();
    assert_eq!(out.stats.misses, distinct.len() as u64);
}

#[test]
fn rre_exact_prefetch_matches_resident_and_cuts_stalls() {
    let model = pangu_model();
    let w = Workload { steps: 8, batch: 2, tokens_per_step: 1, seed: 5, locality: 0.2 };
    let reference = resident(model, 2, &w);
    let eb = Engine::open(model, EngineOptions::default()).unwrap().spec().max_expert_bytes();
    // Emulate a slow link (4 ms per 96 KiB expert) so that copies dominate and the difference
    // between waiting and prefetching is large compared with scheduling noise.
    let link = Some(eb as f64 / 4e-3);
    let mut stalls = Vec::new();
    for prefetch in [PrefetchMode::None, PrefetchMode::Exact] {
        let opts = EngineOptions {
            link_bytes_per_second: link,
            ..offloaded("30%", PolicyKind::Lru, prefetch, 2)
        };
        let out = workload::run_model(model, opts, &w, None).unwrap();
        assert_eq!(bits(&out.hidden), bits(&reference.hidden), "prefetch {prefetch}");
        check_accounting(&out, eb);
        stalls.push((out.stats.stall_seconds, out.stats.prefetch_issued, out.stats.prefetch_used));
    }
    let (none, exact) = (stalls[0], stalls[1]);
    assert!(exact.1 > 0 && exact.2 > 0, "exact prefetch issued {} used {}", exact.1, exact.2);
    assert!(exact.0 < none.0, "stall with exact prefetch {:.4}s ≥ without {:.4}s", exact.0, none.0);
}

#[test]
fn bad_options_give_clear_errors() {
    let model = glam_model();
    let err =
        Engine::open(model, EngineOptions { budget: Some("1KiB".into()), ..Default::default() })
            .unwrap_err();
    assert!(matches!(err, Error::BudgetTooSmall { .. }), "{err}");
    assert!(err.to_string().contains("slot"), "{err}");
    assert!("mru".parse::<PolicyKind>().is_err());
    assert!("sometimes".parse::<PrefetchMode>().is_err());
    let belady = EngineOptions {
        budget: Some("20%".into()),
        policy: PolicyKind::Belady,
        ..Default::default()
    };
    let err = Engine::open(model, belady).unwrap_err();
    assert!(err.to_string().contains("future"), "{err}");
    let err = Engine::open(model, EngineOptions { device: "tpu".into(), ..Default::default() })
        .unwrap_err();
    assert!(err.to_string().contains("tpu"), "{err}");
}

#[test]
fn a_failed_copy_is_an_error_and_the_engine_stays_usable() {
    let model = glam_model();
    let h = 64;
    let tokens = 4;
    let input: Vec<f32> = (0..tokens * h).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
    let resident = Engine::open(model, EngineOptions::default()).unwrap();
    let mut want = input.clone();
    resident.step(&mut want, tokens, 1, None, None).unwrap();

    let engine =
        Engine::open(model, offloaded("20%", PolicyKind::Lru, PrefetchMode::None, 2)).unwrap();
    engine.inject_copy_failure(2);
    let mut h1 = input.clone();
    let err = engine.step(&mut h1, tokens, 1, None, None).unwrap_err();
    assert!(matches!(err, Error::Transfer { .. }), "{err}");
    assert!(err.to_string().contains("injected"), "{err}");
    // The next call works and gives the resident answer.
    let mut h2 = input.clone();
    engine.step(&mut h2, tokens, 1, None, None).unwrap();
    assert_eq!(bits(&h2), bits(&want));
}

#[test]
fn the_engine_is_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
    let model = glam_model();
    let engine =
        Engine::open(model, offloaded("25%", PolicyKind::Lru, PrefetchMode::None, 1)).unwrap();
    let h = engine.spec().hidden_size;
    let input: Vec<f32> = (0..2 * h).map(|i| (i as f32 * 0.37).sin()).collect();
    let results: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut x = input.clone();
                    engine.step(&mut x, 2, 1, None, None).unwrap();
                    x
                })
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(results.windows(2).all(|w| bits(&w[0]) == bits(&w[1])));
}
