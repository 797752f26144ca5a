//! Simulator replay speed: expert accesses per second through one (policy, budget) cache on one
//! core, on a DeepSeek-V3-shaped generated trace held in memory (the trace-file parsing cost is
//! excluded: it is the same for every policy and paid once per simulation).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use moe_offload::cache::{FutureIndex, PolicyKind};
use moe_offload::sim::{
    CostModel, GenConfig, Generator, MemoryTrace, ModelShape, Prefetch, Replayer, Survey,
    build_policy,
};

fn replay_speed(c: &mut Criterion) {
    let cfg = GenConfig {
        shape: ModelShape::preset("deepseek-v3").expect("preset"),
        steps: 1000,
        batch: 4,
        seed: 1,
        zipf: 1.0,
        locality: 0.6,
        layer_corr: 0.3,
        rre: None,
    };
    let trace = MemoryTrace::collect(Generator::new(cfg).expect("generator")).expect("trace");
    let survey = Survey::collect(&mut trace.source()).expect("survey");
    let future = Arc::new(FutureIndex::new(survey.counts.len(), &survey.keys).expect("future"));
    let accesses = survey.keys.len() as u64;
    let slots = survey.counts.len() / 4; // a 25% budget
    let mut g = c.benchmark_group("sim_replay_deepseek_v3_25pct");
    g.throughput(Throughput::Elements(accesses));
    g.sample_size(10);
    for kind in PolicyKind::ALL {
        for prefetch in [Prefetch::None, Prefetch::Next] {
            let name =
                format!("{kind}{}", if prefetch == Prefetch::Next { "+prefetch" } else { "" });
            g.bench_function(name, |b| {
                b.iter(|| {
                    let policy = build_policy(kind, &survey, &future, slots).expect("policy");
                    let mut r =
                        Replayer::new(&trace.header, slots, policy, CostModel::default(), prefetch);
                    let recs = &trace.records;
                    for (i, rec) in recs.iter().enumerate() {
                        r.block(rec, recs.get(i + 1)).expect("replay");
                    }
                    black_box(r.finish())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, replay_speed);
criterion_main!(benches);
