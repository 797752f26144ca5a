// Gather and dtype casts: moving token rows in and out of an expert's batch.

// dst[r, :] = src[idx[r], :], f32 rows of `cols` values.
extern "C" __global__ void gather_rows_f32(const float* src, const int* idx, float* dst,
                                           unsigned int rows, unsigned int cols) {
    GRID_STRIDE(i, (size_t)rows * cols) {
        size_t r = i / cols, c = i % cols;
        dst[i] = src[(size_t)idx[r] * cols + c];
    }
}

// dst[idx[r], :] = src[r, :]: an expert's output rows into their (token, slot) positions.
extern "C" __global__ void scatter_rows_f32(const float* src, const int* idx, float* dst,
                                            unsigned int rows, unsigned int cols) {
    GRID_STRIDE(i, (size_t)rows * cols) {
        size_t r = i / cols, c = i % cols;
        dst[(size_t)idx[r] * cols + c] = src[i];
    }
}

// y = x converted to the weight dtype (the B operand of a bf16/f16 GEMM).
#define CAST(NAME, T, TO)                                                                  \
    extern "C" __global__ void cast_##NAME(const float* x, T* y, unsigned long long n) {    \
        GRID_STRIDE(i, n) { y[i] = TO(x[i]); }                                              \
    }
CAST(bf16, u16, f32_to_bf16)
CAST(f16, u16, f32_to_f16)
