// AVX2 + FMA tile kernel: 8 units per block; tiles of 6 rows x 2 weight vectors (12
// accumulators, 2 weight vectors and one broadcast of the 16 vector registers).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "gated_tiles.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2,fma")
#define RNNKIT_ISA "avx2"
#define RNNKIT_ROWS 6
#define RNNKIT_VECTORS 2
#define RNNKIT_VB 8
namespace {
#include "gated_tiles_impl.h"
}  // namespace

const rnnkit_cpu::TileKernels* rnnkit_cpu::tile_kernels_avx2() { return &kernels; }
#else
const rnnkit_cpu::TileKernels* rnnkit_cpu::tile_kernels_avx2() { return nullptr; }
#endif
