//! Golden conformance: every MoE block of every case in `tests/golden/` (tiny models saved by
//! transformers, with inputs and outputs computed by transformers in float32) is recomputed by
//! the CPU backend and compared with the reference output.
//!
//! Tolerance: relative L2 error ≤ 1e-4. Both sides compute in f32 from the same stored weights;
//! what differs is summation order (GEMM blocking, expert accumulation order), which gives
//! relative errors around 1e-7–1e-6 here. 1e-4 leaves room for that while any semantic slip
//! (a wrong expert, weight, capacity or normalisation) shows up as an error of 1e-2 or more.

mod blockmath_support;

use std::path::Path;

use blockmath_support::RefExpert;
use moe_offload::DType;
use moe_offload::backend::cpu::CpuBackend;
use moe_offload::backend::{Backend, ExpertWeights, WeightRef};
use moe_offload::block::{self, BlockInput};
use moe_offload::dtype::{encode_from_f32, to_f32_vec};
use moe_offload::ffn::{Activation, FfnKind};
use moe_offload::rng::SplitMix64;
use moe_offload::{Checkpoint, ModelSpec};
use safetensors::SafeTensors;

const TOLERANCE: f64 = 1e-4;

fn f32s(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| ((*a - *b) as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Runs every `<prefix>.input` of one case; returns (label, error) per block.
fn run_case(case: &str, threads: usize) -> Vec<(String, f64)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(case);
    let ckpt = Checkpoint::open(&dir).unwrap();
    let spec = ModelSpec::from_checkpoint(&ckpt).unwrap();
    let backend = CpuBackend::new(threads).unwrap();
    let bytes = std::fs::read(dir.join("golden.safetensors")).unwrap();
    let golden = SafeTensors::deserialize(&bytes).unwrap();
    let mut results = Vec::new();
    let mut names: Vec<String> = golden.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    for name in names.iter().filter(|n| n.ends_with(".input")) {
        let prefix = name.trim_end_matches(".input");
        let input = golden.tensor(name).unwrap();
        let want = f32s(&golden.tensor(&format!("{prefix}.output")).unwrap());
        let shape = input.shape().to_vec();
        let hidden = f32s(&input);
        let num_tokens = hidden.len() / spec.hidden_size;
        let seq_len = if shape.len() == 3 { shape[1] } else { num_tokens };
        let blk = spec.block(prefix).unwrap();
        let inp =
            BlockInput { hidden: &hidden, num_tokens, seq_len, token_ids: None, domains: None };
        let out = block::forward(&ckpt, &spec, blk, &backend, &inp).unwrap();
        let err = rel_l2(&out.output, &want);
        println!("[{case} threads={threads}] {prefix}: relative L2 error {err:.3e}");
        results.push((format!("{case}/{prefix}"), err));
    }
    assert!(!results.is_empty(), "{case}: no <prefix>.input tensors");
    results
}

fn check(case: &str) {
    for threads in [1, 2] {
        for (label, err) in run_case(case, threads) {
            assert!(
                err <= TOLERANCE,
                "{label} (threads={threads}): relative L2 error {err:.3e} > {TOLERANCE:e}"
            );
        }
    }
}

#[test]
fn golden_mixtral_top2() {
    check("mixtral-top2");
}

#[test]
fn golden_mixtral_bf16() {
    check("mixtral-bf16");
}

#[test]
fn golden_nllb_top2_capacity() {
    check("nllb-top2-capacity");
}

#[test]
fn golden_qwen2moe_shared() {
    check("qwen2moe-shared");
}

#[test]
fn golden_switch_top1_capacity() {
    check("switch-top1-capacity");
}

/// The fast CPU path (streaming kernel for ≤ 64 rows, gemm above: rows 1, 3, 40 and 70; row-split
/// threads; tiled bf16/f16 decoding; unaligned f32) against
/// the f64 reference in `tests/blockmath_support`, on the same (rounded) weights. Tolerance: relative L2
/// 1e-5 — f32 accumulation over ≤ 200 terms gives ~1e-6; a wrong tile, stride or bias shows
/// up at 1e-1.
#[test]
fn cpu_expert_ffn_matches_f64_reference() {
    let (h, f) = (64usize, 200usize);
    let mut r = SplitMix64::new(9);
    let mut mk =
        |n: usize, s: f64| -> Vec<f32> { (0..n).map(|_| (r.normal() * s) as f32).collect() };
    let (g, u, d) = (mk(f * h, 0.2), mk(f * h, 0.2), mk(h * f, 0.1));
    let (bu, bd) = (mk(f, 0.5), mk(h, 0.5));
    let x = mk(70 * h, 1.0);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for unaligned in [false, true] {
            if unaligned && dtype != DType::F32 {
                continue;
            }
            // Weights stored in `dtype`, optionally at an odd offset (as safetensors allows).
            let store = |v: &[f32]| {
                let mut b = vec![0u8; usize::from(unaligned)];
                b.extend(encode_from_f32(&dtype, v));
                b
            };
            let (gb, ub, db, bub, bdb) = (store(&g), store(&u), store(&d), store(&bu), store(&bd));
            let off = usize::from(unaligned);
            let back = |b: &[u8]| -> Vec<f64> {
                to_f32_vec(&dtype, &b[off..]).iter().map(|&v| v as f64).collect()
            };
            for kind in [
                FfnKind::Glu(Activation::Silu),
                FfnKind::Glu(Activation::Gelu),
                FfnKind::Plain(Activation::Relu),
                FfnKind::Plain(Activation::GeluTanh),
            ] {
                let biases = !kind.is_glu();
                fn wr<'a>(
                    dtype: &'a DType,
                    b: &'a [u8],
                    off: usize,
                    rows: usize,
                    cols: usize,
                ) -> WeightRef<'a> {
                    WeightRef { dtype, rows, cols, bytes: &b[off..] }
                }
                let w = ExpertWeights {
                    gate: kind.is_glu().then(|| wr(&dtype, &gb, off, f, h)),
                    up: wr(&dtype, &ub, off, f, h),
                    down: wr(&dtype, &db, off, h, f),
                    up_bias: biases.then(|| wr(&dtype, &bub, off, 1, f)),
                    down_bias: biases.then(|| wr(&dtype, &bdb, off, 1, h)),
                };
                let reference = RefExpert {
                    gate: kind.is_glu().then(|| back(&gb)),
                    up: back(&ub),
                    down: back(&db),
                    up_bias: biases.then(|| back(&bub)),
                    down_bias: biases.then(|| back(&bdb)),
                    hidden: h,
                    ffn: f,
                };
                for rows in [1usize, 3, 40, 70] {
                    let xs = &x[..rows * h];
                    let want = reference.forward(
                        kind,
                        &xs.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                        rows,
                    );
                    for threads in [1, 2, 3] {
                        let be = CpuBackend::new(threads).unwrap();
                        let mut got = vec![0f32; rows * h];
                        be.expert_ffn(kind, &w, xs, rows, &mut got).unwrap();
                        let num: f64 =
                            got.iter().zip(&want).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
                        let den: f64 = want.iter().map(|b| b * b).sum();
                        let err = (num / den).sqrt();
                        assert!(
                            err <= 1e-5,
                            "{dtype} unaligned={unaligned} {kind:?} rows={rows} threads={threads}: {err:.2e}"
                        );
                    }
                }
            }
        }
    }
}
