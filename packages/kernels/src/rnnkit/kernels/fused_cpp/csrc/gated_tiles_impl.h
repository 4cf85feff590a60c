// The tile kernels of gated_tiles.h for one vector width, RNNKIT_VB floats, and register
// tiles of up to RNNKIT_ROWS batch rows. Included once by each gated_tiles_<isa>.cpp after its
// `#pragma GCC target`, inside an anonymous namespace, so that every instruction set gets its
// own copy. GCC's generic vectors (vector_size) are lowered to the target's registers; a tile
// of RNNKIT_ROWS rows x 4 vectors of accumulators, 4 weight vectors and one broadcast fits the
// register file (AVX-512: 4 rows, 21 of 32 registers; AVX2 and SSE: 2 rows, 13 of 16).
//
// The reduction dimension is cut into chunks whose panel slice fits in L1 (kChunkBytes), and
// every row tile runs over a chunk before the next chunk starts: the panel then comes from L2
// once per product instead of once per row tile. Tiles after the first chunk resume from the
// partial sums in `out`.
//
// Not a standalone header: no include guard on purpose.

typedef float vf __attribute__((vector_size(RNNKIT_VB * sizeof(float))));

constexpr int64_t kChunkBytes = 16 * 1024;

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store(float* p, const vf& v) { std::memcpy(p, &v, sizeof v); }

// Reduction steps per chunk for `vectors` weight vectors per step (at least 8).
inline int64_t chunk(int64_t vectors) {
  const int64_t k = kChunkBytes / (vectors * RNNKIT_VB * static_cast<int64_t>(sizeof(float)));
  return k < 8 ? 8 : k;
}

// out[r][g ldo + e] (+)= sum_{k < kc} a[r][k0 + k] p[(k G + g) VB + e].
template <int G, int R>
void fwd_tile(const float* __restrict__ p, const float* const* a, int64_t k0, int64_t kc,
              float* const* out, int64_t ldo, bool resume) {
  vf acc[R][G];
  const float* ar[R];
  for (int r = 0; r < R; ++r) {
    ar[r] = a[r] + k0;
    for (int g = 0; g < G; ++g) acc[r][g] = resume ? load(out[r] + g * ldo) : vf{};
  }
  for (int64_t k = 0; k < kc; ++k) {
    vf w[G];
    for (int g = 0; g < G; ++g) w[g] = load(p + (k * G + g) * RNNKIT_VB);
    for (int r = 0; r < R; ++r) {
      const float x = ar[r][k];
      for (int g = 0; g < G; ++g) acc[r][g] += x * w[g];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) store(out[r] + g * ldo, acc[r][g]);
}

// out[r][j VB + e] (+)= sum_{c < kc} a[r][k0 + c] p[j][(k0 + c) VB + e].
template <int J, int R>
void bwd_tile(const float* const* p, const float* const* a, int64_t k0, int64_t kc,
              float* const* out, bool resume) {
  vf acc[R][J];
  const float* ar[R];
  const float* pj[J];
  for (int j = 0; j < J; ++j) pj[j] = p[j] + k0 * RNNKIT_VB;
  for (int r = 0; r < R; ++r) {
    ar[r] = a[r] + k0;
    for (int j = 0; j < J; ++j) acc[r][j] = resume ? load(out[r] + j * RNNKIT_VB) : vf{};
  }
  for (int64_t c = 0; c < kc; ++c) {
    vf w[J];
    for (int j = 0; j < J; ++j) w[j] = load(pj[j] + c * RNNKIT_VB);
    for (int r = 0; r < R; ++r) {
      const float x = ar[r][c];
      for (int j = 0; j < J; ++j) acc[r][j] += x * w[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) store(out[r] + j * RNNKIT_VB, acc[r][j]);
}

// Row tiles of RNNKIT_ROWS rows, then the remainder (fewer rows, same code with a smaller R).
template <int R, typename Full, typename Rest>
void by_row_tiles(int rows, const Full& full, const Rest& rest) {
  int r = 0;
  for (; r + R <= rows; r += R) full(r);
  if (r < rows) rest(r, rows - r);
}

template <int G>
void fwd_g(int rows, const float* p, const float* const* a, int64_t K, float* const* out,
           int64_t ldo) {
  const int64_t kc_max = chunk(G);
  for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
    const int64_t kc = K - k0 < kc_max ? K - k0 : kc_max;
    const float* pk = p + k0 * G * RNNKIT_VB;
    const bool resume = k0 > 0;
    by_row_tiles<RNNKIT_ROWS>(
        rows, [&](int r) { fwd_tile<G, RNNKIT_ROWS>(pk, a + r, k0, kc, out + r, ldo, resume); },
        [&](int r, int n) {
          switch (n) {
            case 1: return fwd_tile<G, 1>(pk, a + r, k0, kc, out + r, ldo, resume);
            case 2: return fwd_tile<G, 2>(pk, a + r, k0, kc, out + r, ldo, resume);
            default: return fwd_tile<G, 3>(pk, a + r, k0, kc, out + r, ldo, resume);
          }
        });
  }
}

void fwd(int G, int rows, const float* p, const float* const* a, int64_t K, float* const* out,
         int64_t ldo) {
  switch (G) {
    case 1: return fwd_g<1>(rows, p, a, K, out, ldo);
    case 3: return fwd_g<3>(rows, p, a, K, out, ldo);
    default: return fwd_g<4>(rows, p, a, K, out, ldo);
  }
}

template <int J>
void bwd_j(int rows, const float* const* p, const float* const* a, int64_t K,
           float* const* out) {
  const int64_t kc_max = chunk(J);
  for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
    const int64_t kc = K - k0 < kc_max ? K - k0 : kc_max;
    const bool resume = k0 > 0;
    by_row_tiles<RNNKIT_ROWS>(
        rows, [&](int r) { bwd_tile<J, RNNKIT_ROWS>(p, a + r, k0, kc, out + r, resume); },
        [&](int r, int n) {
          switch (n) {
            case 1: return bwd_tile<J, 1>(p, a + r, k0, kc, out + r, resume);
            case 2: return bwd_tile<J, 2>(p, a + r, k0, kc, out + r, resume);
            default: return bwd_tile<J, 3>(p, a + r, k0, kc, out + r, resume);
          }
        });
  }
}

void bwd(int nj, int rows, const float* const* p, const float* const* a, int64_t K,
         float* const* out) {
  switch (nj) {
    case 1: return bwd_j<1>(rows, p, a, K, out);
    case 2: return bwd_j<2>(rows, p, a, K, out);
    case 3: return bwd_j<3>(rows, p, a, K, out);
    default: return bwd_j<4>(rows, p, a, K, out);
  }
}
