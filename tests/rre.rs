//! PanGu-Σ RRE: determinism, domain isolation, balance of the map, bit-identical extraction,
//! and the errors a caller can cause.

mod blockmath_support;

use blockmath_support::{Pangu, write_pangu};
use moe_offload::backend::cpu::CpuBackend;
use moe_offload::block::{self, BlockInput};
use moe_offload::extract::extract_domain;
use moe_offload::rng::SplitMix64;
use moe_offload::routing::rre::build_map;
use moe_offload::{Checkpoint, Error, ModelSpec};

const P: Pangu = Pangu { hidden: 32, ffn: 48, layers: 2, domains: 3, k: 4, vocab: 50, seed: 11 };

fn model() -> (tempfile::TempDir, Checkpoint, ModelSpec) {
    let dir = tempfile::tempdir().unwrap();
    write_pangu(dir.path(), P);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let spec = ModelSpec::from_checkpoint(&ckpt).unwrap();
    (dir, ckpt, spec)
}

struct Data {
    hidden: Vec<f32>,
    ids: Vec<i64>,
    doms: Vec<i64>,
}

fn data(n: usize, domain: i64, seed: u64) -> Data {
    let mut r = SplitMix64::new(seed);
    Data {
        hidden: (0..n * P.hidden).map(|_| r.normal() as f32).collect(),
        ids: (0..n).map(|_| r.below(P.vocab as u64) as i64).collect(),
        doms: vec![domain; n],
    }
}

fn input(d: &Data) -> BlockInput<'_> {
    BlockInput {
        hidden: &d.hidden,
        num_tokens: d.ids.len(),
        seq_len: d.ids.len(),
        token_ids: Some(&d.ids),
        domains: Some(&d.doms),
    }
}

#[test]
fn map_is_balanced_and_seeded() {
    for (v, k) in [(50, 4), (7, 3), (128, 8), (5, 5)] {
        let map = build_map(v, k, 3);
        let mut counts = vec![0usize; k];
        for &m in &map {
            counts[m as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c == v / k || c == v.div_ceil(k)), "{v}/{k}: {counts:?}");
        assert_eq!(map, build_map(v, k, 3), "same seed, same map");
    }
    assert_ne!(build_map(50, 4, 3), build_map(50, 4, 4), "different seeds differ");
    // The stored maps of the test model are balanced too.
    let (_d, ckpt, spec) = model();
    for b in &spec.blocks {
        let map = ckpt.tensor(b.rre_map.as_deref().unwrap()).unwrap().to_i64().unwrap();
        let mut counts = [0usize; P.k];
        for &m in &map {
            counts[m as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c == P.vocab / P.k || c == P.vocab.div_ceil(P.k)));
    }
}

#[test]
fn routing_follows_domain_and_map_and_is_deterministic() {
    let (_d, ckpt, spec) = model();
    let be = CpuBackend::new(2).unwrap();
    let b = &spec.blocks[1];
    let map = ckpt.tensor(b.rre_map.as_deref().unwrap()).unwrap().to_i64().unwrap();
    for dom in 0..P.domains as i64 {
        let d = data(17, dom, 5 + dom as u64);
        let out1 = block::forward(&ckpt, &spec, b, &be, &input(&d)).unwrap();
        let out2 = block::forward(&ckpt, &spec, b, &be, &input(&d)).unwrap();
        assert_eq!(out1.output, out2.output, "bit-identical on repeat");
        for (t, &e) in out1.plan.expert_ids.iter().enumerate() {
            assert_eq!(e as i64, dom * P.k as i64 + map[d.ids[t] as usize]);
            // Domain isolation: only this domain's experts are used.
            assert!((dom * P.k as i64..(dom + 1) * P.k as i64).contains(&(e as i64)));
        }
        assert!(out1.plan.weights.iter().all(|&w| w == 1.0));
    }
}

