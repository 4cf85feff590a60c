// Register-tile shapes for the fused_cpp team loops, one core: GFLOP/s of the library's tile
// kernel (csrc/gated_tiles_impl.h, included below, so this measures the code the library
// compiles) over the 128 units one of two threads owns at hidden size 256 (B = 16), for tiles
// of R rows x V weight vectors and reduction chunks of 16/32/64 KiB. tools/gpu/tile_shapes.sh
// builds it for AVX-512 and AVX2:
//
//   I=packages/kernels/src/rnnkit/kernels/gated/fused_cpp/csrc
//   g++ -O3 -fno-trapping-math -DVB=8 -I$I tools/bench/tile_shapes.cpp -o /tmp/t8 && /tmp/t8
//
// The shapes in the library were chosen from its output (see gated_tiles_impl.h).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "gated_tiles.h"

#ifndef VB
#define VB 16
#endif
#pragma GCC push_options
#if VB == 16
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#else
#pragma GCC target("avx2,fma")
#endif
// The library's shape for this width (unused here but needed by the header's kernel table).
#define RNNKIT_ISA "bench"
#define RNNKIT_ROWS 6
#define RNNKIT_VECTORS (VB == 16 ? 4 : 2)
#define RNNKIT_VB VB
namespace {
#include "gated_tiles_impl.h"
}  // namespace
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
      auto bench = [&](const char* name, auto f) {
        auto run = [&]() {
          for (int blk = 0; blk < nblk; blk += 4) {
            const float* a[16]; float* o[16]; const float* pv[16]; int64_t off[16]; int nv = 0;
            if (!c.bwd) { for (int j = 0; j < 4; ++j) for (int g = 0; g < G; ++g) { pv[nv] = panels.data() + (size_t)(blk + j) * G * D * VB + g * VB; off[nv] = g * D + j * VB; ++nv; } }
            else { for (int j = 0; j < 4; ++j) { pv[nv] = panels.data() + (size_t)(blk + j) * G * D * VB; off[nv] = j * VB; ++nv; } }
            for (int r = 0; r < B; ++r) { a[r] = h.data() + r * K; o[r] = out.data() + r * G * D + blk * VB; }
            f(nv, B, pv, c.bwd ? VB : G * VB, a, K, o, off, (int64_t)kb * 1024);
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
      bench("R4V4", product_v<4, 4>); bench("R6V4", product_v<6, 4>); bench("R8V3", product_v<8, 3>);
      bench("R12V2", product_v<12, 2>); bench("R8V2", product_v<8, 2>);
#else
      bench("R2V4", product_v<2, 4>); bench("R6V2", product_v<6, 2>); bench("R4V3", product_v<4, 3>);
      bench("R4V2", product_v<4, 2>);
#endif
      printf("\n");
    }
  }
}
