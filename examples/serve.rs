//! How a serving stack uses moe-offload: open a model once with an expert budget, share the
//! engine between request threads, push hidden states through every MoE block, read the stats.
//!
//! ```sh
//! cargo run --release --example serve            # generates a small model in a temp dir
//! cargo run --release --example serve -- DIR     # or uses the model folder DIR
//! ```

use std::sync::Arc;

use moe_offload::cache::PolicyKind;
use moe_offload::engine::{Engine, EngineOptions, PrefetchMode};
use moe_offload::generate::{GenOptions, generate};

fn main() -> moe_offload::Result<()> {
    // A model folder: given, or a small demo-shaped one generated for this example.
    let tmp = std::env::temp_dir().join("moe-offload-serve-example");
    let model = match std::env::args().nth(1) {
        Some(dir) => dir.into(),
        None => {
            let mut opts = GenOptions::preset("demo-glam")?;
            opts.layers = 4;
            generate(&opts, &tmp, &|_, _| {})?;
            tmp.clone()
        }
    };

    // One engine per model and device: experts stay mapped; a quarter of them fit the cache.
    let engine = Arc::new(Engine::open(
        &model,
        EngineOptions {
            budget: Some("25%".into()),
            policy: PolicyKind::Lru,
            prefetch: PrefetchMode::Gate,
            ..EngineOptions::default()
        },
    )?);
    let h = engine.spec().hidden_size;
    println!("{} MoE blocks, hidden {h}", engine.spec().blocks.len());

    // Request threads share the engine; calls are served one at a time and are thread-safe.
    let workers: Vec<_> = (0..3)
        .map(|r| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || -> moe_offload::Result<f32> {
                let tokens = 2;
                // Stand-in for the attention output of this request's new tokens.
                let mut hidden: Vec<f32> =
                    (0..tokens * h).map(|i| ((i * 7 + r * 13) % 23) as f32 / 23.0 - 0.5).collect();
                for _step in 0..8 {
                    // All MoE blocks in order (h ← rmsnorm(h + moe(h))); `forward_block` runs one.
                    engine.step(&mut hidden, tokens, 1, None, None)?;
                }
                Ok(hidden[0])
            })
        })
        .collect();
    for w in workers {
        let first = w.join().expect("request thread panicked")?;
        println!("request done, hidden[0] = {first:.4}");
    }

    let s = engine.stats();
    println!(
        "{} tokens, hit rate {:.1}%, {:.1} MB moved, peak resident {:.1} MB of a {:.1} MB budget, prefetch {}/{} used",
        s.tokens,
        100.0 * s.hit_rate,
        s.bytes_transferred as f64 / 1e6,
        s.peak_resident_bytes as f64 / 1e6,
        s.budget_bytes as f64 / 1e6,
        s.prefetch_used,
        s.prefetch_issued
    );
    Ok(())
}
