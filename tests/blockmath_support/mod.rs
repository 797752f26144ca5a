//! Test support of the block-math tests (separate from `tests/common`, the shared helpers):
//! writes tiny models in the native (`pangu_sigma`) and HF (`mixtral`,
//! `deepseek_v3`) layouts, and a plain f64 reference of the expert FFN that the fast CPU path
//! is checked against.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use moe_offload::DType;
use moe_offload::dtype::encode_from_f32;
use moe_offload::ffn::FfnKind;
use moe_offload::rng::SplitMix64;
use moe_offload::routing::rre::build_map;
use safetensors::Dtype;

/// One tensor to write.
pub struct T {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl safetensors::View for &T {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn st_dtype(d: &DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
        other => panic!("unsupported {other}"),
    }
}

/// Random normal weights scaled by `scale`, stored as `dtype`.
pub fn weight(rng: &mut SplitMix64, shape: &[usize], scale: f64, dtype: &DType) -> T {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * scale) as f32).collect();
    T { dtype: st_dtype(dtype), shape: shape.to_vec(), data: encode_from_f32(dtype, &v) }
}

/// Writes `config.json` and `model.safetensors` into `dir`.
pub fn write_model(dir: &Path, config: serde_json::Value, tensors: &[(String, T)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap())
        .unwrap();
    let items: Vec<(&str, &T)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::serialize_to_file(
        items,
        None::<HashMap<String, String>>,
        &dir.join("model.safetensors"),
    )
    .unwrap();
}

/// Shape of a tiny PanGu-Σ model.
#[derive(Clone, Copy)]
pub struct Pangu {
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub domains: usize,
    pub k: usize,
    pub vocab: usize,
    pub seed: u64,
}

/// Writes a pangu_sigma model (SwiGLU experts, f32) with maps from `build_map`, plus a
/// non-expert tensor (`embed.weight`) that `extract` must copy.
pub fn write_pangu(dir: &Path, p: Pangu) {
    let mut rng = SplitMix64::new(p.seed);
    let config = serde_json::json!({
        "model_type": "pangu_sigma",
        "hidden_size": p.hidden,
        "intermediate_size": p.ffn,
        "num_layers": p.layers,
        "num_domains": p.domains,
        "experts_per_domain": p.k,
        "vocab_size": p.vocab,
        "expert_ffn": "swiglu",
        "map_seed": p.seed,
    });
    let mut t = Vec::new();
    t.push(("embed.weight".to_string(), weight(&mut rng, &[p.vocab, p.hidden], 1.0, &DType::F32)));
    for l in 0..p.layers {
        let map = build_map(p.vocab, p.k, SplitMix64::derive(p.seed, l as u64));
        t.push((
            format!("layers.{l}.moe.rre_map"),
            T {
                dtype: Dtype::I32,
                shape: vec![p.vocab],
                data: map.iter().flat_map(|v| v.to_le_bytes()).collect(),
            },
        ));
        for e in 0..p.domains * p.k {
            let pre = format!("layers.{l}.moe.experts.{e}");
            let s_in = 1.0 / (p.hidden as f64).sqrt();
            let s_out = 1.0 / (p.ffn as f64).sqrt();
            t.push((
                format!("{pre}.gate.weight"),
                weight(&mut rng, &[p.ffn, p.hidden], s_in, &DType::F32),
            ));
            t.push((
                format!("{pre}.up.weight"),
                weight(&mut rng, &[p.ffn, p.hidden], s_in, &DType::F32),
            ));
            t.push((
                format!("{pre}.down.weight"),
                weight(&mut rng, &[p.hidden, p.ffn], s_out, &DType::F32),
            ));
        }
    }
    write_model(dir, config, &t);
}

/// Shape of a Mixtral model.
#[derive(Clone, Copy)]
pub struct Mixtral {
    pub hidden: usize,
    pub ffn: usize,
    pub experts: usize,
    pub top_k: usize,
    pub layers: usize,
    pub seed: u64,
}

