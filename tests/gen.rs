//! `gen`: determinism, sharding, every preset's config, RRE map balance, skewed routing,
//! activations that stay finite through many blocks, and bad options.

mod common;

use std::path::{Path, PathBuf};

use common::{cli, inspect_json, path_str, read_config};
use moe_offload::generate::popularity::sample_popularity;
use moe_offload::generate::{GenOptions, PRESETS, generate, parse_size};
use moe_offload::rng::SplitMix64;
use moe_offload::routing::rre::build_map;
use moe_offload::{Checkpoint, DType, ModelSpec};
use tempfile::TempDir;

/// A small glam model: 2 blocks × 8 experts, hidden 32, ffn 64, f32 (about 400 KiB).
fn small_glam() -> GenOptions {
    let mut o = GenOptions::preset("demo-glam").unwrap();
    (o.layers, o.experts, o.hidden, o.ffn) = (2, 8, 32, 64);
    o
}

fn gen_into(o: &GenOptions, tmp: &TempDir, name: &str) -> PathBuf {
    let dir = tmp.path().join(name);
    generate(o, &dir, &|_, _| {}).unwrap();
    dir
}

fn file_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn same_seed_same_bytes_other_seed_other_values() {
    let tmp = TempDir::new().unwrap();
    let o = small_glam();
    let a = gen_into(&o, &tmp, "a");
    let b = gen_into(&o, &tmp, "b");
    assert_eq!(file_bytes(&a), file_bytes(&b), "same options and seed must give identical files");

    let mut o2 = o.clone();
    o2.seed = 1;
    let c = gen_into(&o2, &tmp, "c");
    let (ca, cc) = (Checkpoint::open(&a).unwrap(), Checkpoint::open(&c).unwrap());
    assert_eq!(ca.tensors().len(), cc.tensors().len());
    for name in ca.tensors().keys() {
        let (x, y) = (ca.tensor(name).unwrap(), cc.tensor(name).unwrap());
        assert_eq!(x.shape, y.shape);
        assert_ne!(x.bytes, y.bytes, "{name} is the same under seeds 0 and 1");
    }
    assert_eq!(read_config(&c)["seed"], 1);
}

#[test]
fn sharding_splits_files_without_changing_values() {
    let tmp = TempDir::new().unwrap();
    let o = small_glam();
    let single = gen_into(&o, &tmp, "single");
    let mut so = o.clone();
    so.shard_size = 100_000; // each expert is 3 × 8 KiB: several shards
    let sharded = gen_into(&so, &tmp, "sharded");
    assert!(single.join("model.safetensors").exists());
    assert!(!single.join("model.safetensors.index.json").exists());
    assert!(!sharded.join("model.safetensors").exists());
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sharded.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shards: Vec<PathBuf> = std::fs::read_dir(&sharded)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("-of-"))
        .collect();
    assert!(shards.len() >= 3, "expected several shards, got {}", shards.len());
    for s in &shards {
        let len = std::fs::metadata(s).unwrap().len();
        let header = common::read_header(s);
        let data: u64 = header.values().map(|e| e.len).sum();
        // A shard holds at most shard_size bytes of data unless one tensor alone is larger.
        assert!(data <= 100_000 || header.len() == 1, "{}: {data} bytes", s.display());
        assert!(len > data);
    }
    let (a, b) = (Checkpoint::open(&single).unwrap(), Checkpoint::open(&sharded).unwrap());
    assert_eq!(b.files().len(), shards.len());
    assert_eq!(index["weight_map"].as_object().unwrap().len(), a.tensors().len());
    let total: u64 = a.tensors().values().map(|t| t.len as u64).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    for name in a.tensors().keys() {
        assert_eq!(a.tensor(name).unwrap().bytes, b.tensor(name).unwrap().bytes, "{name}");
    }
    // Only shard_size differs, which is not part of the config.
    assert_eq!(read_config(&single), read_config(&sharded));
    assert_eq!(inspect_json(&single), inspect_json(&sharded));
}

