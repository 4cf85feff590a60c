// Native CPU selective scan (Mamba-1's recurrence) with a backward by recomputation.
//
// Per batch row b, step t, channel d and state index n:
//   h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] x_t[d] B_t[n]
//   y_t[d]    = sum_n C_t[n] h_t[d, n] + D[d] x_t[d]
// with h_{t-1} replaced by 0 entering every step whose reset is set.
//
// Two ops, registered as torch.ops.rnnkit_selective_cpp.* (no pybind11; the library is loaded
// with torch.ops.load_library by rnnkit.kernels.native):
//
//   forward(x, dt, At, B, C, D, h0, resets, chunk, save) -> (y, h_last, checkpoints)
//   backward(x, dt, At, B, C, D, resets, checkpoints, dy, dh_last, chunk)
//       -> (dx, ddt, dA, dB, dC, dD, dh0)   (dA: (D, N), like A)
//
// Shapes: x, dt, y: (B, T, D); B, C: (B, T, N); At: (N, D) (A transposed, so that a state
// index's decays are contiguous over the channels); D: (D,); h0, h_last: (B, D, N); resets:
// bool (B, T) or absent; checkpoints: (B, ceil(T / chunk), D, N), the state entering steps
// 0, chunk, 2 chunk, ... (before that step's reset); empty unless save.
//
// Work is split over lanes: units of (batch row, block of channels), run in parallel with
// at::parallel_for. A unit walks time once forward, with its block's (N, w) state in a local
// array; the (B, T, D, N) states never exist in memory. The backward walks the chunks from last
// to first: it recomputes the chunk's states (and decays) from its checkpoint into a local
// buffer of (chunk + 1) states, then runs the adjoint recurrence
//   g_t = dL/dh_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}   (zero across a reset)
// backwards through the chunk, so the extra memory is the checkpoints, O(B D N T / chunk),
// plus per-unit buffers, O(chunk D N) in all. The gradients of B and C sum over channels,
// those of A and D over batch rows: each unit writes its own partial sums (per block of
// channels, per batch row) and torch adds them up (no atomics, deterministic).
//
// The innermost loops run over the channels of a block (contiguous in x, dt, y and At), so
// they vectorise; the float exp is a polynomial GCC can vectorise (std::exp is a libm call).
// SIMD: no -march flag (the cached library must run on any x86-64 CPU); the float loops are
// compiled twice with GCC's target_clones (x86-64-v3: AVX2 + FMA, and the SSE2 baseline).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNNKIT_SEL_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define RNNKIT_SEL_CLONES
#endif

#if defined(__GNUC__)
#define RNNKIT_SEL_RESTRICT __restrict__
#define RNNKIT_SEL_INLINE inline __attribute__((always_inline))
#else
#define RNNKIT_SEL_RESTRICT
#define RNNKIT_SEL_INLINE inline
#endif

// `omp simd` lets the compiler reorder the float sums of the channel loops (it vectorises no
// float reduction otherwise); only a hint, ignored without OpenMP.
#if defined(_OPENMP)
#define RNNKIT_SEL_SIMD _Pragma("omp simd")
#define RNNKIT_SEL_SIMD_SUM_BC _Pragma("omp simd reduction(+ : dB, dC)")
#else
#define RNNKIT_SEL_SIMD
#define RNNKIT_SEL_SIMD_SUM_BC
#endif

