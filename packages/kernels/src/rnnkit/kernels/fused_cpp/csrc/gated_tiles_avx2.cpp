// AVX2 + FMA tile kernels: 8 units per block; 16 vector registers hold 2 rows x 4 gates of
// accumulators, 4 weight vectors and one broadcast.
#include <cstdint>
#include <cstring>

#include "gated_tiles.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2,fma")
#define RNNKIT_ROWS 2
#define RNNKIT_VB 8
namespace {
#include "gated_tiles_impl.h"
const rnnkit_cpu::TileKernels kernels{"avx2", RNNKIT_VB, &fwd, &bwd};
}  // namespace

const rnnkit_cpu::TileKernels* rnnkit_cpu::tile_kernels_avx2() { return &kernels; }
#else
const rnnkit_cpu::TileKernels* rnnkit_cpu::tile_kernels_avx2() { return nullptr; }
#endif