#[test]
fn regenerating_with_fewer_shards_leaves_no_stale_files() {
    let tmp = TempDir::new().unwrap();
    let mut o = small_glam();
    o.shard_size = 100_000;
    let dir = gen_into(&o, &tmp, "m");
    std::fs::write(dir.join("notes.txt"), "kept").unwrap();
    o.shard_size = 1 << 30;
    generate(&o, &dir, &|_, _| {}).unwrap();
    let names: Vec<String> = file_bytes(&dir).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["config.json", "model.safetensors", "notes.txt"]);
    assert!(Checkpoint::open(&dir).is_ok());
}

#[test]
fn progress_reaches_the_total() {
    let tmp = TempDir::new().unwrap();
    let o = small_glam();
    let last = std::cell::Cell::new((0u64, 0u64));
    let summary = generate(&o, &tmp.path().join("m"), &|d, t| {
        assert!(d >= last.get().0, "progress went backwards");
        last.set((d, t));
    })
    .unwrap();
    assert_eq!(last.get(), (summary.data_bytes, summary.data_bytes));
    assert_eq!(summary.data_bytes, o.total_bytes());
    assert_eq!(summary.total_expert_bytes, 2 * 8 * 3 * 32 * 64 * 4);
}

/// Each preset's own dimensions (no file written: the big ones are GBs).
#[test]
fn preset_dimensions() {
    let m = GenOptions::preset("mixtral-8x7b-shape").unwrap();
    assert_eq!(
        (m.hidden, m.ffn, m.experts, m.layers, m.dtype.clone()),
        (4096, 14336, 8, 4, DType::BF16)
    );
    assert_eq!(m.expert_ffn.name(), "swiglu");
    // The 352 MB per expert the design's measurements quote.
    assert_eq!(m.expert_bytes(), 352_321_536);
    let g = GenOptions::preset("glam-64e-shape").unwrap();
    assert_eq!(
        (g.hidden, g.ffn, g.experts, g.layers, g.dtype.clone()),
        (8192, 32768, 64, 2, DType::BF16)
    );
    assert_eq!(g.expert_ffn.name(), "geglu");
    let d = GenOptions::preset("demo-glam").unwrap();
    assert_eq!((d.layers, d.experts), (8, 32));
    // A 20% budget must hold fewer experts than the model has.
    let total = d.expert_bytes() * 32 * 8;
    assert!(total / 5 / d.expert_bytes() < 256);
    let p = GenOptions::preset("demo-pangu").unwrap();
    assert_eq!((p.domains, p.experts), (8, 4));
    assert!(p.vocab >= 1024);
    assert_eq!(PRESETS.len(), 4);
}