/// Writes a Mixtral model (`layers` sparse blocks) with weights of `dtype`.
pub fn write_mixtral(dir: &Path, m: Mixtral, dtype: &DType) {
    let Mixtral { hidden, ffn, experts, top_k, layers, seed } = m;
    let mut rng = SplitMix64::new(seed);
    let config = serde_json::json!({
        "model_type": "mixtral",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_local_experts": experts,
        "num_experts_per_tok": top_k,
        "hidden_act": "silu",
        "vocab_size": 32,
    });
    let mut t = Vec::new();
    for l in 0..layers {
        let p = format!("model.layers.{l}.block_sparse_moe");
        t.push((
            format!("{p}.gate.weight"),
            weight(&mut rng, &[experts, hidden], 1.0 / (hidden as f64).sqrt(), dtype),
        ));
        for e in 0..experts {
            let s_in = 1.0 / (hidden as f64).sqrt();
            let s_out = 1.0 / (ffn as f64).sqrt();
            t.push((
                format!("{p}.experts.{e}.w1.weight"),
                weight(&mut rng, &[ffn, hidden], s_in, dtype),
            ));
            t.push((
                format!("{p}.experts.{e}.w3.weight"),
                weight(&mut rng, &[ffn, hidden], s_in, dtype),
            ));
            t.push((
                format!("{p}.experts.{e}.w2.weight"),
                weight(&mut rng, &[hidden, ffn], s_out, dtype),
            ));
        }
    }
    write_model(dir, config, &t);
}

/// f64 reference of `x · Wᵀ (+ b)`: `w` is `[n × k]` row-major.
pub fn linear_f64(
    x: &[f64],
    m: usize,
    w: &[f64],
    n: usize,
    k: usize,
    b: Option<&[f64]>,
) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = b.map_or(0.0, |b| b[j]);
            for kk in 0..k {
                s += x[i * k + kk] * w[j * k + kk];
            }
            out[i * n + j] = s;
        }
    }
    out
}

/// f64 activations matching `moe_offload::ffn::Activation`.
pub fn act_f64(kind: FfnKind, v: f64) -> f64 {
    use moe_offload::ffn::Activation::*;
    let a = match kind {
        FfnKind::Glu(a) | FfnKind::Plain(a) => a,
    };
    match a {
        Silu => v / (1.0 + (-v).exp()),
        Relu => v.max(0.0),
        Gelu => 0.5 * v * (1.0 + erf_f64(v / std::f64::consts::SQRT_2)),
        GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
        }
    }
}

/// erf by its Taylor series (|x| small) or continued complement; accurate to ~1e-12 for the
/// ranges used in tests.
pub fn erf_f64(x: f64) -> f64 {
    // Abramowitz–Stegun 7.1.26 is too coarse for a reference; integrate exp(-t²) instead.
    let n = 2000;
    let h = x / n as f64;
    let mut s = 0.0;
    for i in 0..=n {
        let t = i as f64 * h;
        let w = if i == 0 || i == n {
            1.0
        } else if i % 2 == 1 {
            4.0
        } else {
            2.0
        };
        s += w * (-t * t).exp();
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

/// f64 reference expert FFN on f64 copies of the weights.
pub struct RefExpert {
    pub gate: Option<Vec<f64>>,
    pub up: Vec<f64>,
    pub down: Vec<f64>,
    pub up_bias: Option<Vec<f64>>,
    pub down_bias: Option<Vec<f64>>,
    pub hidden: usize,
    pub ffn: usize,
}

impl RefExpert {
    pub fn forward(&self, kind: FfnKind, x: &[f64], m: usize) -> Vec<f64> {
        let (h, f) = (self.hidden, self.ffn);
        let mut a = linear_f64(x, m, &self.up, f, h, self.up_bias.as_deref());
        match kind {
            FfnKind::Glu(_) => {
                let g = linear_f64(x, m, self.gate.as_ref().unwrap(), f, h, None);
                for (u, g) in a.iter_mut().zip(g) {
                    *u *= act_f64(kind, g);
                }
            }
            FfnKind::Plain(_) => {
                for v in a.iter_mut() {
                    *v = act_f64(kind, *v);
                }
            }
        }
        linear_f64(&a, m, &self.down, h, f, self.down_bias.as_deref())
    }
}
