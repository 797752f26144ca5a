// Shared helpers of the moe-offload kernels. Compiled by NVRTC at run time together with the
// other cuda/*.cu files (one program), so it must need no include path: 16-bit floats are
// handled as raw `unsigned short` bits with explicit conversions instead of cuda_bf16.h.

typedef unsigned short u16;

__device__ __forceinline__ float bf16_to_f32(u16 h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even, as torch and the `half` crate do; NaN stays a (quiet) NaN.
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float f32_to_f32(float f) { return f; }

// Activation codes, kept in sync with `kernels::act_code` on the Rust side:
// 0 SiLU, 1 exact GELU (erf), 2 GELU tanh approximation, 3 ReLU, -1 identity.
__device__ __forceinline__ float activate(float x, int kind) {
    switch (kind) {
        case 0: return x / (1.0f + expf(-x));
        case 1: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
        case 2: {
            const float c = 0.7978845608028654f;  // sqrt(2/pi)
            return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
        }
        case 3: return fmaxf(x, 0.0f);
        default: return x;
    }
}

// -inf without <math.h> (NVRTC compiles without an include path).
#define NEG_INF __int_as_float(0xff800000)

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)(n); \
         i += (size_t)blockDim.x * gridDim.x)
