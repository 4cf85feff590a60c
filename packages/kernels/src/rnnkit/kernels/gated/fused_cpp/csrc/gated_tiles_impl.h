// The tile kernel of gated_tiles.h for one vector width, RNNKIT_VB floats, with register
// tiles of RNNKIT_ROWS batch rows x RNNKIT_VECTORS weight vectors. Included once by each
// gated_tiles_<isa>.cpp after its `#pragma GCC target`, inside an anonymous namespace, so that
// every instruction set gets its own copy. GCC's generic vectors (vector_size) are lowered to
// the target's registers.
//
// Shapes (tools/bench/tile_shapes.cpp, B = 16, 128 units per core): a tile needs R x V
// accumulators, V weight vectors and one broadcast in registers, and per reduction step does
// R V multiply-adds for V + R loads. AVX-512 (32 registers): 6 x 4, 24 accumulators; AVX2 and
// SSE (16 registers): 6 x 2, 12 accumulators. Against the first shapes (4 x 4 and 2 x 4):
// Xeon AVX-512 117-122 -> 135-162 GFLOP/s per core, AVX2 on the same core 45-70 -> 79-83,
// Zen 3 AVX2 37-51 -> 58-71 (torch's large mm: 151 and 58 per core).
//
// The reduction dimension is cut into chunks whose weight slice (V vectors x kc steps) fits in
// L1 with room for the rows of `a` (kChunkBytes), and every row tile runs over a chunk before
// the next chunk starts: the weights then come from L2 once per product instead of once per
// row tile. Tiles after the first chunk resume from the partial sums in `out`.
//
// Not a standalone header: no include guard on purpose.

typedef float vf __attribute__((vector_size(RNNKIT_VB * sizeof(float))));

constexpr int64_t kChunkBytes = 32 * 1024;

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store(float* p, const vf& v) { std::memcpy(p, &v, sizeof v); }

// out[r][off[v] + e] (+)= sum_{k < kc} a[r][k0 + k] p[v][k ps + e]  (p already at k0).
template <int R, int V>
void tile(const float* const* p, int64_t ps, const float* const* a, int64_t k0, int64_t kc,
          float* const* out, const int64_t* off, bool resume) {
  vf acc[R][V];
  const float* ar[R];
  const float* pv[V];
  for (int v = 0; v < V; ++v) pv[v] = p[v];
  for (int r = 0; r < R; ++r) {
    ar[r] = a[r] + k0;
    for (int v = 0; v < V; ++v) acc[r][v] = resume ? load(out[r] + off[v]) : vf{};
  }
  for (int64_t k = 0; k < kc; ++k) {
    vf w[V];
    for (int v = 0; v < V; ++v) w[v] = load(pv[v] + k * ps);
    for (int r = 0; r < R; ++r) {
      const float x = ar[r][k];
      for (int v = 0; v < V; ++v) acc[r][v] += x * w[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) store(out[r] + off[v], acc[r][v]);
}

// A tile of n < R rows (the last rows of the batch): the same code with fewer accumulators.
template <int V, int Q>
void rest_rows(int n, const float* const* p, int64_t ps, const float* const* a, int64_t k0,
               int64_t kc, float* const* out, const int64_t* off, bool resume) {
  if constexpr (Q > 0) {
    if (n == Q) return tile<Q, V>(p, ps, a, k0, kc, out, off, resume);
    rest_rows<V, Q - 1>(n, p, ps, a, k0, kc, out, off, resume);
  }
}

// The vectors in groups of V (then the remainder with fewer), rows in tiles of R, the
// reduction in chunks of about chunk_bytes of weights (tools/bench/tile_shapes.cpp varies R,
// V and chunk_bytes; the library uses its shape and kChunkBytes).
template <int R, int V>
void product_v(int nv, int rows, const float* const* p, int64_t ps, const float* const* a,
               int64_t K, float* const* out, const int64_t* off, int64_t chunk_bytes) {
  const int full = nv / V * V;
  const int64_t kc_max = std::max<int64_t>(8, chunk_bytes / (V * RNNKIT_VB * 4));
  for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
    const int64_t kc = std::min(K - k0, kc_max);
    const bool resume = k0 > 0;
    for (int v0 = 0; v0 < full; v0 += V) {
      const float* pk[V];
      for (int v = 0; v < V; ++v) pk[v] = p[v0 + v] + k0 * ps;
      int r = 0;
      for (; r + R <= rows; r += R) tile<R, V>(pk, ps, a + r, k0, kc, out + r, off + v0, resume);
      if (r < rows)
        rest_rows<V, R - 1>(rows - r, pk, ps, a + r, k0, kc, out + r, off + v0, resume);
    }
  }
  if constexpr (V > 1) {
    if (full < nv)
      product_v<R, V - 1>(nv - full, rows, p + full, ps, a, K, out, off + full, chunk_bytes);
  }
}

void product(int nv, int rows, const float* const* p, int64_t ps, const float* const* a,
             int64_t K, float* const* out, const int64_t* off) {
  product_v<RNNKIT_ROWS, RNNKIT_VECTORS>(nv, rows, p, ps, a, K, out, off, kChunkBytes);
}

const rnnkit_cpu::TileKernels kernels{RNNKIT_ISA, RNNKIT_VB, RNNKIT_ROWS, RNNKIT_VECTORS,
                                      &product};
