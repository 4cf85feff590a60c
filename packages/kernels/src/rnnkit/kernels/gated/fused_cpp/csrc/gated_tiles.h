// Register-tiled products of the team loops (gated_team.h): the gate pre-activations of a
// few blocks of `vb` hidden units, for all batch rows of a step, with the blocks' recurrent
// weights packed so that every load is a full SIMD vector. Compiled once per instruction set
// (gated_tiles_*.cpp); find_tile_kernels() picks one this CPU runs.
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
  int rows;         // batch rows per register tile
  int vectors;      // weight vectors per register tile
  // out[r][off[v] + e] = sum_{k < K} a[r][k] p[v][k ps + e] for r < rows, v < nv, e < vb.
  // Each of the nv output vectors has its own weight column p[v] (one vector per reduction
  // step, `ps` floats apart) and its own place in the output rows. The forward products of
  // a run of blocks pass one vector per (block, gate), the backward products one per block.
  // Any nv >= 1 and rows >= 1; at most kMaxVectors vectors.
  void (*product)(int nv, int rows, const float* const* p, int64_t ps, const float* const* a,
                  int64_t K, float* const* out, const int64_t* off);
};

constexpr int kMaxVectors = 16;

// The kernels of one instruction set; null where this build has none (not GCC on x86-64).
// They do not check the CPU: find_tile_kernels() does.
const TileKernels* tile_kernels_avx512();
const TileKernels* tile_kernels_avx2();
const TileKernels* tile_kernels_generic();

// The kernels named `isa` ("avx512", "avx2", "generic"), or with "auto" the widest this CPU
// runs; null when this build or this CPU has no such kernels.
const TileKernels* find_tile_kernels(const char* isa);

}  // namespace rnnkit_cpu
