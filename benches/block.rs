//! One MoE block forward on the CPU: a Mixtral-shaped f32 block (hidden 1024, ffn 3584,
//! 8 experts, top-2) at 1, 16 and 128 tokens, with throughput in expert-weight bytes/s, and the
//! machine's memcpy bandwidth measured in the same run (the 1-token memory floor).
//!
//! `MOE_BENCH_MODEL=DIR` keeps the generated model in DIR (to run `bench block` on it).

#[path = "../tests/blockmath_support/mod.rs"]
mod blockmath_support;

use std::path::PathBuf;
use std::sync::OnceLock;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use moe_offload::DType;
use moe_offload::backend::cpu::CpuBackend;
use moe_offload::block::bench::{SyntheticInput, bench_block, memcpy_gbps};
use moe_offload::block::forward;
use moe_offload::{Checkpoint, ModelSpec};

const SHAPE: blockmath_support::Mixtral = blockmath_support::Mixtral {
    hidden: 1024,
    ffn: 3584,
    experts: 8,
    top_k: 2,
    layers: 1,
    seed: 1,
};

fn model_dir() -> &'static PathBuf {
    static DIR: OnceLock<(PathBuf, Option<tempfile::TempDir>)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let (dir, tmp) = match std::env::var_os("MOE_BENCH_MODEL") {
            Some(d) => (PathBuf::from(d), None),
            None => {
                let t = tempfile::tempdir().expect("temp dir");
                (t.path().to_path_buf(), Some(t))
            }
        };
        if !dir.join("model.safetensors").exists() {
            blockmath_support::write_mixtral(&dir, SHAPE, &DType::F32);
        }
        (dir, tmp)
    })
    .0
}

fn block_forward(c: &mut Criterion) {
    let ckpt = Checkpoint::open(model_dir()).expect("model");
    let spec = ModelSpec::from_checkpoint(&ckpt).expect("spec");
    let block = &spec.blocks[0];
    let backend = CpuBackend::new(0).expect("backend");
    let memcpy = memcpy_gbps(256 << 20, 5);
    println!("memcpy (256 MiB, 1 thread): {memcpy:.2} GB/s; threads: {}", backend.threads());
    for tokens in [1usize, 16, 128] {
        let r = bench_block(&ckpt, &spec, block, &backend, tokens, 2, 11).expect("bench");
        let floor_ms = r.weight_bytes as f64 / (memcpy * 1e9) * 1e3;
        println!(
            "tokens {tokens:>3}: median {:.2} ms, {:.1} GFLOP/s, {:.2} GB/s weights ({} MB), memory floor {:.2} ms, ratio {:.2}",
            r.median_ms,
            r.gflops,
            r.weight_gbps,
            r.weight_bytes / 1_000_000,
            floor_ms,
            r.median_ms / floor_ms
        );
    }
    let mut g = c.benchmark_group("block_forward_mixtral_1024x3584_e8_top2_f32");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(3));
    for tokens in [1usize, 16, 128] {
        let data = SyntheticInput::new(&spec, tokens, 7);
        let input = data.input(tokens);
        let plan = forward(&ckpt, &spec, block, &backend, &input).expect("forward").plan;
        g.throughput(Throughput::Bytes(plan.per_expert.len() as u64 * block.expert_bytes));
        g.bench_function(format!("{tokens}_tokens"), |b| {
            b.iter(|| forward(&ckpt, &spec, block, &backend, &input).expect("forward"))
        });
    }
    g.finish();
}

criterion_group!(benches, block_forward);
criterion_main!(benches);
