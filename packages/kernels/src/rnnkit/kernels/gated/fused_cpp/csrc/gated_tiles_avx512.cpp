// AVX-512 tile kernel: 16 units per block; tiles of 6 rows x 4 weight vectors (24
// accumulators, 4 weight vectors and one broadcast of the 32 vector registers).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "gated_tiles.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#define RNNKIT_ISA "avx512"
#define RNNKIT_ROWS 6
#define RNNKIT_VECTORS 4
#define RNNKIT_VB 16
namespace {
#include "gated_tiles_impl.h"
}  // namespace

const rnnkit_cpu::TileKernels* rnnkit_cpu::tile_kernels_avx512() { return &kernels; }
#else
const rnnkit_cpu::TileKernels* rnnkit_cpu::tile_kernels_avx512() { return nullptr; }
#endif