namespace rnnkit_selective {

// exp for float as plain arithmetic and selects (so that loops calling it vectorise):
// exp(x) = 2^k exp(r), k = round(x / ln 2), |r| <= ln(2) / 2, exp(r) by its Taylor polynomial
// of degree 7 (relative error below 1e-8, under float's rounding). NaN stays NaN, below the
// smallest normal float the result is 0, above the largest it is inf.
RNNKIT_SEL_INLINE float exp_(float x) {
  const bool under = x < -87.0f;  // false for NaN
  const bool over = x > 88.5f;
  float xc = under ? -87.0f : (over ? 88.5f : x);
  // round to nearest by adding and subtracting 1.5 * 2^23
  float kf = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (xc - kf * 0.693145751953125f) - kf * 1.42860682030941723212e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  kf = kf == kf ? kf : 0.0f;  // NaN: any exponent (p is NaN already); avoids an undefined cast
  const int32_t k = static_cast<int32_t>(kf);
  const uint32_t bits = static_cast<uint32_t>(k + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float e = p * scale;
  return under ? 0.0f : (over ? INFINITY : e);
}

RNNKIT_SEL_INLINE double exp_(double x) { return std::exp(x); }

// The arguments of one unit: batch row b, channels [d0, d0 + w).
template <typename T>
struct Unit {
  int64_t b, d0, w, blk;
};

template <typename T>
struct Problem {
  int64_t batch, time, dim, nstate, chunk;
  const T* x;    // (B, T, D)
  const T* dt;   // (B, T, D)
  const T* At;   // (N, D)
  const T* Bm;   // (B, T, N)
  const T* Cm;   // (B, T, N)
  const T* Dv;   // (D,)
  const bool* resets;  // (B, T) or null
};

// ---- forward over one unit ---------------------------------------------------------------
// h: (N, w) local state. ck: checkpoints (B, nck, D, N) or null.
template <typename T>
RNNKIT_SEL_INLINE void forward_unit(const Problem<T>& p, Unit<T> u, const T* h0, T* y, T* h_last,
                                    T* ck) {
  const int64_t N = p.nstate, D = p.dim, T_ = p.time, w = u.w;
  const int64_t nck = (T_ + p.chunk - 1) / p.chunk;
  std::vector<T> hbuf(static_cast<size_t>(N * w));
  std::vector<T> acc(static_cast<size_t>(w));
  T* RNNKIT_SEL_RESTRICT h = hbuf.data();
  T* RNNKIT_SEL_RESTRICT ya = acc.data();
  for (int64_t j = 0; j < w; ++j)
    for (int64_t n = 0; n < N; ++n) h[n * w + j] = h0[(u.b * D + u.d0 + j) * N + n];
  for (int64_t t = 0; t < T_; ++t) {
    if (ck != nullptr && t % p.chunk == 0) {
      T* c = ck + ((u.b * nck + t / p.chunk) * D + u.d0) * N;
      for (int64_t j = 0; j < w; ++j)
        for (int64_t n = 0; n < N; ++n) c[j * N + n] = h[n * w + j];
    }
    const bool reset = p.resets != nullptr && p.resets[u.b * T_ + t];
    const int64_t row = (u.b * T_ + t) * D + u.d0;
    const T* RNNKIT_SEL_RESTRICT xr = p.x + row;
    const T* RNNKIT_SEL_RESTRICT dtr = p.dt + row;
    const T* RNNKIT_SEL_RESTRICT Bt = p.Bm + (u.b * T_ + t) * N;
    const T* RNNKIT_SEL_RESTRICT Ct = p.Cm + (u.b * T_ + t) * N;
    RNNKIT_SEL_SIMD
    for (int64_t j = 0; j < w; ++j) ya[j] = p.Dv[u.d0 + j] * xr[j];
    for (int64_t n = 0; n < N; ++n) {
      const T bn = Bt[n], cn = Ct[n];
      const T* RNNKIT_SEL_RESTRICT An = p.At + n * D + u.d0;
      T* RNNKIT_SEL_RESTRICT hn = h + n * w;
      RNNKIT_SEL_SIMD
      for (int64_t j = 0; j < w; ++j) {
        const T prev = reset ? T(0) : hn[j];
        const T v = exp_(dtr[j] * An[j]) * prev + dtr[j] * xr[j] * bn;
        hn[j] = v;
        ya[j] += v * cn;
      }
    }
    T* RNNKIT_SEL_RESTRICT yr = y + row;
    for (int64_t j = 0; j < w; ++j) yr[j] = ya[j];
  }
  for (int64_t j = 0; j < w; ++j)
    for (int64_t n = 0; n < N; ++n) h_last[(u.b * D + u.d0 + j) * N + n] = h[n * w + j];
}

// ---- backward over one unit ----------------------------------------------------------------
// Outputs: dx, ddt (B, T, D); dA_part (B, D, N); dB_part, dC_part (B, blocks, T, N);
// dD_part (B, D); dh0 (B, D, N).
template <typename T>
struct Grads {
  const T* ck;
  const T* dy;
  const T* dh_last;
  T* dx;
  T* ddt;
  T* dA_part;
  T* dB_part;
  T* dC_part;
  T* dD_part;
  T* dh0;
  int64_t blocks;
};

template <typename T>
RNNKIT_SEL_INLINE void backward_unit(const Problem<T>& p, Unit<T> u, const Grads<T>& g_) {
  const int64_t N = p.nstate, D = p.dim, T_ = p.time, w = u.w, K = p.chunk;
  const int64_t nck = (T_ + K - 1) / K;
  const int64_t S = N * w;  // one state of the unit
  std::vector<T> hs_buf(static_cast<size_t>((K + 1) * S));  // states entering/leaving steps
  std::vector<T> as_buf(static_cast<size_t>(K * S));        // decays of the chunk's steps
  std::vector<T> g_buf(static_cast<size_t>(S));
  std::vector<T> dA_buf(static_cast<size_t>(S), T(0));
  std::vector<T> vec_buf(static_cast<size_t>(3 * w));
  T* RNNKIT_SEL_RESTRICT hs = hs_buf.data();
  T* RNNKIT_SEL_RESTRICT as = as_buf.data();
  T* RNNKIT_SEL_RESTRICT g = g_buf.data();
  T* RNNKIT_SEL_RESTRICT dA = dA_buf.data();
  T* RNNKIT_SEL_RESTRICT dxa = vec_buf.data();
  T* RNNKIT_SEL_RESTRICT dta = dxa + w;
  T* RNNKIT_SEL_RESTRICT dDa = dta + w;
  for (int64_t j = 0; j < w; ++j) {
    dDa[j] = T(0);
    for (int64_t n = 0; n < N; ++n) g[n * w + j] = g_.dh_last[(u.b * D + u.d0 + j) * N + n];
  }
  for (int64_t c = nck - 1; c >= 0; --c) {
    const int64_t t0 = c * K, L = std::min(K, T_ - t0);
    // recompute the chunk's states from its checkpoint
    const T* ckp = g_.ck + ((u.b * nck + c) * D + u.d0) * N;
    for (int64_t j = 0; j < w; ++j)
      for (int64_t n = 0; n < N; ++n) hs[n * w + j] = ckp[j * N + n];
    for (int64_t s = 0; s < L; ++s) {
      const int64_t t = t0 + s;
      const bool reset = p.resets != nullptr && p.resets[u.b * T_ + t];
      const int64_t row = (u.b * T_ + t) * D + u.d0;
      const T* RNNKIT_SEL_RESTRICT xr = p.x + row;
      const T* RNNKIT_SEL_RESTRICT dtr = p.dt + row;
      const T* RNNKIT_SEL_RESTRICT Bt = p.Bm + (u.b * T_ + t) * N;
      for (int64_t n = 0; n < N; ++n) {
        const T bn = Bt[n];
        const T* RNNKIT_SEL_RESTRICT An = p.At + n * D + u.d0;
        const T* RNNKIT_SEL_RESTRICT hp = hs + s * S + n * w;
        T* RNNKIT_SEL_RESTRICT hn = hs + (s + 1) * S + n * w;
        T* RNNKIT_SEL_RESTRICT an = as + s * S + n * w;
        RNNKIT_SEL_SIMD
        for (int64_t j = 0; j < w; ++j) {
          const T a = exp_(dtr[j] * An[j]);
          an[j] = a;
          hn[j] = a * (reset ? T(0) : hp[j]) + dtr[j] * xr[j] * bn;
        }
      }
    }
    // the adjoint recurrence backwards through the chunk
    for (int64_t s = L - 1; s >= 0; --s) {
      const int64_t t = t0 + s;
      const bool reset = p.resets != nullptr && p.resets[u.b * T_ + t];
      const int64_t row = (u.b * T_ + t) * D + u.d0;
      const T* RNNKIT_SEL_RESTRICT xr = p.x + row;
      const T* RNNKIT_SEL_RESTRICT dtr = p.dt + row;
      const T* RNNKIT_SEL_RESTRICT dyr = g_.dy + row;
      const T* RNNKIT_SEL_RESTRICT Bt = p.Bm + (u.b * T_ + t) * N;
      const T* RNNKIT_SEL_RESTRICT Ct = p.Cm + (u.b * T_ + t) * N;
      T* RNNKIT_SEL_RESTRICT dBr = g_.dB_part + ((u.b * g_.blocks + u.blk) * T_ + t) * N;
      T* RNNKIT_SEL_RESTRICT dCr = g_.dC_part + ((u.b * g_.blocks + u.blk) * T_ + t) * N;
      RNNKIT_SEL_SIMD
      for (int64_t j = 0; j < w; ++j) {
        dxa[j] = T(0);
        dta[j] = T(0);
        dDa[j] += dyr[j] * xr[j];
      }
      for (int64_t n = 0; n < N; ++n) {
        const T bn = Bt[n], cn = Ct[n];
        const T* RNNKIT_SEL_RESTRICT An = p.At + n * D + u.d0;
        const T* RNNKIT_SEL_RESTRICT hp = hs + s * S + n * w;
        const T* RNNKIT_SEL_RESTRICT hn = hs + (s + 1) * S + n * w;
        const T* RNNKIT_SEL_RESTRICT an = as + s * S + n * w;
        T* RNNKIT_SEL_RESTRICT gn = g + n * w;
        T* RNNKIT_SEL_RESTRICT dAn = dA + n * w;
        T dB = T(0), dC = T(0);
        RNNKIT_SEL_SIMD_SUM_BC
        for (int64_t j = 0; j < w; ++j) {
          const T gv = gn[j] + cn * dyr[j];  // dL/dh_t
          const T prev = reset ? T(0) : hp[j];
          const T a = an[j];
          const T ap = a * prev;
          dC += hn[j] * dyr[j];
          dB += gv * dtr[j] * xr[j];
          dAn[j] += gv * dtr[j] * ap;
          dta[j] += gv * (An[j] * ap + xr[j] * bn);
          dxa[j] += gv * bn;
          gn[j] = reset ? T(0) : a * gv;  // dL/dh_{t-1}
        }
        dBr[n] = dB;
        dCr[n] = dC;
      }
      T* RNNKIT_SEL_RESTRICT dxr = g_.dx + row;
      T* RNNKIT_SEL_RESTRICT ddtr = g_.ddt + row;
      RNNKIT_SEL_SIMD
      for (int64_t j = 0; j < w; ++j) {
        dxr[j] = p.Dv[u.d0 + j] * dyr[j] + dtr[j] * dxa[j];
        ddtr[j] = dta[j];
      }
    }
  }
  for (int64_t j = 0; j < w; ++j) {
    g_.dD_part[u.b * D + u.d0 + j] = dDa[j];
    for (int64_t n = 0; n < N; ++n) {
      g_.dh0[(u.b * D + u.d0 + j) * N + n] = g[n * w + j];
      g_.dA_part[(u.b * D + u.d0 + j) * N + n] = dA[n * w + j];
    }
  }
}

}  // namespace rnnkit_selective

// ---- the kernels, compiled for two instruction sets ----------------------------------------
namespace rnnkit_selective {

#define RNNKIT_SEL_DEFINE(T)                                                                    \
  RNNKIT_SEL_CLONES void forward_group(const Problem<T>& p, Unit<T> u, const T* h0, T* y,       \
                                       T* h_last, T* ck) {                                       \
    forward_unit<T>(p, u, h0, y, h_last, ck);                                                   \
  }                                                                                             \
  RNNKIT_SEL_CLONES void backward_group(const Problem<T>& p, Unit<T> u, const Grads<T>& g) {    \
    backward_unit<T>(p, u, g);                                                                  \
  }

RNNKIT_SEL_DEFINE(float)
RNNKIT_SEL_DEFINE(double)
#undef RNNKIT_SEL_DEFINE

}  // namespace rnnkit_selective

namespace {

using rnnkit_selective::Grads;
using rnnkit_selective::Problem;
using rnnkit_selective::Unit;

// How the (batch row, channel block) units are cut: split the channels until every thread
// has two units, never below 8 channels (one AVX2 vector of floats), at most 64 channels
// (the backward's per-unit buffers, (2 chunk + 1) N w numbers, stay near the L2 cache).
struct Plan {
  int64_t block, blocks, units, grain;
};

Plan make_plan(int64_t batch, int64_t time, int64_t dim, int64_t nstate) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t block = std::min<int64_t>(std::max<int64_t>(dim, 1), 64);
  auto units = [&](int64_t blk) { return batch * ((dim + blk - 1) / blk); };
  while (units(block) < 2 * threads && block > 8) block = std::max<int64_t>(8, (block + 1) / 2);
  Plan plan;
  plan.block = block;
  plan.blocks = std::max<int64_t>(1, (dim + block - 1) / block);
  plan.units = batch * plan.blocks;
  // below ~64 Ki state updates a thread hand-off costs more than the work
  const bool small = batch * time * dim * nstate < (int64_t{1} << 16);
  plan.grain = small ? std::max<int64_t>(1, plan.units) : 1;
  return plan;
}

void check_input(const at::Tensor& ref, const at::Tensor& t, const char* name,
                 at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu(), "rnnkit_selective_cpp: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "rnnkit_selective_cpp: ", name,
              " has dtype ", t.scalar_type(), ", expected ", ref.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "rnnkit_selective_cpp: ", name, " has shape ", t.sizes(),
              ", expected ", shape);
  TORCH_CHECK(t.is_contiguous(), "rnnkit_selective_cpp: ", name, " must be contiguous");
}

