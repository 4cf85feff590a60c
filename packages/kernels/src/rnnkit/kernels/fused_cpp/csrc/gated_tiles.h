// Register-tiled products of the team loops (gated_cells.cpp): one block of `vb` hidden units
// of one head, a few batch rows at a time, with the block's recurrent weights packed so that
// every load is a full SIMD vector. Compiled once per instruction set (gated_tiles_*.cpp);
// find_tile_kernels() picks one this CPU runs.
//
// Why: per step a gated cell multiplies a (B x D) state by a (D x G D) matrix with B ~ 16.
// A BLAS call per step spends most of its time in call overhead and in re-reading the weights
// from memory; here each thread keeps its share of the weights in its own cache for the whole
// loop, and the gate pre-activations of a block come out of the registers next to each other,
// ready for the pointwise pass.
#pragma once

#include <cstdint>

namespace rnnkit_cpu {

struct TileKernels {
  const char* isa;  // "avx512", "avx2", "generic"
  int vb;           // units per block (floats per SIMD vector)
  // Forward: out[r][g ldo + e] = sum_k a[r][k] p[(k G + g) vb + e] for r < rows, g < G,
  // e < vb. p is one block's panel (D x G x vb), a[r] a row of the state entering the step.
  // G in {1, 3, 4}, any rows.
  void (*fwd)(int G, int rows, const float* p, const float* const* a, int64_t K,
              float* const* out, int64_t ldo);
  // Backward: out[r][j vb + e] = sum_c a[r][c] p[j][c vb + e] for r < rows, j < nj, e < vb.
  // p[j] is the transposed panel (G D x vb) of the j-th of nj blocks; a[r] a row of the
  // gradient of the gate pre-activations. 1 <= nj <= 4, any rows.
  void (*bwd)(int nj, int rows, const float* const* p, const float* const* a, int64_t K,
              float* const* out);
};

// The kernels of one instruction set; null where this build has none (not GCC on x86-64).
// They do not check the CPU: find_tile_kernels() does.
const TileKernels* tile_kernels_avx512();
const TileKernels* tile_kernels_avx2();
const TileKernels* tile_kernels_generic();

// The kernels named `isa` ("avx512", "avx2", "generic"), or with "auto" the widest this CPU
// runs; null when this build or this CPU has no such kernels.
const TileKernels* find_tile_kernels(const char* isa);

}  // namespace rnnkit_cpu