#[test]
fn mixed_domains_in_one_call_equal_separate_calls() {
    let (_d, ckpt, spec) = model();
    let be = CpuBackend::new(1).unwrap();
    let b = &spec.blocks[0];
    let mut d = data(12, 0, 9);
    for (i, x) in d.doms.iter_mut().enumerate() {
        *x = (i % 3) as i64;
    }
    let all = block::forward(&ckpt, &spec, b, &be, &input(&d)).unwrap().output;
    for t in 0..12 {
        let one = Data {
            hidden: d.hidden[t * P.hidden..(t + 1) * P.hidden].to_vec(),
            ids: vec![d.ids[t]],
            doms: vec![d.doms[t]],
        };
        let o = block::forward(&ckpt, &spec, b, &be, &input(&one)).unwrap().output;
        // A token's output depends only on its own row, id and domain; the same product in
        // a batch of 1 vs a batch of several may differ by GEMM blocking, so compare closely.
        for (a, c) in o.iter().zip(&all[t * P.hidden..(t + 1) * P.hidden]) {
            assert!((a - c).abs() <= 1e-5 * (1.0 + c.abs()), "{a} vs {c}");
        }
    }
}

#[test]
fn extraction_is_bit_identical_and_refuses_other_domains() {
    let (dir, ckpt, spec) = model();
    let be = CpuBackend::new(2).unwrap();
    for dom in 0..P.domains as i64 {
        let out = tempfile::tempdir().unwrap();
        let rep = extract_domain(dir.path(), dom, out.path()).unwrap();
        assert_eq!(rep.experts_per_domain, P.k);
        let sub = Checkpoint::open(out.path()).unwrap();
        let sub_spec = ModelSpec::from_checkpoint(&sub).unwrap();
        assert_eq!(sub_spec.domain_ids, Some(vec![dom as usize]));
        assert_eq!(sub_spec.blocks[0].num_experts(), P.k);
        assert!(sub.has("embed.weight"), "non-expert tensors are copied");
        assert_eq!(
            sub.tensor("embed.weight").unwrap().bytes,
            ckpt.tensor("embed.weight").unwrap().bytes
        );
        for (b, sb) in spec.blocks.iter().zip(&sub_spec.blocks) {
            let d = data(23, dom, 40 + dom as u64);
            let full = block::forward(&ckpt, &spec, b, &be, &input(&d)).unwrap();
            let part = block::forward(&sub, &sub_spec, sb, &be, &input(&d)).unwrap();
            assert_eq!(full.output, part.output, "domain {dom}, {}: bit-identical", b.prefix);
            let local: Vec<i32> =
                full.plan.expert_ids.iter().map(|e| e - dom as i32 * P.k as i32).collect();
            assert_eq!(part.plan.expert_ids, local);
            // Any other domain is refused, naming the domain.
            let other = (dom + 1) % P.domains as i64;
            let d2 = data(3, other, 1);
            let err = block::forward(&sub, &sub_spec, sb, &be, &input(&d2)).unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{err}");
            assert!(err.to_string().contains(&format!("domain {other}")), "{err}");
        }
    }
    // A domain the model does not have cannot be extracted.
    let out = tempfile::tempdir().unwrap();
    assert!(extract_domain(dir.path(), P.domains as i64, out.path()).is_err());
    assert!(extract_domain(dir.path(), -1, out.path()).is_err());
}

#[test]
fn bad_token_ids_and_domains_are_errors_naming_the_value() {
    let (_d, ckpt, spec) = model();
    let be = CpuBackend::new(1).unwrap();
    let b = &spec.blocks[0];
    let mut d = data(4, 1, 2);
    d.ids[2] = P.vocab as i64;
    let err = block::forward(&ckpt, &spec, b, &be, &input(&d)).unwrap_err().to_string();
    assert!(err.contains(&format!("token id {}", P.vocab)), "{err}");
    d.ids[2] = -3;
    let err = block::forward(&ckpt, &spec, b, &be, &input(&d)).unwrap_err().to_string();
    assert!(err.contains("token id -3"), "{err}");
    let mut d = data(4, P.domains as i64, 2);
    let err = block::forward(&ckpt, &spec, b, &be, &input(&d)).unwrap_err().to_string();
    assert!(err.contains(&format!("domain {}", P.domains)), "{err}");
    d.doms = vec![0; 4];
    let missing = BlockInput { token_ids: None, ..input(&d) };
    let err = block::forward(&ckpt, &spec, b, &be, &missing).unwrap_err().to_string();
    assert!(err.contains("token ids are required"), "{err}");
}
