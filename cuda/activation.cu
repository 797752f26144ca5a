// Expert activations between the two GEMMs. Inputs are the f32 GEMM outputs; the output is in
// the weight dtype because it is the input of the down GEMM. Biases are stored in the weight
// dtype, like the checkpoint. `{op}_{dtype}` names, dtype = weight dtype.

// GLU: out = act(g) * (u + up_bias), [rows x cols] (SwiGLU with SiLU, GEGLU with GELU).
#define GLU(NAME, T, FROM, TO)                                                             \
    extern "C" __global__ void glu_##NAME(const float* g, const float* u, const T* bias,     \
                                          T* out, unsigned int rows, unsigned int cols,       \
                                          int kind) {                                         \
        GRID_STRIDE(i, (size_t)rows * cols) {                                                \
            float b = bias ? FROM(bias[i % cols]) : 0.0f;                                     \
            out[i] = TO(activate(g[i], kind) * (u[i] + b));                                   \
        }                                                                                     \
    }

// Plain: out = act(u + up_bias).
#define BIAS_ACT(NAME, T, FROM, TO)                                                        \
    extern "C" __global__ void bias_act_##NAME(const float* u, const T* bias, T* out,        \
                                               unsigned int rows, unsigned int cols,          \
                                               int kind) {                                    \
        GRID_STRIDE(i, (size_t)rows * cols) {                                                \
            float b = bias ? FROM(bias[i % cols]) : 0.0f;                                     \
            out[i] = TO(activate(u[i] + b, kind));                                            \
        }                                                                                     \
    }

// y += bias (row-broadcast), y in f32: the down projection's bias and `linear`'s bias.
#define ADD_BIAS(NAME, T, FROM)                                                            \
    extern "C" __global__ void add_bias_##NAME(float* y, const T* bias, unsigned int rows,   \
                                               unsigned int cols) {                           \
        GRID_STRIDE(i, (size_t)rows * cols) { y[i] += FROM(bias[i % cols]); }                 \
    }

GLU(f32, float, f32_to_f32, f32_to_f32)
GLU(bf16, u16, bf16_to_f32, f32_to_bf16)
GLU(f16, u16, f16_to_f32, f32_to_f16)
BIAS_ACT(f32, float, f32_to_f32, f32_to_f32)
BIAS_ACT(bf16, u16, bf16_to_f32, f32_to_bf16)
BIAS_ACT(f16, u16, f16_to_f32, f32_to_f16)
ADD_BIAS(f32, float, f32_to_f32)
ADD_BIAS(bf16, u16, bf16_to_f32)
ADD_BIAS(f16, u16, f16_to_f32)
