// Register-tile shapes for the fused_cpp team loops (csrc/gated_tiles_impl.h), one core:
// GFLOP/s of the product out[r] + off[v] += sum_k a[r][k] p[v][k ps] over the 128 units one of
// two threads owns at hidden size 256 (B = 16), for tiles of R rows x V weight vectors and
// reduction chunks of 16/32/64 KiB. The kernel here is a copy of the library's, with the shape
// as template arguments; tools/gpu/tile_shapes.sh builds it for AVX-512 and AVX2:
//
//   g++ -O3 -fno-trapping-math -DVB=8 tools/bench/tile_shapes.cpp -o /tmp/t8 && /tmp/t8
//
// The shapes in the library were chosen from its output (see gated_tiles_impl.h).
#include <chrono>
#include <cstdio>
#include <vector>
#include <cstdint>
#include <cstring>
#ifndef VB
#define VB 16
#endif
#pragma GCC push_options
#if VB == 16
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#else
#pragma GCC target("avx2,fma")
#endif
typedef float vf __attribute__((vector_size(VB * sizeof(float))));
inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, const vf& v) { std::memcpy(p, &v, sizeof v); }
template <int R, int V>
__attribute__((noinline)) void tile(const float* const* pv, int64_t ps, const float* const* a, int64_t k0, int64_t kc,
              float* const* out, const int64_t* off, bool resume) {
  vf acc[R][V]; const float* ar[R]; const float* pp[V];
  for (int v = 0; v < V; ++v) pp[v] = pv[v];
  for (int r = 0; r < R; ++r) { ar[r] = a[r] + k0;
    for (int v = 0; v < V; ++v) acc[r][v] = resume ? load(out[r] + off[v]) : vf{}; }
  for (int64_t k = 0; k < kc; ++k) {
    vf w[V];
    for (int v = 0; v < V; ++v) w[v] = load(pp[v] + k * ps);
    for (int r = 0; r < R; ++r) { const float x = ar[r][k];
      for (int v = 0; v < V; ++v) acc[r][v] += x * w[v]; }
  }
  for (int r = 0; r < R; ++r) for (int v = 0; v < V; ++v) store(out[r] + off[v], acc[r][v]);
}
template <int R, int V, int Q>
void rest(int n, const float* const* p, int64_t ps, const float* const* a, int64_t k0, int64_t kc, float* const* out, const int64_t* off, bool res) {
  if constexpr (Q > 0) { if (n == Q) return tile<Q, V>(p, ps, a, k0, kc, out, off, res); return rest<R, V, Q - 1>(n, p, ps, a, k0, kc, out, off, res); }
}
template <int R, int V>
void prod(int nv, int rows, const float* const* pv, int64_t ps, const float* const* a, int64_t K, float* const* out, const int64_t* off, int64_t kcm) {
  const int nfull = nv / V * V;
  for (int64_t k0 = 0; k0 < K; k0 += kcm) {
    int64_t kc = K - k0 < kcm ? K - k0 : kcm;
    for (int v0 = 0; v0 < nfull; v0 += V) {
      const float* p[V]; for (int v = 0; v < V; ++v) p[v] = pv[v0 + v] + k0 * ps;
      int r = 0;
      for (; r + R <= rows; r += R) tile<R, V>(p, ps, a + r, k0, kc, out + r, off + v0, k0 > 0);
      if (rows > r) rest<R, V, R - 1>(rows - r, p, ps, a + r, k0, kc, out + r, off + v0, k0 > 0);
    }
  }
  if constexpr (V > 1) if (nfull < nv) prod<R, V - 1>(nv - nfull, rows, pv + nfull, ps, a, K, out, off + nfull, kcm);
}
#pragma GCC pop_options

int main() {
  const int B = 16, units = 128, nblk = units / VB;
  printf("VB=%d, one core, B=16, 128 units per thread (H=256 on 2 threads), GFLOP/s\n", VB);
  struct Case { const char* name; int G; int D; bool bwd; };
  for (Case c : {Case{"fwd G4 D256", 4, 256, false}, Case{"fwd G3 D256", 3, 256, false}, Case{"bwd G4 D256", 4, 256, true}, Case{"fwd G4 D512", 4, 512, false}}) {
    const int G = c.G, D = c.D; const int K = c.bwd ? G * D : D;
    std::vector<float> panels((size_t)nblk * G * D * VB, 0.01f), h((size_t)B * G * D, 0.5f), out((size_t)B * G * D);
    for (int kb : {16, 32, 64}) {
      printf("%-12s chunk %2d KiB:", c.name, kb);
      auto bench = [&](const char* name, auto f, int V) {
        const int64_t kcm = (int64_t)kb * 1024 / (V * VB * 4);
        auto run = [&]() {
          for (int blk = 0; blk < nblk; blk += 4) {
            const float* a[16]; float* o[16]; const float* pv[16]; int64_t off[16]; int nv = 0;
            if (!c.bwd) { for (int j = 0; j < 4; ++j) for (int g = 0; g < G; ++g) { pv[nv] = panels.data() + (size_t)(blk + j) * G * D * VB + g * VB; off[nv] = g * D + j * VB; ++nv; } }
            else { for (int j = 0; j < 4; ++j) { pv[nv] = panels.data() + (size_t)(blk + j) * G * D * VB; off[nv] = j * VB; ++nv; } }
            for (int r = 0; r < B; ++r) { a[r] = h.data() + r * K; o[r] = out.data() + r * G * D + blk * VB; }
            f(nv, B, pv, c.bwd ? VB : G * VB, a, K, o, off, kcm);
          }
        };
        for (int w = 0; w < 100; ++w) run();
        double best = 1e9;
        for (int rep = 0; rep < 5; ++rep) {
          int n = 300; auto t0 = std::chrono::steady_clock::now();
          for (int w = 0; w < n; ++w) run();
          double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / n;
          best = s < best ? s : best;
        }
        printf("  %s %5.1f", name, 2.0 * B * D * G * units / best / 1e9);
      };
#if VB == 16
      bench("R4V4", prod<4, 4>, 4); bench("R6V4", prod<6, 4>, 4); bench("R8V3", prod<8, 3>, 3); bench("R12V2", prod<12, 2>, 2); bench("R8V2", prod<8, 2>, 2);
#else
      bench("R2V4", prod<2, 4>, 4); bench("R6V2", prod<6, 2>, 2); bench("R4V3", prod<4, 3>, 3); bench("R4V2", prod<4, 2>, 2);
#endif
      printf("\n");
    }
  }
}
