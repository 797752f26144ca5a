// Deterministic weighted combine of expert outputs into token rows.
//
// Each expert writes its output rows at fixed positions of `rows` (position = the (token, slot)
// assignment it serves), whatever order experts run in. Then every output element sums its k
// slots in slot order, one thread per element: no float atomics, so the bits do not depend on
// which expert finished first (offloaded and resident runs agree exactly).
//
// out[t, c] (+)= sum_{j < k, slot_row[t*k+j] >= 0} w[t*k+j] * rows[slot_row[t*k+j], c]
extern "C" __global__ void combine_f32(const float* rows, const int* slot_row, const float* w,
                                       float* out, unsigned int tokens, unsigned int k,
                                       unsigned int hidden, int accumulate) {
    GRID_STRIDE(i, (size_t)tokens * hidden) {
        size_t t = i / hidden, c = i % hidden;
        float acc = 0.0f;
        for (unsigned int j = 0; j < k; ++j) {
            int r = slot_row[t * k + j];
            if (r >= 0) acc += w[t * k + j] * rows[(size_t)r * hidden + c];
        }
        out[i] = accumulate ? out[i] + acc : acc;
    }
}