struct Dims {
  int64_t batch, time, dim, nstate;
};

Dims check_common(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& At,
                  const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                  const std::optional<at::Tensor>& resets, int64_t chunk) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "rnnkit_selective_cpp: float32 or float64 expected, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 3, "rnnkit_selective_cpp: x must be (B, T, D), got ", x.sizes());
  TORCH_CHECK(At.dim() == 2, "rnnkit_selective_cpp: At must be (N, D), got ", At.sizes());
  TORCH_CHECK(chunk > 0, "rnnkit_selective_cpp: chunk must be positive, got ", chunk);
  const Dims d{x.size(0), x.size(1), x.size(2), At.size(0)};
  check_input(x, x, "x", {d.batch, d.time, d.dim});
  check_input(x, dt, "dt", {d.batch, d.time, d.dim});
  check_input(x, At, "At", {d.nstate, d.dim});
  check_input(x, B, "B", {d.batch, d.time, d.nstate});
  check_input(x, C, "C", {d.batch, d.time, d.nstate});
  check_input(x, D, "D", {d.dim});
  if (resets.has_value()) {
    TORCH_CHECK(resets->scalar_type() == at::kBool, "rnnkit_selective_cpp: resets must be bool");
    TORCH_CHECK(resets->sizes() == at::IntArrayRef({d.batch, d.time}) && resets->is_contiguous(),
                "rnnkit_selective_cpp: resets must be contiguous (B, T), got ", resets->sizes());
  }
  return d;
}

