//! Routers on hand-made and random logits (plan invariants), and a DeepSeek-V3 block (grouped
//! sigmoid + shared expert; no golden in the repository) against an independent f64 reference.

mod blockmath_support;

use blockmath_support::{RefExpert, T, weight, write_model};
use moe_offload::DType;
use moe_offload::backend::cpu::CpuBackend;
use moe_offload::block::{self, BlockInput};
use moe_offload::ffn::{Activation, FfnKind};
use moe_offload::rng::SplitMix64;
use moe_offload::routing::gshard::{GShardParams, gshard_top2};
use moe_offload::routing::switch::switch_top1;
use moe_offload::routing::topk::softmax_top_k;
use moe_offload::routing::{Capacity, RoutingPlan};
use moe_offload::{Checkpoint, ModelSpec};

fn logits(n: usize, e: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n * e).map(|_| (r.normal() * 2.0) as f32).collect()
}

/// per_expert agrees with expert_ids/weights: ascending experts, ascending tokens.
fn check_plan(p: &RoutingPlan) {
    let mut seen = 0;
    let mut last = None;
    for b in &p.per_expert {
        assert!(last < Some(b.expert));
        last = Some(b.expert);
        assert!(b.tokens.windows(2).all(|w| w[0] < w[1]));
        for (&t, &w) in b.tokens.iter().zip(&b.weights) {
            let s =
                (0..p.k).find(|&s| p.expert_ids[t as usize * p.k + s] == b.expert as i32).unwrap();
            assert_eq!(p.weights[t as usize * p.k + s], w);
            seen += 1;
        }
    }
    assert_eq!(seen, p.expert_ids.iter().filter(|&&e| e >= 0).count());
}

#[test]
fn softmax_top_k_plans() {
    let l = logits(50, 8, 1);
    for (k, renorm) in [(1, true), (2, true), (4, false), (8, true)] {
        let p = softmax_top_k(&l, 50, 8, k, renorm);
        check_plan(&p);
        for t in 0..50 {
            let w = &p.weights[t * k..(t + 1) * k];
            assert!(w.windows(2).all(|x| x[0] >= x[1]), "weights descending");
            let s: f32 = w.iter().sum();
            if renorm {
                assert!((s - 1.0).abs() < 1e-5);
            } else {
                assert!(s <= 1.0 + 1e-5);
            }
        }
    }
}

#[test]
fn gshard_capacity_is_respected_and_first_choices_win() {
    let (n, e) = (64, 4);
    let l = logits(n, e, 2);
    for cap in [1usize, 5, 16, 40] {
        for bp in [false, true] {
            for before in [false, true] {
                let p = GShardParams {
                    capacity: Some(Capacity::Fixed(cap)),
                    normalize_before_dropping: before,
                    batch_prioritized: bp,
                };
                let plan = gshard_top2(&l, n, e, p);
                check_plan(&plan);
                for b in &plan.per_expert {
                    assert!(b.tokens.len() <= cap, "capacity {cap} exceeded");
                }
                // With no capacity the same tokens choose the same experts.
                let free = gshard_top2(&l, n, e, GShardParams { capacity: None, ..p });
                let mut firsts = vec![0usize; e];
                for t in 0..n {
                    firsts[free.expert_ids[t * 2] as usize] += 1;
                }
                for t in 0..n {
                    let (a, b) = (plan.expert_ids[t * 2], plan.expert_ids[t * 2 + 1]);
                    assert!(a < 0 || a == free.expert_ids[t * 2]);
                    assert!(b < 0 || b == free.expert_ids[t * 2 + 1]);
                    // A kept second choice implies its expert's first choices fit.
                    if b >= 0 {
                        assert!(firsts[b as usize] < cap);
                    }
                    if !before {
                        let s = plan.weights[t * 2] + plan.weights[t * 2 + 1];
                        assert!(a < 0 && b < 0 && s == 0.0 || (s - 1.0).abs() < 1e-5);
                    }
                }
            }
        }
    }
}

#[test]
fn switch_capacity_counts_each_sequence() {
    let (seqs, len, e) = (3, 20, 4);
    let l = logits(seqs * len, e, 3);
    let (plan, top) = switch_top1(&l, seqs * len, len, e, Some(3));
    check_plan(&plan);
    for s in 0..seqs {
        let mut counts = vec![0; e];
        for t in s * len..(s + 1) * len {
            if plan.expert_ids[t] >= 0 {
                counts[plan.expert_ids[t] as usize] += 1;
                assert_eq!(plan.weights[t], top[t]);
            } else {
                assert_eq!(plan.weights[t], 0.0);
            }
        }
        assert!(counts.iter().all(|&c| c <= 3));
    }
}

