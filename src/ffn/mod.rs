//! Expert FFN forms: what an expert computes from its weights, independent of any device.
//!
//! * GLU forms (`down(act(gate·x) ⊙ up·x)`): SwiGLU (Mixtral, Qwen, DeepSeek) and GEGLU (GLaM).
//! * Plain forms (`wo(act(wi·x + b1)) + b2`): ReLU (NLLB, Switch) or GELU, biases optional.
//!
//! Weights follow `nn.Linear`: stored `[out, in]`, applied as `y = x·Wᵀ`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A pointwise activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x·σ(x)` (a.k.a. swish).
    Silu,
    /// Exact GELU, `x·Φ(x)` with the error function.
    Gelu,
    /// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Parses an HF `hidden_act` / `activation_function` / `dense_act_fn` name.
    pub fn from_hf_name(name: &str) -> Result<Activation> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_tanh" => {
                Ok(Activation::GeluTanh)
            }
            "relu" => Ok(Activation::Relu),
            other => Err(Error::InvalidOption(format!("unsupported activation {other:?}"))),
        }
    }

    /// Applies the activation to one value, in f32.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2)),
            Activation::GeluTanh => {
                const C: f32 = 0.797_884_6; // sqrt(2/π)
                0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
            }
            Activation::Relu => x.max(0.0),
        }
    }
}

/// What an expert computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "form", content = "act")]
pub enum FfnKind {
    /// `down(act(gate·x) ⊙ (up·x))`: SwiGLU with `Silu`, GEGLU with `Gelu`/`GeluTanh`.
    Glu(Activation),
    /// `down(act(up·x + b_up)) + b_down`, biases optional.
    Plain(Activation),
}

impl FfnKind {
    /// Short name for tables: `swiglu`, `geglu`, `relu`, `gelu`, …
    pub fn name(&self) -> &'static str {
        match self {
            FfnKind::Glu(Activation::Silu) => "swiglu",
            FfnKind::Glu(Activation::Gelu | Activation::GeluTanh) => "geglu",
            FfnKind::Glu(Activation::Relu) => "reglu",
            FfnKind::Plain(Activation::Relu) => "relu",
            FfnKind::Plain(Activation::Gelu | Activation::GeluTanh) => "gelu",
            FfnKind::Plain(Activation::Silu) => "silu",
        }
    }

    /// Parses the native config's `expert_ffn` value.
    pub fn parse(name: &str) -> Result<FfnKind> {
        match name {
            "swiglu" => Ok(FfnKind::Glu(Activation::Silu)),
            "geglu" => Ok(FfnKind::Glu(Activation::Gelu)),
            "relu" => Ok(FfnKind::Plain(Activation::Relu)),
            "gelu" => Ok(FfnKind::Plain(Activation::Gelu)),
            other => Err(Error::InvalidOption(format!(
                "unknown expert FFN form {other:?} (swiglu, geglu, relu, gelu)"
            ))),
        }
    }

    /// Whether the form has a gate projection.
    pub fn is_glu(&self) -> bool {
        matches!(self, FfnKind::Glu(_))
    }
}

/// The error function, float32, Abramowitz–Stegun 7.1.26 refined: max abs error ~1e-7, enough
/// for GELU at the 1e-4 conformance tolerance.
pub fn erf(x: f32) -> f32 {
    // Evaluate in f64 for accuracy; this is not on a hot path for the GLU families.
    let x = x as f64;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = 1.0
        - t * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    (if x >= 0.0 { y } else { -y }) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_at_known_points() {
        assert_eq!(Activation::Relu.apply(-1.0), 0.0);
        assert!((Activation::Silu.apply(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((Activation::Gelu.apply(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((Activation::GeluTanh.apply(1.0) - 0.841_192).abs() < 1e-5);
        assert!((erf(0.5) - 0.520_499_9).abs() < 1e-6);
    }
}