template <typename T>
Problem<T> problem(const Dims& d, int64_t chunk, const at::Tensor& x, const at::Tensor& dt,
                   const at::Tensor& At, const at::Tensor& B, const at::Tensor& C,
                   const at::Tensor& D, const std::optional<at::Tensor>& resets) {
  return Problem<T>{d.batch,
                    d.time,
                    d.dim,
                    d.nstate,
                    chunk,
                    x.data_ptr<T>(),
                    dt.data_ptr<T>(),
                    At.data_ptr<T>(),
                    B.data_ptr<T>(),
                    C.data_ptr<T>(),
                    D.data_ptr<T>(),
                    resets.has_value() ? resets->data_ptr<bool>() : nullptr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_op(
    const at::Tensor& x, const at::Tensor& dt, const at::Tensor& At, const at::Tensor& B,
    const at::Tensor& C, const at::Tensor& D, const at::Tensor& h0,
    const std::optional<at::Tensor>& resets, int64_t chunk, bool save) {
  const Dims d = check_common(x, dt, At, B, C, D, resets, chunk);
  check_input(x, h0, "h0", {d.batch, d.dim, d.nstate});
  const int64_t nck = save ? (d.time + chunk - 1) / chunk : 0;
  at::Tensor y = at::empty({d.batch, d.time, d.dim}, x.options());
  at::Tensor h_last = at::empty({d.batch, d.dim, d.nstate}, x.options());
  at::Tensor ck = at::empty({save ? d.batch : 0, nck, d.dim, d.nstate}, x.options());
  if (d.batch == 0) return {y, h_last, ck};
  if (d.time == 0 || d.dim == 0) {
    h_last.copy_(h0);
    return {y, h_last, ck};
  }
  const Plan plan = make_plan(d.batch, d.time, d.dim, d.nstate);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_selective_forward", [&] {
    const Problem<scalar_t> p = problem<scalar_t>(d, chunk, x, dt, At, B, C, D, resets);
    const scalar_t* h0p = h0.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* hl = h_last.data_ptr<scalar_t>();
    scalar_t* ckp = save ? ck.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, plan.units, plan.grain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t blk = i % plan.blocks, d0 = blk * plan.block;
        const Unit<scalar_t> u{i / plan.blocks, d0, std::min(plan.block, d.dim - d0), blk};
        rnnkit_selective::forward_group(p, u, h0p, yp, hl, ckp);
      }
    });
  });
  return {y, h_last, ck};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
