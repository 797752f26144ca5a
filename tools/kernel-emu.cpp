// Host emulation of the NVRTC kernels in cuda/*.cu (run by tools/check-kernels.sh): CUDA
// keywords are stubbed and each "thread" runs in turn, so the kernels' arithmetic and indexing
// are checked on a machine without a GPU. The f16 conversions (inline PTX) are not emulated.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstddef>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
struct Dim { unsigned x = 0, y = 0, z = 0; };
static Dim blockIdx, threadIdx, blockDim{1, 1, 1}, gridDim{1, 1, 1};
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
#define asm(...) (void)0
#include "common.cu"
#include "gather.cu"
#include "activation.cu"
#include "combine.cu"
#include "router.cu"
int main() {
  int bad = 0;
  // bf16 round trip and rounding to nearest even
  float vals[] = {1.0f, -2.5f, 3.14159f, 1e-3f, 65504.f};
  for (float v : vals) { float r = bf16_to_f32(f32_to_bf16(v)); if (fabsf(r - v) > fabsf(v) * 4e-3f) { printf("bf16 %g -> %g\n", v, r); bad++; } }
  if (f32_to_bf16(1.0f) != 0x3f80) { printf("bf16(1) = %x\n", f32_to_bf16(1.0f)); bad++; }
  // round-half-even: 1 + 2^-8 (exactly halfway between bf16 1.0 and 1.0078125) -> 1.0
  if (f32_to_bf16(1.0f + 1.0f/256) != 0x3f80) { printf("rne fail\n"); bad++; }
  // activations
  if (fabsf(activate(1.0f, 0) - 0.7310586f) > 1e-6f) { printf("silu\n"); bad++; }
  if (fabsf(activate(1.0f, 1) - 0.8413447f) > 1e-6f) { printf("gelu\n"); bad++; }
  if (fabsf(activate(1.0f, 2) - 0.841192f) > 1e-5f) { printf("gelu tanh\n"); bad++; }
  if (activate(-1.0f, 3) != 0.0f) { printf("relu\n"); bad++; }
  // glu f32 with bias
  float g[4] = {1, -1, 2, 0}, u[4] = {1, 2, 3, 4}, b[2] = {0.5f, -0.5f}, out[4];
  glu_f32(g, u, b, out, 2, 2, 0);
  for (int i = 0; i < 4; i++) { float want = activate(g[i], 0) * (u[i] + b[i % 2]); if (out[i] != want) { printf("glu %d\n", i); bad++; } }
  unsigned short hb[4];
  bias_act_bf16(u, nullptr, hb, 2, 2, 3);
  for (int i = 0; i < 4; i++) if (bf16_to_f32(hb[i]) != u[i]) { printf("bias_act_bf16 %d\n", i); bad++; }
  float y[4] = {0, 0, 0, 0}; unsigned short bb[2] = {f32_to_bf16(1.5f), f32_to_bf16(-2.0f)};
  add_bias_bf16(y, bb, 2, 2);
  if (y[0] != 1.5f || y[3] != -2.0f) { printf("add_bias\n"); bad++; }
  // gather
  float src[6] = {0, 1, 10, 11, 20, 21}; int idx[3] = {2, 0, 2}; float gd[6];
  gather_rows_f32(src, idx, gd, 3, 2);
  if (gd[0] != 20 || gd[3] != 1 || gd[5] != 21) { printf("gather\n"); bad++; }
  float sd[6] = {-1, -1, -1, -1, -1, -1}; int sidx[2] = {2, 0};
  scatter_rows_f32(src, sidx, sd, 2, 2);
  if (sd[4] != 0 || sd[5] != 1 || sd[0] != 10 || sd[1] != 11 || sd[2] != -1) { printf("scatter\n"); bad++; }
  // combine: 2 tokens, k = 2, hidden 2; token 1 slot 1 dropped
  float rows[8] = {1, 2, 3, 4, 5, 6, 7, 8}; int sr[4] = {0, 1, 3, -1}; float w[4] = {0.5f, 0.25f, 2, 9}; float co[4];
  combine_f32(rows, sr, w, co, 2, 2, 2, 0);
  if (co[0] != 0.5f * 1 + 0.25f * 3 || co[1] != 0.5f * 2 + 0.25f * 4 || co[2] != 14 || co[3] != 16) { printf("combine %g %g %g %g\n", co[0], co[1], co[2], co[3]); bad++; }
  // softmax top-2 with renormalisation, 2 tokens x 4 experts
  float lg[8] = {0.1f, 2.0f, -1.0f, 1.0f, 3.0f, 3.0f, 0.0f, 1.0f}; int ids[4]; float wt[4];
  for (unsigned t = 0; t < 2; t++) { threadIdx.x = t; softmax_topk_f32(lg, ids, wt, 2, 4, 2, 1); }
  threadIdx.x = 0;
  if (ids[0] != 1 || ids[1] != 3 || ids[2] != 0 || ids[3] != 1) { printf("topk ids %d %d %d %d\n", ids[0], ids[1], ids[2], ids[3]); bad++; }
  if (fabsf(wt[0] - 1.0f / (1.0f + expf(-1.0f))) > 1e-6f || fabsf(wt[2] - 0.5f) > 1e-6f) { printf("topk w %g %g\n", wt[0], wt[2]); bad++; }
  // grouped sigmoid: 8 experts, 4 groups of 2, keep 2 groups, top-2, renorm, scale 2.5
  float gl[8] = {0, 0, 3, -3, 1, 1, -5, 4}; float bias[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int gi[2]; float gw[2];
  grouped_sigmoid_topk_f32(gl, bias, gi, gw, 1, 8, 2, 4, 2, 1, 2.5f);
  // group scores: g0 = 1.0, g1 = s(3)+s(-3) = 1.0, g2 = 2 s(1) = 1.462, g3 = s(-5)+s(4) = 0.989
  // keep g2 then g0 (tie with g1, lower index); top-2 inside: experts 4, 5
  if (gi[0] != 4 || gi[1] != 5 || fabsf(gw[0] - 1.25f) > 1e-6f) { printf("grouped %d %d %g\n", gi[0], gi[1], gw[0]); bad++; }
  printf(bad ? "FAILED %d\n" : "all kernel emulation checks passed\n", bad);
  return bad != 0;
}
