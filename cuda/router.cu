// Routers on the device, one thread per token (expert counts are small: 8..256).
// Ties pick the lower expert index, like a stable descending sort.

// Softmax over the logits in f32 (max-subtracted), then top-k of the probabilities; weights
// renormalised over the k when asked (Mixtral always, Qwen with norm_topk_prob).
extern "C" __global__ void softmax_topk_f32(const float* logits, int* ids, float* weights,
                                            unsigned int tokens, unsigned int experts,
                                            unsigned int k, int renormalize) {
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= tokens) return;
    const float* l = logits + t * experts;
    float m = NEG_INF;
    for (unsigned int e = 0; e < experts; ++e) m = fmaxf(m, l[e]);
    float s = 0.0f;
    for (unsigned int e = 0; e < experts; ++e) s += expf(l[e] - m);
    float picked = 0.0f;
    for (unsigned int j = 0; j < k; ++j) {
        int best = -1;
        float bp = 0.0f;
        for (unsigned int e = 0; e < experts; ++e) {
            bool taken = false;
            for (unsigned int q = 0; q < j; ++q) taken |= ids[t * k + q] == (int)e;
            float p = expf(l[e] - m) / s;
            if (!taken && (best < 0 || p > bp)) { best = (int)e; bp = p; }
        }
        ids[t * k + j] = best;
        weights[t * k + j] = bp;
        picked += bp;
    }
    if (renormalize)
        for (unsigned int j = 0; j < k; ++j) weights[t * k + j] /= picked;
}

// DeepSeek-V3 grouped sigmoid routing (as transformers' DeepseekV3TopkRouter): scores =
// sigmoid(logits); choice scores add the correction bias; a group's score is the sum of its
// top-2 choice scores; the best `topk_group` groups stay; top-k of the choice scores inside
// them; weights are the unbiased scores, renormalised (sum + 1e-20) if asked, times `scale`.
// At most 64 groups.
extern "C" __global__ void grouped_sigmoid_topk_f32(const float* logits, const float* bias,
                                                    int* ids, float* weights,
                                                    unsigned int tokens, unsigned int experts,
                                                    unsigned int k, unsigned int n_group,
                                                    unsigned int topk_group, int renormalize,
                                                    float scale) {
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= tokens) return;
    const float* l = logits + t * experts;
    unsigned int per = experts / n_group;
    unsigned long long keep = 0;
    for (unsigned int q = 0; q < topk_group; ++q) {
        int bg = -1;
        float bs = 0.0f;
        for (unsigned int g = 0; g < n_group; ++g) {
            if (keep & (1ull << g)) continue;
            float a = NEG_INF, b = NEG_INF;  // top-2 of the group
            for (unsigned int e = g * per; e < (g + 1) * per; ++e) {
                float c = 1.0f / (1.0f + expf(-l[e])) + (bias ? bias[e] : 0.0f);
                if (c > a) { b = a; a = c; } else if (c > b) { b = c; }
            }
            float gs = per > 1 ? a + b : a;
            if (bg < 0 || gs > bs) { bg = (int)g; bs = gs; }
        }
        keep |= 1ull << bg;
    }
    float picked = 0.0f;
    for (unsigned int j = 0; j < k; ++j) {
        int best = -1;
        float bc = 0.0f;
        for (unsigned int e = 0; e < experts; ++e) {
            if (!(keep & (1ull << (e / per)))) continue;
            bool taken = false;
            for (unsigned int q = 0; q < j; ++q) taken |= ids[t * k + q] == (int)e;
            float c = 1.0f / (1.0f + expf(-l[e])) + (bias ? bias[e] : 0.0f);
            if (!taken && (best < 0 || c > bc)) { best = (int)e; bc = c; }
        }
        ids[t * k + j] = best;
        float w = best >= 0 ? 1.0f / (1.0f + expf(-l[best])) : 0.0f;
        weights[t * k + j] = w;
        picked += w;
    }
    for (unsigned int j = 0; j < k; ++j) {
        float w = weights[t * k + j];
        if (renormalize) w /= picked + 1e-20f;
        weights[t * k + j] = w * scale;
    }
}