/// Writes a tiny deepseek_v3 model: 8 experts in 4 groups, top-3 of 2 kept groups, one shared
/// expert, a correction bias large enough to change choices.
fn write_deepseek(dir: &std::path::Path, norm: bool) {
    let (h, f, e) = (16, 24, 8);
    let mut r = SplitMix64::new(77);
    let cfg = serde_json::json!({
        "model_type": "deepseek_v3", "hidden_size": h, "moe_intermediate_size": f,
        "num_hidden_layers": 1, "n_routed_experts": e, "num_experts_per_tok": 3,
        "n_group": 4, "topk_group": 2, "norm_topk_prob": norm, "routed_scaling_factor": 2.5,
        "first_k_dense_replace": 0, "n_shared_experts": 1, "hidden_act": "silu", "vocab_size": 10,
    });
    let p = "model.layers.0.mlp";
    let mut t: Vec<(String, T)> = vec![
        (format!("{p}.gate.weight"), weight(&mut r, &[e, h], 0.5, &DType::F32)),
        (format!("{p}.gate.e_score_correction_bias"), weight(&mut r, &[e], 0.3, &DType::F32)),
    ];
    for x in 0..e {
        for (n, s) in [("gate_proj", [f, h]), ("up_proj", [f, h]), ("down_proj", [h, f])] {
            t.push((format!("{p}.experts.{x}.{n}.weight"), weight(&mut r, &s, 0.3, &DType::F32)));
        }
    }
    for (n, s) in [("gate_proj", [f, h]), ("up_proj", [f, h]), ("down_proj", [h, f])] {
        t.push((format!("{p}.shared_experts.{n}.weight"), weight(&mut r, &s, 0.3, &DType::F32)));
    }
    write_model(dir, cfg, &t);
}

fn f64s(ckpt: &Checkpoint, name: &str) -> Vec<f64> {
    ckpt.tensor(name).unwrap().to_f32().unwrap().iter().map(|&v| v as f64).collect()
}

fn ref_expert(ckpt: &Checkpoint, pre: &str, h: usize, f: usize) -> RefExpert {
    RefExpert {
        gate: Some(f64s(ckpt, &format!("{pre}.gate_proj.weight"))),
        up: f64s(ckpt, &format!("{pre}.up_proj.weight")),
        down: f64s(ckpt, &format!("{pre}.down_proj.weight")),
        up_bias: None,
        down_bias: None,
        hidden: h,
        ffn: f,
    }
}

/// Relative tolerance of the block against the f64 reference: f32 products over ≤ 24 terms
/// of O(1) values carry ~1e-6 relative error; 1e-4 is far below any routing mistake.
const TOL: f64 = 1e-4;

#[test]
fn deepseek_v3_block_matches_f64_reference() {
    for norm in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        write_deepseek(dir.path(), norm);
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        let spec = ModelSpec::from_checkpoint(&ckpt).unwrap();
        let b = &spec.blocks[0];
        let (h, f, e, n) = (16usize, 24usize, 8usize, 30usize);
        let mut r = SplitMix64::new(5);
        let x: Vec<f32> = (0..n * h).map(|_| r.normal() as f32).collect();
        let be = CpuBackend::new(2).unwrap();
        let inp =
            BlockInput { hidden: &x, num_tokens: n, seq_len: n, token_ids: None, domains: None };
        let out = block::forward(&ckpt, &spec, b, &be, &inp).unwrap();

        let p = "model.layers.0.mlp";
        let gw = f64s(&ckpt, &format!("{p}.gate.weight"));
        let bias = f64s(&ckpt, &format!("{p}.gate.e_score_correction_bias"));
        let experts: Vec<RefExpert> =
            (0..e).map(|x| ref_expert(&ckpt, &format!("{p}.experts.{x}"), h, f)).collect();
        let shared = ref_expert(&ckpt, &format!("{p}.shared_experts"), h, f);
        let kind = FfnKind::Glu(Activation::Silu);
        let mut changed_by_bias = 0;
        for t in 0..n {
            let xt: Vec<f64> = x[t * h..(t + 1) * h].iter().map(|&v| v as f64).collect();
            let s: Vec<f64> = (0..e)
                .map(|j| {
                    let l: f64 = (0..h).map(|i| xt[i] * gw[j * h + i]).sum();
                    1.0 / (1.0 + (-l).exp())
                })
                .collect();
            let c: Vec<f64> = (0..e).map(|j| s[j] + bias[j]).collect();
            // Groups of 2: score = sum of both members (top-2 of 2).
            let mut groups: Vec<usize> = (0..4).collect();
            groups
                .sort_by(|&a, &b| (c[2 * b] + c[2 * b + 1]).total_cmp(&(c[2 * a] + c[2 * a + 1])));
            let masked: Vec<f64> =
                (0..e).map(|j| if groups[..2].contains(&(j / 2)) { c[j] } else { 0.0 }).collect();
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| masked[b].total_cmp(&masked[a]));
            let chosen = &order[..3];
            let mut by_s: Vec<usize> = (0..e).collect();
            by_s.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
            if by_s[..3].iter().any(|x| !chosen.contains(x)) {
                changed_by_bias += 1;
            }
            let sum: f64 = chosen.iter().map(|&j| s[j]).sum::<f64>() + 1e-20;
            let mut y = shared.forward(kind, &xt, 1);
            for &j in chosen {
                let w = if norm { s[j] / sum } else { s[j] } * 2.5;
                let ye = experts[j].forward(kind, &xt, 1);
                for i in 0..h {
                    y[i] += w * ye[i];
                }
            }
            let mut got_ids: Vec<i32> = out.plan.expert_ids[t * 3..t * 3 + 3].to_vec();
            got_ids.sort();
            let mut want_ids: Vec<i32> = chosen.iter().map(|&j| j as i32).collect();
            want_ids.sort();
            assert_eq!(got_ids, want_ids, "token {t}");
            let got = &out.output[t * h..(t + 1) * h];
            let num: f64 = got.iter().zip(&y).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
            let den: f64 = y.iter().map(|b| b * b).sum();
            assert!((num / den).sqrt() <= TOL, "token {t}: {}", (num / den).sqrt());
        }
        assert!(changed_by_bias > 0, "the test bias should change some choices");
    }
}

