//! `inspect --json` on every golden case, checked against values derived here from
//! `config.json` and a hand-read safetensors header — not from the library under test.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{HeaderEntry, golden_cases, inspect_json, model_header, read_config};
use serde_json::Value;

/// What inspect should say about one block.
#[derive(Debug, PartialEq)]
struct Expected {
    prefix: String,
    router: &'static str,
    num_experts: u64,
    top_k: u64,
    expert_bytes: u64,
    shared_expert_bytes: u64,
}

/// Router tensor suffixes of the HF families: a block is wherever one of these exists.
const ROUTER_SUFFIXES: [&str; 3] =
    [".block_sparse_moe.gate.weight", ".mlp.gate.weight", ".router.classifier.weight"];

/// Execution order: encoder blocks, then decoder blocks, each by layer number.
fn order_key(prefix: &str) -> (u8, u64) {
    let side = if prefix.contains("decoder") { 1 } else { 0 };
    let layer = prefix
        .split('.')
        .find_map(|p| p.parse::<u64>().ok())
        .expect("a layer number in the prefix");
    (side, layer)
}

fn sum_under(header: &BTreeMap<String, HeaderEntry>, prefix: &str) -> u64 {
    header.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, e)| e.len).sum()
}

fn expected_blocks(dir: &Path) -> (Vec<Expected>, String, u64) {
    let cfg = read_config(dir);
    let header = model_header(dir);
    let model_type = cfg["model_type"].as_str().unwrap();
    let (router, top_k) = match model_type {
        "mixtral" | "qwen2_moe" | "qwen3_moe" => {
            ("softmax_topk", cfg["num_experts_per_tok"].as_u64().unwrap())
        }
        "nllb-moe" | "nllb_moe" => ("gshard_top2", 2),
        "switch_transformers" => ("switch_top1", 1),
        other => panic!("golden case of unexpected family {other}"),
    };
    let mut prefixes: Vec<String> = header
        .keys()
        .filter_map(|n| {
            ROUTER_SUFFIXES.iter().find_map(|s| {
                n.strip_suffix(s).map(|p| {
                    // The prefix keeps the part of the suffix before the router tensor name.
                    let keep = s
                        .trim_end_matches(".gate.weight")
                        .trim_end_matches(".router.classifier.weight");
                    format!("{p}{keep}")
                })
            })
        })
        .collect();
    prefixes.sort_by_key(|p| order_key(p));
    let mut dtype = String::new();
    let blocks = prefixes
        .into_iter()
        .map(|p| {
            let gate = header
                .get(&format!("{p}.gate.weight"))
                .or_else(|| header.get(&format!("{p}.router.classifier.weight")))
                .unwrap();
            let num_experts = gate.shape[0] as u64;
            // Expert 0's tensors: `experts.0.` (mixtral, qwen) or `experts.expert_0.`
            // (nllb, switch).
            let e0 = [format!("{p}.experts.0."), format!("{p}.experts.expert_0.")]
                .into_iter()
                .find(|x| header.keys().any(|n| n.starts_with(x.as_str())))
                .unwrap();
            let first = header.iter().find(|(n, _)| n.starts_with(&e0)).unwrap().1;
            dtype = first.dtype.to_ascii_lowercase();
            let shared = sum_under(&header, &format!("{p}.shared_expert."))
                + sum_under(&header, &format!("{p}.shared_expert_gate."));
            Expected {
                prefix: p,
                router,
                num_experts,
                top_k,
                expert_bytes: sum_under(&header, &e0),
                shared_expert_bytes: shared,
            }
        })
        .collect();
    (blocks, dtype, cfg.get("hidden_size").or(cfg.get("d_model")).and_then(Value::as_u64).unwrap())
}

#[test]
fn inspect_json_matches_config_and_header_on_every_golden_case() {
    for dir in golden_cases() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let (blocks, dtype, hidden) = expected_blocks(&dir);
        assert!(!blocks.is_empty(), "{name}: no MoE blocks derived");
        let got = inspect_json(&dir);
        let cfg = read_config(&dir);
        let family = cfg["model_type"].as_str().unwrap().replace("nllb-moe", "nllb_moe");
        assert_eq!(got["family"], family.as_str(), "{name}: family");
        assert_eq!(got["hidden_size"], hidden, "{name}: hidden_size");
        assert_eq!(got["dtype"], dtype.as_str(), "{name}: dtype");
        let got_blocks = got["blocks"].as_array().unwrap();
        assert_eq!(got_blocks.len(), blocks.len(), "{name}: number of blocks");
        for (g, e) in got_blocks.iter().zip(&blocks) {
            assert_eq!(g["prefix"], e.prefix.as_str(), "{name}: prefix");
            assert_eq!(g["router"], e.router, "{name}: {} router", e.prefix);
            assert_eq!(g["num_experts"], e.num_experts, "{name}: {} num_experts", e.prefix);
            assert_eq!(g["top_k"], e.top_k, "{name}: {} top_k", e.prefix);
            assert_eq!(g["expert_bytes"], e.expert_bytes, "{name}: {} expert_bytes", e.prefix);
            assert_eq!(
                g["shared_expert_bytes"], e.shared_expert_bytes,
                "{name}: {} shared_expert_bytes",
                e.prefix
            );
        }
        let total: u64 = blocks.iter().map(|b| b.num_experts * b.expert_bytes).sum();
        assert_eq!(got["total_expert_bytes"], total, "{name}: total_expert_bytes");
    }
}

#[test]
fn inspect_table_names_every_block() {
    for dir in golden_cases() {
        let out = common::cli(&["inspect", "--model", common::path_str(&dir)]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        for e in expected_blocks(&dir).0 {
            assert!(text.contains(&e.prefix), "{}: table lacks {}", dir.display(), e.prefix);
        }
        assert!(text.contains("total expert bytes"));
    }
}