/// Every preset written with small dims through the CLI: the config holds the fields the native
/// reader needs, and inspect agrees.
#[test]
fn every_preset_writes_a_loadable_model() {
    let tmp = TempDir::new().unwrap();
    for preset in PRESETS {
        let dir = tmp.path().join(preset);
        let out = cli(&[
            "gen",
            "--preset",
            preset,
            "--out",
            path_str(&dir),
            "--layers",
            "2",
            "--hidden",
            "16",
            "--ffn",
            "24",
            "--seed",
            "7",
        ]);
        assert!(out.status.success(), "{preset}: {}", String::from_utf8_lossy(&out.stderr));
        let cfg = read_config(&dir);
        let o = GenOptions::preset(preset).unwrap();
        assert_eq!(cfg["preset"], preset);
        assert_eq!(cfg["seed"], 7);
        assert_eq!(cfg["hidden_size"], 16);
        assert_eq!(cfg["intermediate_size"], 24);
        assert_eq!(cfg["num_layers"], 2);
        assert_eq!(cfg["dtype"], o.dtype.name().as_str());
        assert_eq!(cfg["expert_ffn"], o.expert_ffn.name());
        let report = inspect_json(&dir);
        assert_eq!(report["hidden_size"], 16);
        assert_eq!(report["dtype"], o.dtype.name().as_str());
        let blocks = report["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[1]["prefix"], "layers.1.moe");
        let glu = if o.expert_ffn.is_glu() { 3 } else { 2 };
        let bias = if o.expert_bias { 16 + 24 } else { 0 };
        let expert = (glu * 16 * 24 + bias) * o.dtype.size() as u64;
        assert_eq!(blocks[0]["expert_bytes"], expert, "{preset}");
        if preset == "demo-pangu" {
            assert_eq!(cfg["model_type"], "pangu_sigma");
            assert_eq!(
                (cfg["num_domains"].as_u64(), cfg["experts_per_domain"].as_u64()),
                (Some(8), Some(4))
            );
            assert!(cfg["map_seed"].is_u64());
            assert_eq!(blocks[0]["router"], "rre");
            assert_eq!(blocks[0]["num_experts"], 32);
            assert_eq!(blocks[0]["top_k"], 1);
        } else {
            assert_eq!(cfg["model_type"], "glam");
            assert_eq!(cfg["num_experts"], o.experts);
            assert_eq!(blocks[0]["router"], "gshard_top2");
            assert_eq!(blocks[0]["num_experts"], o.experts);
            assert_eq!(blocks[0]["top_k"], 2);
        }
    }
}

#[test]
fn rre_maps_are_balanced_seeded_and_differ_per_block() {
    let tmp = TempDir::new().unwrap();
    let mut o = GenOptions::preset("demo-pangu").unwrap();
    (o.hidden, o.ffn, o.vocab) = (8, 8, 1027); // 1027 = 4·256 + 3: uneven on purpose
    let dir = gen_into(&o, &tmp, "p");
    let cfg = read_config(&dir);
    let map_seed = cfg["map_seed"].as_u64().unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let spec = ModelSpec::from_checkpoint(&ckpt).unwrap();
    let k = 4;
    let mut maps = Vec::new();
    for l in 0..o.layers {
        let t = ckpt.tensor(&format!("layers.{l}.moe.rre_map")).unwrap();
        assert_eq!(*t.dtype, DType::I32);
        assert_eq!(t.shape, [1027]);
        let map = t.to_i64().unwrap();
        let mut counts = [0usize; 4];
        for &m in &map {
            assert!((0..k as i64).contains(&m), "map value {m} outside 0..{k}");
            counts[m as usize] += 1;
        }
        // Balanced: each expert receives ⌊V/K⌋ or ⌈V/K⌉ token ids.
        assert!(counts.iter().all(|&c| c == 256 || c == 257), "block {l}: {counts:?}");
        // As documented: build_map(vocab, K, derive(map_seed, block)).
        let expected: Vec<i64> = build_map(1027, k, SplitMix64::derive(map_seed, l as u64))
            .into_iter()
            .map(i64::from)
            .collect();
        assert_eq!(map, expected, "block {l}");
        maps.push(map);
    }
    assert_ne!(maps[0], maps[1], "blocks share one map");
    assert_eq!(spec.blocks[0].rre_map.as_deref(), Some("layers.0.moe.rre_map"));
    // An explicit map seed is recorded and used.
    o.map_seed = Some(99);
    let d2 = gen_into(&o, &tmp, "p2");
    assert_eq!(read_config(&d2)["map_seed"], 99);
}

/// The router skew makes some experts popular: the 20% most chosen experts take a clearly
/// larger share of a sample batch than with skew 0. With 2048 tokens × 2 choices over 32 experts
/// the unskewed top-6 share is 6/32 ≈ 0.19 plus sampling noise of a few points; skew 1.5 gives
/// about 0.5 (measured), so 0.3 and 0.35 separate them with a wide margin.
#[test]
fn router_skew_concentrates_routing() {
    let tmp = TempDir::new().unwrap();
    let mut o = GenOptions::preset("demo-glam").unwrap();
    (o.layers, o.hidden, o.ffn) = (2, 64, 8);
    let share = |o: &GenOptions, name: &str| {
        let dir = gen_into(o, &tmp, name);
        let ckpt = Checkpoint::open(&dir).unwrap();
        let spec = ModelSpec::from_checkpoint(&ckpt).unwrap();
        let pops = sample_popularity(&ckpt, &spec, 2048, 3).unwrap();
        assert_eq!(pops[0].assignments(), 4096);
        pops.iter().map(|p| p.top_share(6)).fold(0.0f64, f64::max)
    };
    let skewed = share(&o, "skewed");
    o.router_skew = 0.0;
    let flat = share(&o, "flat");
    assert!(skewed > 0.35, "skewed top-6 share {skewed}");
    assert!(flat < 0.3, "unskewed top-6 share {flat}");
}

/// h ← h + block(h) stays O(1): each block is computed here in f64 from the stored weights
/// (softmax top-2, SwiGLU), at demo-glam's real width over its 8 blocks and at a small width
/// over 32 blocks. Bounds: every block's output RMS in (0.02, 1) — it changes h visibly but
/// gently — and the RMS of h within [0.5, 2] of a unit-RMS start, far from both vanishing and
/// blowing up (measured: 1.07 after 8 blocks, 1.09 after 32).
#[test]
fn activations_stay_finite_through_many_blocks() {
    let tmp = TempDir::new().unwrap();
    let mut wide = GenOptions::preset("demo-glam").unwrap();
    wide.experts = 4;
    let mut deep = wide.clone();
    (deep.layers, deep.hidden, deep.ffn) = (32, 64, 128);
    for (name, o) in [("wide", wide), ("deep", deep)] {
        let dir = gen_into(&o, &tmp, name);
        let ckpt = Checkpoint::open(&dir).unwrap();
        let (h, f) = (o.hidden, o.ffn);
        let mut rng = SplitMix64::new(5);
        let mut x: Vec<f64> = (0..h).map(|_| rng.normal()).collect();
        let rms = |v: &[f64]| (v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64).sqrt();
        let matvec = |name: &str, v: &[f64], rows: usize| -> Vec<f64> {
            let w = ckpt.tensor(name).unwrap().to_f32().unwrap();
            let cols = v.len();
            (0..rows).map(|r| (0..cols).map(|c| w[r * cols + c] as f64 * v[c]).sum()).collect()
        };
        for l in 0..o.layers {
            let p = format!("layers.{l}.moe");
            let logits = matvec(&format!("{p}.router.weight"), &x, o.experts);
            let mut order: Vec<usize> = (0..o.experts).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let (e1, e2) = (order[0], order[1]);
            let g2 = 1.0 / (1.0 + (logits[e1] - logits[e2]).exp());
            let mut y = vec![0.0; h];
            for (e, g) in [(e1, 1.0 - g2), (e2, g2)] {
                let gate = matvec(&format!("{p}.experts.{e}.gate.weight"), &x, f);
                let up = matvec(&format!("{p}.experts.{e}.up.weight"), &x, f);
                let act: Vec<f64> =
                    gate.iter().zip(&up).map(|(a, b)| a / (1.0 + (-a).exp()) * b).collect();
                let down = matvec(&format!("{p}.experts.{e}.down.weight"), &act, h);
                y.iter_mut().zip(&down).for_each(|(y, d)| *y += g * d);
            }
            let r = rms(&y);
            assert!(r > 0.02 && r < 1.0, "{name}, block {l}: output RMS {r}");
            x.iter_mut().zip(&y).for_each(|(x, y)| *x += y);
            let rx = rms(&x);
            assert!(
                rx.is_finite() && (0.5..2.0).contains(&rx),
                "{name}, after block {l}: RMS {rx}"
            );
        }
    }
}

#[test]
fn bad_options_are_errors() {
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("m");
    assert!(GenOptions::preset("no-such-preset").unwrap_err().to_string().contains("demo-glam"));
    type Edit = Box<dyn Fn(&mut GenOptions)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("--layers", Box::new(|o| o.layers = 0)),
        ("--hidden", Box::new(|o| o.hidden = 0)),
        ("at least 2", Box::new(|o| o.experts = 1)),
        ("--dtype", Box::new(|o| o.dtype = DType::I32)),
        ("--skew", Box::new(|o| o.router_skew = f64::NAN)),
        ("--shard-size", Box::new(|o| o.shard_size = 0)),
    ];
    for (needle, edit) in cases {
        let mut o = small_glam();
        edit(&mut o);
        let e = generate(&o, &out, &|_, _| {}).unwrap_err().to_string();
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        assert!(!out.join("config.json").exists());
    }
    let mut p = GenOptions::preset("demo-pangu").unwrap();
    p.capacity = Some(moe_offload::routing::Capacity::Fixed(4));
    assert!(generate(&p, &out, &|_, _| {}).unwrap_err().to_string().contains("capacity"));
    assert!(parse_size("4 parsecs").is_err());

    for args in [
        vec!["--preset", "nope"],
        vec!["--preset", "demo-glam", "--dtype", "f64"],
        vec!["--preset", "demo-glam", "--shard-size", "lots"],
        vec!["--preset", "demo-glam", "--experts", "1"],
        vec!["--preset", "demo-glam", "--expert-ffn", "tanh"],
        vec!["--preset", "demo-pangu", "--vocab", "0"],
    ] {
        let mut full = vec!["gen", "--out", path_str(&out)];
        full.extend(args.iter());
        let o = cli(&full);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn capacity_options_reach_the_config() {
    let tmp = TempDir::new().unwrap();
    let mut o = small_glam();
    o.capacity = Some(moe_offload::routing::Capacity::Fraction(0.5));
    let dir = gen_into(&o, &tmp, "cap");
    assert_eq!(read_config(&dir)["capacity_fraction"], 0.5);
    let spec = ModelSpec::from_checkpoint(&Checkpoint::open(&dir).unwrap()).unwrap();
    assert!(format!("{:?}", spec.blocks[0].router).contains("Fraction(0.5)"));
}

#[test]
fn ensure_model_generates_only_when_needed() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("m");
    let mut o = small_glam();
    let ensure = |o: &GenOptions| moe_offload::generate::ensure_model(o, &dir, &|_, _| {}).unwrap();
    assert!(ensure(&o), "absent: generated");
    assert!(!ensure(&o), "present and equal: kept");
    o.router_skew = 0.5;
    assert!(ensure(&o), "config differs: regenerated");
    assert_eq!(read_config(&dir)["router_skew"], 0.5);
    // A damaged weights file is regenerated even though the config matches.
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    assert!(ensure(&o), "unloadable: regenerated");
    assert!(!ensure(&o));
}

/// The README's first command, on a temp folder and a short workload: generates the model,
/// runs the comparison (every offloaded run must match the resident one), and a second run
/// reuses the model.
#[test]
fn demo_generates_then_reuses_the_model() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("demo");
    let run = || {
        let out = cli(&["demo", "--dir", path_str(&dir), "--steps", "2", "--batch", "1"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert!(first.contains("generated"), "{first}");
    assert!(first.contains("bit-identical") && !first.contains("differs"), "{first}");
    let second = run();
    assert!(second.contains("already generated"), "{second}");
}

#[test]
fn never_overwrites_a_model_gen_did_not_write() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("hf");
    let golden = common::golden_cases().remove(0);
    common::copy_model(&golden, &dir);
    let before = file_bytes(&dir);
    let e = generate(&small_glam(), &dir, &|_, _| {}).unwrap_err().to_string();
    assert!(e.contains("gen did not write"), "{e}");
    assert_eq!(file_bytes(&dir), before, "the foreign model was touched");
}