/// The offload engine's path: experts packed into slot-like buffers (`ExpertTensors::names()`
/// order), computed in reverse order, combined — must be bit-identical to the resident
/// forward (same products, and `combine` sums in slot order whatever the compute order).
#[test]
fn packed_experts_in_any_order_give_bit_identical_output() {
    for case in ["mixtral-bf16", "qwen2moe-shared", "nllb-top2-capacity", "switch-top1-capacity"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(case);
        let ckpt = Checkpoint::open(&dir).unwrap();
        let spec = ModelSpec::from_checkpoint(&ckpt).unwrap();
        let be = CpuBackend::new(2).unwrap();
        for b in &spec.blocks {
            let h = spec.hidden_size;
            let n = 37;
            let mut r = SplitMix64::new(3);
            let x: Vec<f32> = (0..n * h).map(|_| r.normal() as f32).collect();
            let inp = BlockInput {
                hidden: &x,
                num_tokens: n,
                seq_len: n,
                token_ids: None,
                domains: None,
            };
            let resident = block::forward(&ckpt, &spec, b, &be, &inp).unwrap();
            let plan = block::route(&ckpt, &spec, b, &be, &inp).unwrap();
            assert_eq!(plan, resident.plan);
            let mut outs = vec![Vec::new(); plan.per_expert.len()];
            for (i, batch) in plan.per_expert.iter().enumerate().rev() {
                let mut slot = Vec::new();
                for name in b.experts[batch.expert].names() {
                    slot.extend_from_slice(ckpt.tensor(name).unwrap().bytes);
                }
                assert_eq!(slot.len() as u64, b.expert_bytes);
                let w = block::expert_weights_packed(b, h, &spec.dtype, &slot).unwrap();
                outs[i] = block::expert_output(&be, b.ffn, &w, &inp, h, batch).unwrap();
            }
            let shared = block::shared_expert_output(&ckpt, b, h, &be, &inp).unwrap();
            let out = block::combine(b, h, &plan, &inp, &outs, shared.as_deref());
            assert_eq!(out, resident.output, "{case} {}", b.prefix);
        }
    }
}

/// NLLB-MoE (GShard) counts capacity over the whole flattened call, so splitting the same
/// tokens into sequences changes nothing; Switch counts per sequence, so it does.
#[test]
fn capacity_scope_nllb_whole_call_switch_per_sequence() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let be = CpuBackend::new(1).unwrap();
    for (case, per_sequence) in [("nllb-top2-capacity", false), ("switch-top1-capacity", true)] {
        let ckpt = Checkpoint::open(root.join(case)).unwrap();
        let spec = ModelSpec::from_checkpoint(&ckpt).unwrap();
        let b = &spec.blocks[0];
        let n = 48;
        let mut r = SplitMix64::new(8);
        let x: Vec<f32> = (0..n * spec.hidden_size).map(|_| r.normal() as f32).collect();
        let route = |seq_len| {
            let inp =
                BlockInput { hidden: &x, num_tokens: n, seq_len, token_ids: None, domains: None };
            block::route(&ckpt, &spec, b, &be, &inp).unwrap()
        };
        let (one, split) = (route(n), route(n / 2));
        assert_eq!(one != split, per_sequence, "{case}");
    }
}
