// Tile kernels for any CPU (compiler default target, 4-float vectors), and the choice among
// the instruction sets this build has.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "gated_tiles.h"

#define RNNKIT_ISA "generic"
#define RNNKIT_ROWS 6
#define RNNKIT_VECTORS 2
#define RNNKIT_VB 4
namespace {
#include "gated_tiles_impl.h"

}  // namespace

const rnnkit_cpu::TileKernels* rnnkit_cpu::tile_kernels_generic() { return &kernels; }

const rnnkit_cpu::TileKernels* rnnkit_cpu::find_tile_kernels(const char* isa) {
  const std::string name = isa;
  const bool any = name == "auto";
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if ((any || name == "avx512") && avx512) return tile_kernels_avx512();
  if ((any || name == "avx2") && avx2) return tile_kernels_avx2();
#endif
  if (any || name == "generic") return &kernels;
  return nullptr;
}