backward_op(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& At, const at::Tensor& B,
            const at::Tensor& C, const at::Tensor& D, const std::optional<at::Tensor>& resets,
            const at::Tensor& ck, const at::Tensor& dy, const at::Tensor& dh_last,
            int64_t chunk) {
  const Dims d = check_common(x, dt, At, B, C, D, resets, chunk);
  const int64_t nck = (d.time + chunk - 1) / chunk;
  check_input(x, dy, "dy", {d.batch, d.time, d.dim});
  check_input(x, dh_last, "dh_last", {d.batch, d.dim, d.nstate});
  at::Tensor dx = at::empty_like(x);
  at::Tensor ddt = at::empty_like(x);
  at::Tensor dh0 = at::empty({d.batch, d.dim, d.nstate}, x.options());
  if (d.batch == 0 || d.time == 0 || d.dim == 0) {
    dh0.copy_(dh_last);
    dx.zero_();
    ddt.zero_();
    return {dx,
            ddt,
            at::zeros({d.dim, d.nstate}, x.options()),
            at::zeros_like(B),
            at::zeros_like(C),
            at::zeros_like(D),
            dh0};
  }
  check_input(x, ck, "checkpoints", {d.batch, nck, d.dim, d.nstate});
  const Plan plan = make_plan(d.batch, d.time, d.dim, d.nstate);
  at::Tensor dA_part = at::empty({d.batch, d.dim, d.nstate}, x.options());
  at::Tensor dB_part = at::empty({d.batch, plan.blocks, d.time, d.nstate}, x.options());
  at::Tensor dC_part = at::empty({d.batch, plan.blocks, d.time, d.nstate}, x.options());
  at::Tensor dD_part = at::empty({d.batch, d.dim}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_selective_backward", [&] {
    const Problem<scalar_t> p = problem<scalar_t>(d, chunk, x, dt, At, B, C, D, resets);
    const Grads<scalar_t> g{ck.data_ptr<scalar_t>(),      dy.data_ptr<scalar_t>(),
                            dh_last.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                            ddt.data_ptr<scalar_t>(),     dA_part.data_ptr<scalar_t>(),
                            dB_part.data_ptr<scalar_t>(), dC_part.data_ptr<scalar_t>(),
                            dD_part.data_ptr<scalar_t>(), dh0.data_ptr<scalar_t>(),
                            plan.blocks};
    at::parallel_for(0, plan.units, plan.grain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t blk = i % plan.blocks, d0 = blk * plan.block;
        const Unit<scalar_t> u{i / plan.blocks, d0, std::min(plan.block, d.dim - d0), blk};
        rnnkit_selective::backward_group(p, u, g);
      }
    });
  });
  // the partial sums add up over batch rows (dA: (D, N), dD) and channel blocks (dB, dC)
  return {dx,
          ddt,
          dA_part.sum(0),
          plan.blocks == 1 ? dB_part.squeeze(1) : dB_part.sum(1),
          plan.blocks == 1 ? dC_part.squeeze(1) : dC_part.sum(1),
          dD_part.sum(0),
          dh0};
}

std::string simd_variant() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("x86-64-v3") ? "x86-64-v3 (AVX2, FMA)" : "x86-64 baseline";
#else
  return "compiler default";
#endif
}

}  // namespace

// The schemas, then the CPU kernels (the fake kernels for torch.compile are registered from
// Python, rnnkit/kernels/selective/cpp/_fake.py).
TORCH_LIBRARY(rnnkit_selective_cpp, m) {
  m.def(
      "forward(Tensor x, Tensor dt, Tensor At, Tensor B, Tensor C, Tensor D, Tensor h0, "
      "Tensor? resets, int chunk, bool save) -> (Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor x, Tensor dt, Tensor At, Tensor B, Tensor C, Tensor D, Tensor? resets, "
      "Tensor checkpoints, Tensor dy, Tensor dh_last, int chunk) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("simd_variant() -> str", &simd_variant);
}

TORCH_LIBRARY_IMPL(rnnkit_selective_cpp, CPU, m) {
  m.impl("forward", &forward_op);
  m.impl("backward", &backward_op);
}
