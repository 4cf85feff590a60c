// AVX-512 tile kernels: 16 units per block; 4 rows x 4 gates of accumulators use 16 of the
// 32 vector registers.
#include <cstdint>
#include <cstring>

#include "gated_tiles.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#define RNNKIT_ROWS 4
#define RNNKIT_VB 16
namespace {
#include "gated_tiles_impl.h"
const rnnkit_cpu::TileKernels kernels{"avx512", RNNKIT_VB, &fwd, &bwd};
}  // namespace

const rnnkit_cpu::TileKernels* rnnkit_cpu::tile_kernels_avx512() { return &kernels; }
#else
const rnnkit_cpu::TileKernels* rnnkit_cpu::tile_kernels_avx512() { return nullptr; }
#endif
