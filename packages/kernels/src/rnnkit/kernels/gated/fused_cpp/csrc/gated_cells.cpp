// Time loops of the gated cells (see gated_cells.h). Per step: the resets, one GEMM per head
// through Env::gemm, then ONE pass over the gates of every (head, batch) row that applies the
// activations, updates the state and stores what the backward needs. The reverse loops
// likewise do one GEMM per head and one pass per step. The equations are those of the Python
// loops in rnnkit/kernels/gated/fused/_lstm.py, _gru.py, _elman.py and _slstm.py.
//
// The float row kernels are compiled two or three times on x86-64 (target_clones: AVX-512
// with GCC >= 12, AVX2+FMA and baseline SSE2, picked when the library loads), so the cached
// library runs on any x86-64 CPU; no -march flag is used.
#include "gated_cells.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <memory>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "gated_math.h"
#include "gated_tiles.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define RNNKIT_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define RNNKIT_HAS_CLONES 2
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNNKIT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define RNNKIT_HAS_CLONES 1
#else
#define RNNKIT_CLONES
#define RNNKIT_HAS_CLONES 0
#endif

#if defined(__GNUC__)
#define RNNKIT_RESTRICT __restrict__
#else
#define RNNKIT_RESTRICT
#endif

namespace rnnkit_cpu {

namespace {
std::atomic<int64_t> g_team_loops{0};

// ---- phase timers of the team loops (off unless set_phase_timing(true)) -------------------
// Each thread of a team adds the wall time between its marks to one phase; the sums of all
// threads of all loops since the last reset are kept per direction (forward, reverse).
std::atomic<bool> g_phase_timing{false};
std::mutex g_phase_mutex;
double g_phase_sums[2][kPhases] = {};

struct PhaseClock {
  bool on = false;
  std::chrono::steady_clock::time_point last;
  double sums[kPhases] = {};

  void start() {
    on = g_phase_timing.load(std::memory_order_relaxed);
    for (double& v : sums) v = 0;
    if (on) last = std::chrono::steady_clock::now();
  }
  // The time since the previous mark belongs to `phase`.
  void mark(int phase) {
    if (!on) return;
    const auto now = std::chrono::steady_clock::now();
    sums[phase] += std::chrono::duration<double>(now - last).count();
    last = now;
  }
  void flush(bool reverse) {
    if (!on) return;
    const std::lock_guard<std::mutex> lock(g_phase_mutex);
    for (int i = 0; i < kPhases; ++i) g_phase_sums[reverse ? 1 : 0][i] += sums[i];
  }
};

thread_local PhaseClock t_clock;
}  // namespace

int64_t team_loops_run() { return g_team_loops.load(); }

void set_phase_timing(bool on) { g_phase_timing.store(on); }

std::vector<double> phase_times(bool reset) {
  const std::lock_guard<std::mutex> lock(g_phase_mutex);
  std::vector<double> out;
  for (const auto& dir : g_phase_sums) out.insert(out.end(), dir, dir + kPhases);
  if (reset)
    for (auto& dir : g_phase_sums)
      for (double& v : dir) v = 0;
  return out;
}

const char* simd_variant() {
#if RNNKIT_HAS_CLONES
  __builtin_cpu_init();
#if RNNKIT_HAS_CLONES == 2
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
#endif
  return __builtin_cpu_supports("x86-64-v3") ? "x86-64-v3 (AVX2, FMA)" : "x86-64 baseline";
#else
  return "compiler default";
#endif
}

namespace {

// ---- row kernels: one (head, batch) row of D units ----------------------------------------
// Bodies are templates; the float instances are wrapped in cloned functions below.

template <typename T>
RNNKIT_INLINE void lstm_fwd_body(const T* RNNKIT_RESTRICT px, T* RNNKIT_RESTRICT a,
                                 const T* RNNKIT_RESTRICT cp, T* RNNKIT_RESTRICT c,
                                 T* RNNKIT_RESTRICT tc, T* RNNKIT_RESTRICT h, int64_t D, int64_t L) {
  for (int64_t e = 0; e < L; ++e) {
    const T i = sigmoid_(a[e] + px[e]);
    const T f = sigmoid_(a[D + e] + px[D + e]);
    const T g = tanh_(a[2 * D + e] + px[2 * D + e]);
    const T o = sigmoid_(a[3 * D + e] + px[3 * D + e]);
    const T cn = f * cp[e] + i * g;
    const T t = tanh_(cn);
    a[e] = i;
    a[D + e] = f;
    a[2 * D + e] = g;
    a[3 * D + e] = o;
    c[e] = cn;
    tc[e] = t;
    h[e] = o * t;
  }
}

// dh = keep_h gh + dy;  dc += dh o (1 - tanh^2 c);  dq = [dc g i(1-i), dc c_prev f(1-f),
// dc i (1-g^2), dh tanh(c) o (1-o)];  dc_{t-1} = dc f keep_c.
template <typename T>
RNNKIT_INLINE void lstm_bwd_body(const T* RNNKIT_RESTRICT a, const T* RNNKIT_RESTRICT tc,
                                 const T* RNNKIT_RESTRICT cp, const T* RNNKIT_RESTRICT gh,
                                 const T* RNNKIT_RESTRICT dy, T keep_h, T keep_c,
                                 T* RNNKIT_RESTRICT dc, T* RNNKIT_RESTRICT dq, int64_t D, int64_t L) {
  for (int64_t e = 0; e < L; ++e) {
    const T i = a[e], f = a[D + e], g = a[2 * D + e], o = a[3 * D + e], t = tc[e];
    // Loads are unconditional and the reset is a select, so the loop has no branches.
    const T ghv = gh[e];
    const T dh = (keep_h != T(0) ? ghv : T(0)) + dy[e];
    const T dcv = dc[e] + dh * o * (T(1) - t * t);
    dq[e] = dcv * g * i * (T(1) - i);
    dq[D + e] = dcv * cp[e] * f * (T(1) - f);
    dq[2 * D + e] = dcv * i * (T(1) - g * g);
    dq[3 * D + e] = dh * t * o * (T(1) - o);
    dc[e] = keep_c != T(0) ? dcv * f : T(0);
  }
}

// q holds h W (+ b_hn added here); r, z = sigmoid(px + q), n = tanh(px_n + r q_n),
// h = n + z (h_prev - n).
template <typename T>
RNNKIT_INLINE void gru_fwd_body(const T* RNNKIT_RESTRICT px, T* RNNKIT_RESTRICT q,
                                const T* RNNKIT_RESTRICT bhn, const T* RNNKIT_RESTRICT hp,
                                T* RNNKIT_RESTRICT a, T* RNNKIT_RESTRICT h, int64_t D, int64_t L) {
  for (int64_t e = 0; e < L; ++e) {
    const T qn = q[2 * D + e] + (bhn != nullptr ? bhn[e] : T(0));
    const T r = sigmoid_(px[e] + q[e]);
    const T z = sigmoid_(px[D + e] + q[D + e]);
    const T n = tanh_(px[2 * D + e] + r * qn);
    q[2 * D + e] = qn;
    a[e] = r;
    a[D + e] = z;
    a[2 * D + e] = n;
    h[e] = n + z * (hp[e] - n);
  }
}

// dh = keep_next (gh + dh z_{t+1}) + dy;  d n~ = dh (1-z)(1-n^2);  dz = dh (h_prev - n) z(1-z);
// dr = d n~ q_n r (1-r);  d q_n = d n~ r.
template <typename T>
RNNKIT_INLINE void gru_bwd_body(const T* RNNKIT_RESTRICT a, const T* RNNKIT_RESTRICT z_next,
                                const T* RNNKIT_RESTRICT q, const T* RNNKIT_RESTRICT hp,
                                const T* RNNKIT_RESTRICT gh, const T* RNNKIT_RESTRICT dy,
                                T keep_next, T* RNNKIT_RESTRICT dh, T* RNNKIT_RESTRICT dq,
                                T* RNNKIT_RESTRICT dpx, int64_t D, int64_t L) {
  for (int64_t e = 0; e < L; ++e) {
    const T r = a[e], z = a[D + e], n = a[2 * D + e], qn = q[2 * D + e];
    const T through = gh[e] + dh[e] * z_next[e];
    const T g = (keep_next != T(0) ? through : T(0)) + dy[e];
    const T dan = g * (T(1) - z) * (T(1) - n * n);
    const T dz = g * (hp[e] - n) * z * (T(1) - z);
    const T dr = dan * qn * r * (T(1) - r);
    dh[e] = g;
    dq[e] = dr;
    dq[D + e] = dz;
    dq[2 * D + e] = dan * r;
    dpx[e] = dr;
    dpx[D + e] = dz;
    dpx[2 * D + e] = dan;
  }
}

template <typename T>
RNNKIT_INLINE void elman_fwd_body(const T* RNNKIT_RESTRICT px, T* RNNKIT_RESTRICT h, bool relu,
                                  int64_t D, int64_t L) {
  if (relu) {
    // !(v <= 0) rather than v > 0: a NaN pre-activation stays NaN, as in torch.relu.
    for (int64_t e = 0; e < L; ++e) {
      const T v = h[e] + px[e];
      h[e] = !(v <= T(0)) ? v : T(0);
    }
  } else {
    for (int64_t e = 0; e < L; ++e) h[e] = tanh_(h[e] + px[e]);
  }
}

// dq = (keep_h gh + dy) phi'(pre), phi' from the output h: ReLU h > 0, tanh 1 - h^2.
template <typename T>
RNNKIT_INLINE void elman_bwd_body(const T* RNNKIT_RESTRICT h, const T* RNNKIT_RESTRICT gh,
                                  const T* RNNKIT_RESTRICT dy, T keep_h, bool relu,
                                  T* RNNKIT_RESTRICT dq, int64_t D, int64_t L) {
  if (relu) {
    for (int64_t e = 0; e < L; ++e) {
      const T ghv = gh[e];
      const T dh = (keep_h != T(0) ? ghv : T(0)) + dy[e];
      dq[e] = h[e] > T(0) ? dh : T(0);
    }
  } else {
    for (int64_t e = 0; e < L; ++e) {
      const T ghv = gh[e];
      const T dh = (keep_h != T(0) ? ghv : T(0)) + dy[e];
      dq[e] = dh * (T(1) - h[e] * h[e]);
    }
  }
}

// a = log sigmoid(f~) + m_prev (-inf where n_prev == 0), m = max(i~, a), i' = e^(i~ - m),
// f' = e^(a - m), [c, n] = f' [c, n]_prev + i' [tanh z~, 1], h = sigmoid(o~) c / n.
template <typename T>
RNNKIT_INLINE void slstm_fwd_body(const T* RNNKIT_RESTRICT px, T* RNNKIT_RESTRICT g,
                                  T* RNNKIT_RESTRICT ex, const T* RNNKIT_RESTRICT cnp,
                                  const T* RNNKIT_RESTRICT mp, T* RNNKIT_RESTRICT cn,
                                  T* RNNKIT_RESTRICT m, T* RNNKIT_RESTRICT h, int64_t D, int64_t L) {
  for (int64_t e = 0; e < L; ++e) {
    const T gi = g[e] + px[e];
    const T gf = g[D + e] + px[D + e];
    const T zt = tanh_(g[2 * D + e] + px[2 * D + e]);
    const T o = sigmoid_(g[3 * D + e] + px[3 * D + e]);
    const T c_prev = cnp[e], n_prev = cnp[D + e];
    const T acc = log_sigmoid_(gf) + mp[e];
    const T a = n_prev == T(0) ? neg_inf<T>() : acc;
    // torch.maximum: NaN wins; a NaN in i~ must not be hidden by the comparison. (Bitwise
    // | and &, not || and &&: no branches, so the loop vectorises.)
    const T mv = ((gi >= a) | (gi != gi)) ? gi : a;
    const T ip = exp_(gi - mv);
    const T fp = exp_(a - mv);
    const T c = fp * c_prev + ip * zt;
    const T n = fp * n_prev + ip;
    g[e] = gi;
    g[D + e] = gf;
    g[2 * D + e] = zt;
    g[3 * D + e] = o;
    ex[e] = ip;
    ex[D + e] = fp;
    cn[e] = c;
    cn[D + e] = n;
    m[e] = mv;
    h[e] = o * c / n;
  }
}

// See the module docstring of rnnkit/kernels/gated/fused/_slstm.py for the derivation.
template <typename T>
RNNKIT_INLINE void slstm_bwd_body(const T* RNNKIT_RESTRICT g, const T* RNNKIT_RESTRICT ex,
                                  const T* RNNKIT_RESTRICT cn, const T* RNNKIT_RESTRICT m,
                                  const T* RNNKIT_RESTRICT h, const T* RNNKIT_RESTRICT cnp,
                                  const T* RNNKIT_RESTRICT gh, const T* RNNKIT_RESTRICT dy,
                                  T keep_c, T* RNNKIT_RESTRICT dc,
                                  T* RNNKIT_RESTRICT dn, T* RNNKIT_RESTRICT dm,
                                  T* RNNKIT_RESTRICT dq, int64_t D, int64_t L) {
  for (int64_t e = 0; e < L; ++e) {
    const T gi = g[e], gf = g[D + e], zt = g[2 * D + e], o = g[3 * D + e];
    const T ip = ex[e], fp = ex[D + e];
    const T c = cn[e], n = cn[D + e];
    // gh is zero where step t + 1 restarted (set by the caller: a third select here stops
    // GCC from vectorising the loop).
    const T dh = gh[e] + dy[e];
    const T inv_n = T(1) / n;
    const T dcv = dc[e] + dh * (o * inv_n);
    const T dnv = dn[e] + dh * (-h[e] * inv_n);
    const T d_o = dh * (c * inv_n * o * (T(1) - o));
    const T dz = dcv * (ip * (T(1) - zt * zt));
    const T dei = dcv * (zt * ip) + dnv * ip;
    const T def = dcv * (cnp[e] * fp) + dnv * (cnp[D + e] * fp);
    const T dmt = dm[e] - (dei + def);
    // m took i~ (s = 1), a (s = 0), or a tie (f' == 1 too): split evenly as torch.maximum.
    const T took = gi == m[e] ? T(1) : T(0);
    const T s = ((took > T(0)) & (fp == T(1))) ? T(0.5) : took;
    const T da = def + (T(1) - s) * dmt;
    dq[e] = dei + s * dmt;
    dq[D + e] = da * sigmoid_(-gf);
    dq[2 * D + e] = dz;
    dq[3 * D + e] = d_o;
    dm[e] = keep_c != T(0) ? da : T(0);
    dc[e] = keep_c != T(0) ? dcv * fp : T(0);
    dn[e] = keep_c != T(0) ? dnv * fp : T(0);
  }
}

// Float wrappers get target_clones; double ones do not (libm calls do not vectorise).
#define RNNKIT_ROW_WRAPPERS(name, body, PARAMS_F, PARAMS_D, ARGS) \
  RNNKIT_CLONES void name PARAMS_F { body<float> ARGS; }          \
  void name PARAMS_D { body<double> ARGS; }

#define P(T)                                                                              \
  (const T* px, T* a, const T* cp, T* c, T* tc, T* h, int64_t D, int64_t L)
RNNKIT_ROW_WRAPPERS(lstm_fwd_row, lstm_fwd_body, P(float), P(double), (px, a, cp, c, tc, h, D, L))
#undef P
#define P(T)                                                                            \
  (const T* a, const T* tc, const T* cp, const T* gh, const T* dy, T kh, T kc, T* dc, \
   T* dq, int64_t D, int64_t L)
RNNKIT_ROW_WRAPPERS(lstm_bwd_row, lstm_bwd_body, P(float), P(double),
                    (a, tc, cp, gh, dy, kh, kc, dc, dq, D, L))
#undef P
#define P(T) (const T* px, T* q, const T* bhn, const T* hp, T* a, T* h, int64_t D, int64_t L)
RNNKIT_ROW_WRAPPERS(gru_fwd_row, gru_fwd_body, P(float), P(double), (px, q, bhn, hp, a, h, D, L))
#undef P
#define P(T)                                                                                \
  (const T* a, const T* zn, const T* q, const T* hp, const T* gh, const T* dy, T kn, T* dh, \
   T* dq, T* dpx, int64_t D, int64_t L)
RNNKIT_ROW_WRAPPERS(gru_bwd_row, gru_bwd_body, P(float), P(double),
                    (a, zn, q, hp, gh, dy, kn, dh, dq, dpx, D, L))
#undef P
#define P(T) (const T* px, T* h, bool relu, int64_t D, int64_t L)
RNNKIT_ROW_WRAPPERS(elman_fwd_row, elman_fwd_body, P(float), P(double), (px, h, relu, D, L))
#undef P
#define P(T) (const T* h, const T* gh, const T* dy, T kh, bool relu, T* dq, int64_t D, int64_t L)
RNNKIT_ROW_WRAPPERS(elman_bwd_row, elman_bwd_body, P(float), P(double),
                    (h, gh, dy, kh, relu, dq, D, L))
#undef P
#define P(T)                                                                                \
  (const T* px, T* g, T* ex, const T* cnp, const T* mp, T* cn, T* m, T* h, int64_t D, int64_t L)
RNNKIT_ROW_WRAPPERS(slstm_fwd_row, slstm_fwd_body, P(float), P(double),
                    (px, g, ex, cnp, mp, cn, m, h, D, L))
#undef P
#define P(T)                                                                               \
  (const T* g, const T* ex, const T* cn, const T* m, const T* h, const T* cnp, const T* gh, \
   const T* dy, T kc, T* dc, T* dn, T* dm, T* dq, int64_t D, int64_t L)
RNNKIT_ROW_WRAPPERS(slstm_bwd_row, slstm_bwd_body, P(float), P(double),
                    (g, ex, cn, m, h, cnp, gh, dy, kc, dc, dn, dm, dq, D, L))
#undef P
#undef RNNKIT_ROW_WRAPPERS

// ---- shared loop pieces --------------------------------------------------------------------

// Offset of row b of step t of head n in a (N, steps, B, width) buffer.
inline int64_t at(int64_t n, int64_t t, int64_t b, int64_t steps, int64_t B, int64_t width) {
  return ((n * steps + t) * B + b) * width;
}

inline bool reset_at(const uint8_t* mask, int64_t t, int64_t b, int64_t B) {
  return mask != nullptr && mask[t * B + b] != 0;
}

// Runs f(n, b) for every (head, batch) row; rows are split across threads only when a step
// has enough pointwise work to pay for waking them (Env::grain_elements).
template <typename T, typename F>
void for_rows(const Env<T>& env, const Dims& d, int64_t width, const F& f) {
  const int64_t rows = d.N * d.B;
  const int64_t grain = std::max<int64_t>(1, env.grain_elements / std::max<int64_t>(1, width));
  if (rows <= grain) {
    for (int64_t r = 0; r < rows; ++r) f(r / d.B, r % d.B);
    return;
  }
  env.parallel(rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r / d.B, r % d.B);
  });
}

template <typename T>
void fill(T* p, T v, int64_t n) {
  std::fill(p, p + n, v);
}

// h entering step t after resets: rows that restart are set to `init`, the others copied.
template <typename T>
void reset_rows(const Dims& d, const uint8_t* mask, int64_t t, const T* src, int64_t src_head,
                T* dst, int64_t dst_head, T init, int64_t width) {
  for (int64_t n = 0; n < d.N; ++n) {
    for (int64_t b = 0; b < d.B; ++b) {
      T* o = dst + n * dst_head + b * width;
      if (reset_at(mask, t, b, d.B)) {
        fill(o, init, width);
      } else {
        std::memcpy(o, src + n * src_head + b * width, sizeof(T) * width);
      }
    }
  }
}

// The recurrent weights of every head, prepared once per loop (Env::prepare may pack them):
// forward products gates (B x GD) = h (B x D) @ W, or with `transposed` the backward
// products (B x D) = dq (B x GD) @ W^T.
template <typename T>
class HeadWeights {
 public:
  HeadWeights(const Env<T>& env, const Dims& d, int64_t G, const T* W, bool transposed)
      : env_(env), handles_(d.N, nullptr) {
    const int64_t D = d.D, GD = G * d.D;
    try {
      for (int64_t n = 0; n < d.N; ++n) {
        handles_[n] = transposed ? env.prepare(true, d.B, D, GD, W + n * D * GD, GD)
                                 : env.prepare(false, d.B, GD, D, W + n * D * GD, GD);
      }
    } catch (...) {
      release();
      throw;
    }
  }
  ~HeadWeights() { release(); }
  HeadWeights(const HeadWeights&) = delete;
  HeadWeights& operator=(const HeadWeights&) = delete;

  void multiply(int64_t n, const T* a, int64_t lda, T* c, int64_t ldc) const {
    env_.multiply(handles_[n], a, lda, c, ldc);
  }

 private:
  void release() {
    for (void*& h : handles_) {
      if (h != nullptr) env_.release(h);
      h = nullptr;
    }
  }
  const Env<T>& env_;
  std::vector<void*> handles_;
};

// out[n] (B x D) = dq[n] (B x GD) @ W[n]^T for every head: the gradient reaching h.
template <typename T>
void grad_through_w(const HeadWeights<T>& wt, const Dims& d, int64_t G, const T* dq,
                    int64_t dq_head, T* out) {
  for (int64_t n = 0; n < d.N; ++n) {
    wt.multiply(n, dq + n * dq_head, G * d.D, out + n * d.B * d.D, d.D);
  }
}

// gates[n] (B x GD) = h[n] (B x D) @ W[n] for every head.
template <typename T>
void step_gemm(const HeadWeights<T>& w, const Dims& d, int64_t G, const T* h, int64_t h_head,
               T* out, int64_t out_head) {
  for (int64_t n = 0; n < d.N; ++n) {
    w.multiply(n, h + n * h_head, d.D, out + n * out_head, G * d.D);
  }
}

// dh0 = keep_0 (dq_0 W^T) + dy_0, with dq_0 W^T already in `gw`.
template <typename T>
void initial_grad(const Dims& d, const uint8_t* mask, const T* gw, const T* d_hs, T* dh0) {
  const int64_t D = d.D;
  for (int64_t n = 0; n < d.N; ++n) {
    for (int64_t b = 0; b < d.B; ++b) {
      const bool keep = !reset_at(mask, 0, b, d.B);
      const T* g = gw + (n * d.B + b) * D;
      const T* dy = d_hs + at(n, 0, b, d.T + 1, d.B, D);
      T* o = dh0 + (n * d.B + b) * D;
      for (int64_t e = 0; e < D; ++e) o[e] = (keep ? g[e] : T(0)) + dy[e];
    }
  }
}

// h_0 feeds step 0 through W and directly through z_0: dh0 = keep_0 (dq_0 W^T + dh z_0) + dy_0,
// with dq_0 W^T already in a.scratch.
template <typename T>
void gru_initial_grad(const Dims& d, const GruBackward<T>& a) {
  const int64_t T_ = d.T, B = d.B, D = d.D, GD = 3 * D;
  for (int64_t n = 0; n < d.N; ++n) {
    for (int64_t b = 0; b < B; ++b) {
      const bool keep = !reset_at(a.mask, 0, b, B);
      const T* g = a.scratch + (n * B + b) * D;
      const T* dh = a.dh + (n * B + b) * D;
      const T* z = a.acts + at(n, 0, b, T_, B, GD) + D;
      const T* dy = a.d_hs + at(n, 0, b, T_ + 1, B, D);
      T* o = a.dh0 + (n * B + b) * D;
      for (int64_t e = 0; e < D; ++e) o[e] = (keep ? g[e] + dh[e] * z[e] : T(0)) + dy[e];
    }
  }
}

// ---- reverse steps of one row (shared by the per-head and the team loops) -----------------
// Units [u, u + L) of row (n, b) at step t; the gradient through W of step t + 1 is already in
// a.scratch (undefined at the last step, where it is not used).

template <typename T>
void lstm_bwd_step(const Dims& d, const LstmBackward<T>& a, int64_t t, int64_t n, int64_t u,
                   int64_t L, int64_t b) {
  const int64_t T_ = d.T, B = d.B, D = d.D, GD = 4 * D, r = (n * B + b) * D + u;
  const T keep_h = t < T_ - 1 && !reset_at(a.mask, t + 1, b, B) ? T(1) : T(0);
  lstm_bwd_row(a.acts + at(n, t, b, T_, B, GD) + u, a.tcs + at(n, t, b, T_, B, D) + u,
               a.cs + at(n, t, b, T_ + 1, B, D) + u, a.scratch + r,
               a.d_hs + at(n, t + 1, b, T_ + 1, B, D) + u, keep_h,
               reset_at(a.mask, t, b, B) ? T(0) : T(1), a.dc + r,
               a.dq + at(n, t, b, T_, B, GD) + u, D, L);
}

template <typename T>
void gru_bwd_step(const Dims& d, const GruBackward<T>& a, int64_t t, int64_t n, int64_t u,
                  int64_t L, int64_t b) {
  const int64_t T_ = d.T, B = d.B, D = d.D, GD = 3 * D, r = (n * B + b) * D + u;
  const T keep_next = t < T_ - 1 && !reset_at(a.mask, t + 1, b, B) ? T(1) : T(0);
  // z of step t + 1 (any valid row at the last step, where keep_next is false).
  const T* z_next = a.acts + at(n, std::min(t + 1, T_ - 1), b, T_, B, GD) + D + u;
  gru_bwd_row(a.acts + at(n, t, b, T_, B, GD) + u, z_next, a.qs + at(n, t, b, T_, B, GD) + u,
              a.hp + n * a.hp_head + t * a.hp_step + b * D + u, a.scratch + r,
              a.d_hs + at(n, t + 1, b, T_ + 1, B, D) + u, keep_next, a.dh + r,
              a.dq + at(n, t, b, T_, B, GD) + u, a.dpx + at(n, t, b, T_, B, GD) + u, D, L);
}

template <typename T>
void elman_bwd_step(const Dims& d, const ElmanBackward<T>& a, int64_t t, int64_t n, int64_t u,
                    int64_t L, int64_t b) {
  const int64_t T_ = d.T, B = d.B, D = d.D;
  const T keep_h = t < T_ - 1 && !reset_at(a.mask, t + 1, b, B) ? T(1) : T(0);
  elman_bwd_row(a.hs + at(n, t + 1, b, T_ + 1, B, D) + u, a.scratch + (n * B + b) * D + u,
                a.d_hs + at(n, t + 1, b, T_ + 1, B, D) + u, keep_h, a.relu,
                a.dq + at(n, t, b, T_, B, D) + u, D, L);
}

template <typename T>
void slstm_bwd_step(const Dims& d, const SlstmBackward<T>& a, int64_t t, int64_t n, int64_t u,
                    int64_t L, int64_t b) {
  const int64_t T_ = d.T, B = d.B, D = d.D, GD = 4 * D, r = (n * B + b) * D + u;
  // No gradient through W at the last step or where step t + 1 restarted.
  if (t == T_ - 1 || reset_at(a.mask, t + 1, b, B)) fill(a.scratch + r, T(0), L);
  slstm_bwd_row(a.gates + at(n, t, b, T_, B, GD) + u, a.ex + at(n, t, b, T_, B, 2 * D) + u,
                a.cn + at(n, t + 1, b, T_ + 1, B, 2 * D) + u,
                a.ms + at(n, t + 1, b, T_ + 1, B, D) + u, a.hs + at(n, t + 1, b, T_ + 1, B, D) + u,
                a.cnp + n * a.cnp_head + t * a.cnp_step + b * 2 * D + u, a.scratch + r,
                a.d_hs + at(n, t + 1, b, T_ + 1, B, D) + u,
                reset_at(a.mask, t, b, B) ? T(0) : T(1), a.dc + r, a.dn + r, a.dm + r,
                a.dq + at(n, t, b, T_, B, GD) + u, D, L);
}

// ---- team loops (float) --------------------------------------------------------------------
// The hidden units of every head are cut into blocks of `vb` (the tile width); each thread of
// a team owns a contiguous run of blocks for the whole loop, packs their weights once into
// its own panels (which then stay in its cache), and per step computes the products AND the
// pointwise pass of its units only. The state a step writes is read by every thread at the
// next step, so the team meets at one barrier per step. The equations are the row kernels
// above (called with a count of one block run instead of D), so the team loops store exactly
// what the per-head loops store; only the summation order of the products differs.

// Multiply-adds of one step below which a thread is not worth waking (a barrier costs about
// a microsecond; this is a few microseconds of work).
constexpr int64_t kTeamWork = int64_t(1) << 16;

void team_barrier() {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

// Runs f(rank, size) on a team of up to `want` threads (OpenMP, torch's own pool); one thread
// when OpenMP is off or this is already inside a parallel region.
template <typename F>
void run_team(int64_t want, const F& f) {
#ifdef _OPENMP
  if (want > 1 && omp_in_parallel() == 0) {
#pragma omp parallel num_threads(static_cast<int>(want))
    f(static_cast<int64_t>(omp_get_thread_num()), static_cast<int64_t>(omp_get_num_threads()));
    return;
  }
#endif
  f(0, 1);
}

class Team {
 public:
  // G gates; the panels are packed by run_loop (forward or transposed).
  Team(const TileKernels& tk, const Dims& d, int64_t G, int64_t threads)
      : tk(tk), d(d), G(G), vb(tk.vb), nb(d.D / tk.vb), total(d.N * (d.D / tk.vb)) {
    const int64_t work = d.N * d.B * G * d.D * d.D;
    size = std::max<int64_t>(1, std::min({threads, total, work / kTeamWork}));
    if (3 * tk.rows > kMaxRows)
      throw std::logic_error("rnnkit fused_cpp: tiles of more than kMaxRows / 3 rows");
    // Not value-initialised: each thread writes (and so first touches) its own panels.
    panels.reset(new float[static_cast<size_t>(total * G * d.D * vb)]);
  }

  // The blocks of thread `rank` among `team` threads: [first, last).
  std::pair<int64_t, int64_t> share(int64_t rank, int64_t team) const {
    return {total * rank / team, total * (rank + 1) / team};
  }

  // Panel of block `blk` (head blk / nb, units u = (blk % nb) vb ...): forward
  // p[(k G + g) vb + e] = W[n][k][g D + u + e]; transposed p[c vb + e] = W[n][u + e][c].
  void pack(int64_t blk, const float* W, bool transposed) {
    const int64_t D = d.D, GD = G * D, n = blk / nb, u = (blk % nb) * vb;
    const float* w = W + n * D * GD;
    float* p = panel(blk);
    if (!transposed) {
      for (int64_t k = 0; k < D; ++k)
        for (int64_t g = 0; g < G; ++g)
          std::memcpy(p + (k * G + g) * vb, w + k * GD + g * D + u, sizeof(float) * vb);
    } else {
      for (int64_t c = 0; c < GD; ++c)
        for (int64_t e = 0; e < vb; ++e) p[c * vb + e] = w[(u + e) * GD + c];
    }
  }

  float* panel(int64_t blk) { return panels.get() + blk * G * d.D * vb; }

  // Calls f(n, u, first, count) for runs of at most 4 consecutive blocks of one head among
  // [first, last): head n, units u .. u + count vb.
  template <typename F>
  void for_runs(int64_t first, int64_t last, const F& f) const {
    for (int64_t blk = first; blk < last;) {
      const int64_t n = blk / nb;
      const int64_t end = std::min({last, blk + 4, (n + 1) * nb});
      f(n, (blk % nb) * vb, blk, end - blk);
      blk = end;
    }
  }

  // Forward products of a run for batch rows [b0, b0 + rows): out_row(b) + u receives the G
  // gate blocks (gate stride D) of h_row(b) W; one output vector per (block, gate).
  template <typename HRow, typename ORow>
  void forward(int64_t blk, int64_t count, int64_t b0, int64_t rows, const HRow& h_row,
               const ORow& out_row) {
    const float* p[kMaxVectors];
    int64_t off[kMaxVectors];
    const float* a[kMaxRows];
    float* o[kMaxRows];
    int nv = 0;
    for (int64_t j = 0; j < count; ++j) {
      for (int64_t g = 0; g < G; ++g, ++nv) {
        p[nv] = panel(blk + j) + g * vb;
        off[nv] = g * d.D + j * vb;
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      a[r] = h_row(b0 + r);
      o[r] = out_row(b0 + r);
    }
    tk.product(nv, static_cast<int>(rows), p, G * vb, a, d.D, o, off);
  }

  // Backward products of a run: out_row(b)[0 .. count vb) = dq_row(b) (G D) @ W^T; one output
  // vector per block.
  template <typename ARow, typename ORow>
  void backward(int64_t blk, int64_t count, int64_t b0, int64_t rows, const ARow& dq_row,
                const ORow& out_row) {
    const float* p[kMaxVectors];
    int64_t off[kMaxVectors];
    const float* a[kMaxRows];
    float* o[kMaxRows];
    for (int64_t j = 0; j < count; ++j) {
      p[j] = panel(blk + j);
      off[j] = j * vb;
    }
    for (int64_t r = 0; r < rows; ++r) {
      a[r] = dq_row(b0 + r);
      o[r] = out_row(b0 + r);
    }
    tk.product(static_cast<int>(count), static_cast<int>(rows), p, vb, a, G * d.D, o, off);
  }

  // Prefetches what the thread's units read at the next step of the loop: for every run of
  // its blocks (head n, units u ..) and every batch row b, `pieces` spans of the run's units at
  // p + n head + b row + i D + u (i < pieces). The loops read each step's slice of their big
  // (N, T, B, width) buffers once, in short spans per row that the hardware prefetchers do not
  // pick up, and stalled on them (VM, LSTM training, fastest of 6 calls: forward loop 60-66 ->
  // 49-57 ms, reverse 41-50 -> 38-41 ms). Prefetching what a step writes (for ownership) made
  // the forward loop slower: only reads are prefetched.
  void prefetch(int64_t first, int64_t last, int64_t pieces, const float* p, int64_t head,
                int64_t row) const {
    for_runs(first, last, [&](int64_t n, int64_t u, int64_t, int64_t count) {
      const int64_t bytes = count * vb * static_cast<int64_t>(sizeof(float));
      for (int64_t b = 0; b < d.B; ++b) {
        for (int64_t i = 0; i < pieces; ++i) {
          const char* q = reinterpret_cast<const char*>(p + n * head + b * row + i * d.D + u);
          // Every line of [q, q + bytes); q need not start a line.
          for (int64_t o = 0; o < bytes + 63; o += 64)
            __builtin_prefetch(q + std::min(o, bytes - 1), 0, 2);
        }
      }
    });
  }

  // The same for step t of an (N, steps, B, width) buffer.
  void prefetch_step(int64_t first, int64_t last, int64_t pieces, const float* buf,
                     int64_t steps, int64_t width, int64_t t) const {
    prefetch(first, last, pieces, buf + t * d.B * width, steps * d.B * width, width);
  }

  // Calls f(b0, rows) over the batch in slices of three register tiles of rows (one product
  // call each: the kernel reuses a chunk of the weights for all rows of a slice, and the
  // slice's gates are still in cache for the pointwise pass that follows).
  template <typename F>
  void for_row_tiles(const F& f) const {
    const int64_t slice = 3 * static_cast<int64_t>(tk.rows);
    for (int64_t b0 = 0; b0 < d.B; b0 += slice) f(b0, std::min(slice, d.B - b0));
  }

  // Row pointers of one slice (three tiles of at most 8 rows).
  static constexpr int64_t kMaxRows = 24;

  // One forward step over the thread's blocks [first, last): for each run of blocks and slice
  // of batch rows, the gate products of h_row(n, b) (the state entering the step) into
  // out_row(n, b) + u (gate stride D), then row(n, u, L, b) for the L units u.. of head n.
  template <typename HRow, typename ORow, typename Row>
  void forward_step(int64_t first, int64_t last, const HRow& h_row, const ORow& out_row,
                    const Row& row) {
    t_clock.mark(kPhasePrefetch);
    for_runs(first, last, [&](int64_t n, int64_t u, int64_t blk, int64_t count) {
      for_row_tiles([&](int64_t b0, int64_t rows) {
        forward(blk, count, b0, rows, [&](int64_t b) { return h_row(n, b); },
                [&](int64_t b) { return out_row(n, b) + u; });
        t_clock.mark(kPhaseProduct);
        for (int64_t b = b0; b < b0 + rows; ++b) row(n, u, count * vb, b);
        t_clock.mark(kPhasePointwise);
      });
    });
  }

  // One reverse step at step t: unless t is the last step, the rows (n, b) of `gh` (N, B, D)
  // receive dq_{t+1} W^T for the thread's units; then row(t, n, u, L, b). With t = -1 only
  // the products, of dq_0 (the gradient reaching h_0 through W).
  template <typename Row>
  void reverse_step(int64_t first, int64_t last, int64_t t, const float* dq, float* gh,
                    const Row& row) {
    const int64_t GD = G * d.D;
    t_clock.mark(kPhasePrefetch);
    for_runs(first, last, [&](int64_t n, int64_t u, int64_t blk, int64_t count) {
      for_row_tiles([&](int64_t b0, int64_t rows) {
        if (t < d.T - 1)
          backward(blk, count, b0, rows,
                   [&](int64_t b) { return dq + at(n, t + 1, b, d.T, d.B, GD); },
                   [&](int64_t b) { return gh + (n * d.B + b) * d.D + u; });
        t_clock.mark(kPhaseProduct);
        if (t >= 0)
          for (int64_t b = b0; b < b0 + rows; ++b) row(t, n, u, count * vb, b);
        t_clock.mark(kPhasePointwise);
      });
    });
  }

  const TileKernels& tk;
  const Dims d;
  const int64_t G, vb, nb, total;
  int64_t size;

 private:
  std::unique_ptr<float[]> panels;
};

// Whether the team loops take this call (see Env::tiles).
bool team_applies(const Env<float>& env, const Dims& d) {
  return env.tiles != nullptr && d.D % env.tiles->vb == 0;
}

// Runs a whole loop: packs the panels of each thread's blocks, then step(rank_first,
// rank_last, t) for t in `steps` order with a barrier after each, then tail(first, last).
template <typename Step, typename Tail>
void run_loop(Team& team, const float* W, bool transposed, bool reverse, const Step& step,
              const Tail& tail) {
  const int64_t T_ = team.d.T;
  g_team_loops.fetch_add(1);
  run_team(team.size, [&](int64_t rank, int64_t size) {
    const auto [first, last] = team.share(rank, size);
    t_clock.start();
    for (int64_t blk = first; blk < last; ++blk) team.pack(blk, W, transposed);
    t_clock.mark(kPhasePack);
    for (int64_t i = 0; i < T_; ++i) {
      step(first, last, reverse ? T_ - 1 - i : i);
      t_clock.mark(kPhasePointwise);  // what follows the last row pass (resets, none usually)
      team_barrier();
      t_clock.mark(kPhaseBarrier);
    }
    tail(first, last);
    t_clock.mark(kPhaseProduct);
    t_clock.flush(reverse);
  });
}

void no_tail(int64_t, int64_t) {}

// h entering step t of row b: the init row where it restarts, else hs[:, t].
const float* h_entering(const Dims& d, const uint8_t* mask, const float* hs,
                        const std::vector<float>& init, int64_t n, int64_t t, int64_t b) {
  return reset_at(mask, t, b, d.B) ? init.data() : hs + at(n, t, b, d.T + 1, d.B, d.D);
}

// A reverse loop of Team::reverse_step with row(t, n, u, L, b), then the products of dq_0
// into `gh` (what reaches h_0 through W).
// ahead(first, last, t) prefetches what row() reads at step t (Team::prefetch); it runs for
// step t - 1 at the start of step t.
template <typename Row, typename Ahead>
void run_reverse(Team& team, const float* W, const float* dq, float* gh, const Row& row,
                 const Ahead& ahead) {
  const auto none = [](int64_t, int64_t, int64_t, int64_t, int64_t) {};
  run_loop(
      team, W, true, true,
      [&](int64_t first, int64_t last, int64_t t) {
        if (t > 0) ahead(first, last, t - 1);
        team.reverse_step(first, last, t, dq, gh, row);
      },
      [&](int64_t first, int64_t last) { team.reverse_step(first, last, -1, dq, gh, none); });
}

bool team_lstm_forward(const Env<float>& env, const Dims& d, const LstmForward<float>& a) {
  if (!team_applies(env, d)) return false;
  Team team(*env.tiles, d, 4, env.threads);
  const int64_t T_ = d.T, B = d.B, D = d.D, GD = 4 * D;
  const int64_t k = a.save ? T_ : 1, nc = a.save ? T_ + 1 : 2;
  const std::vector<float> init_h(static_cast<size_t>(D), a.h_init);
  const auto step = [&](int64_t first, int64_t last, int64_t t) {
    const int64_t s = a.save ? t : 0, ci = t % nc, co = (t + 1) % nc;
    if (t + 1 < T_) team.prefetch_step(first, last, 4, a.px, T_, GD, t + 1);
    team.forward_step(
        first, last,
        [&](int64_t n, int64_t b) { return h_entering(d, a.mask, a.hs, init_h, n, t, b); },
        [&](int64_t n, int64_t b) { return a.acts + at(n, s, b, k, B, GD); },
        [&](int64_t n, int64_t u, int64_t L, int64_t b) {
          float* c_in = a.cs + at(n, ci, b, nc, B, D) + u;
          if (a.mask != nullptr) {
            std::memcpy(a.hp + at(n, s, b, k, B, D) + u,
                        h_entering(d, a.mask, a.hs, init_h, n, t, b) + u, sizeof(float) * L);
            if (reset_at(a.mask, t, b, B)) fill(c_in, a.c_init, L);
          }
          lstm_fwd_row(a.px + at(n, t, b, T_, B, GD) + u, a.acts + at(n, s, b, k, B, GD) + u,
                       c_in, a.cs + at(n, co, b, nc, B, D) + u, a.tcs + at(n, s, b, k, B, D) + u,
                       a.hs + at(n, t + 1, b, T_ + 1, B, D) + u, D, L);
        });
  };
  run_loop(team, a.W, false, false, step, no_tail);
  return true;
}

bool team_lstm_backward(const Env<float>& env, const Dims& d, const LstmBackward<float>& a) {
  if (!team_applies(env, d)) return false;
  Team team(*env.tiles, d, 4, env.threads);
  run_reverse(team, a.W, a.dq, a.scratch,
              [&](int64_t t, int64_t n, int64_t u, int64_t L, int64_t b) {
                lstm_bwd_step(d, a, t, n, u, L, b);
              },
              [&](int64_t first, int64_t last, int64_t t) {
                const int64_t T_ = d.T, D = d.D;
                team.prefetch_step(first, last, 4, a.acts, T_, 4 * D, t);
                team.prefetch_step(first, last, 1, a.tcs, T_, D, t);
                team.prefetch_step(first, last, 1, a.cs, T_ + 1, D, t);
                team.prefetch_step(first, last, 1, a.d_hs, T_ + 1, D, t + 1);
              });
  initial_grad(d, a.mask, a.scratch, a.d_hs, a.dh0);
  return true;
}

bool team_gru_forward(const Env<float>& env, const Dims& d, const GruForward<float>& a) {
  if (!team_applies(env, d)) return false;
  Team team(*env.tiles, d, 3, env.threads);
  const int64_t T_ = d.T, B = d.B, D = d.D, GD = 3 * D;
  const int64_t k = a.save ? T_ : 1;
  const std::vector<float> init_h(static_cast<size_t>(D), a.h_init);
  const auto step = [&](int64_t first, int64_t last, int64_t t) {
    const int64_t s = a.save ? t : 0;
    if (t + 1 < T_) team.prefetch_step(first, last, 3, a.px, T_, GD, t + 1);
    team.forward_step(
        first, last,
        [&](int64_t n, int64_t b) { return h_entering(d, a.mask, a.hs, init_h, n, t, b); },
        [&](int64_t n, int64_t b) { return a.qs + at(n, s, b, k, B, GD); },
        [&](int64_t n, int64_t u, int64_t L, int64_t b) {
          const float* h_in = h_entering(d, a.mask, a.hs, init_h, n, t, b);
          if (a.mask != nullptr) {
            float* hp = a.hp + at(n, s, b, k, B, D);
            std::memcpy(hp + u, h_in + u, sizeof(float) * L);
            h_in = hp;
          }
          gru_fwd_row(a.px + at(n, t, b, T_, B, GD) + u, a.qs + at(n, s, b, k, B, GD) + u,
                      a.bhn != nullptr ? a.bhn + n * D + u : nullptr, h_in + u,
                      a.acts + at(n, s, b, k, B, GD) + u,
                      a.hs + at(n, t + 1, b, T_ + 1, B, D) + u, D, L);
        });
  };
  run_loop(team, a.W, false, false, step, no_tail);
  return true;
}

bool team_gru_backward(const Env<float>& env, const Dims& d, const GruBackward<float>& a) {
  if (!team_applies(env, d)) return false;
  Team team(*env.tiles, d, 3, env.threads);
  run_reverse(team, a.W, a.dq, a.scratch,
              [&](int64_t t, int64_t n, int64_t u, int64_t L, int64_t b) {
                gru_bwd_step(d, a, t, n, u, L, b);
              },
              [&](int64_t first, int64_t last, int64_t t) {
                const int64_t T_ = d.T, D = d.D;
                team.prefetch_step(first, last, 3, a.acts, T_, 3 * D, t);
                team.prefetch_step(first, last, 1, a.qs + 2 * D, T_, 3 * D, t);
                team.prefetch(first, last, 1, a.hp + t * a.hp_step, a.hp_head, D);
                team.prefetch_step(first, last, 1, a.d_hs, T_ + 1, D, t + 1);
              });
  gru_initial_grad(d, a);
  return true;
}

bool team_elman_forward(const Env<float>& env, const Dims& d, const ElmanForward<float>& a) {
  if (!team_applies(env, d)) return false;
  Team team(*env.tiles, d, 1, env.threads);
  const int64_t T_ = d.T, B = d.B, D = d.D;
  const std::vector<float> init_h(static_cast<size_t>(D), a.h_init);
  const auto step = [&](int64_t first, int64_t last, int64_t t) {
    if (t + 1 < T_) team.prefetch_step(first, last, 1, a.px, T_, D, t + 1);
    team.forward_step(
        first, last,
        [&](int64_t n, int64_t b) { return h_entering(d, a.mask, a.hs, init_h, n, t, b); },
        [&](int64_t n, int64_t b) { return a.hs + at(n, t + 1, b, T_ + 1, B, D); },
        [&](int64_t n, int64_t u, int64_t L, int64_t b) {
          if (a.mask != nullptr)
            std::memcpy(a.hp + at(n, t, b, T_, B, D) + u,
                        h_entering(d, a.mask, a.hs, init_h, n, t, b) + u, sizeof(float) * L);
          elman_fwd_row(a.px + at(n, t, b, T_, B, D) + u,
                        a.hs + at(n, t + 1, b, T_ + 1, B, D) + u, a.relu, D, L);
        });
  };
  run_loop(team, a.W, false, false, step, no_tail);
  return true;
}

bool team_elman_backward(const Env<float>& env, const Dims& d, const ElmanBackward<float>& a) {
  if (!team_applies(env, d)) return false;
  Team team(*env.tiles, d, 1, env.threads);
  run_reverse(team, a.W, a.dq, a.scratch,
              [&](int64_t t, int64_t n, int64_t u, int64_t L, int64_t b) {
                elman_bwd_step(d, a, t, n, u, L, b);
              },
              [&](int64_t first, int64_t last, int64_t t) {
                const int64_t T_ = d.T, D = d.D;
                team.prefetch_step(first, last, 1, a.hs, T_ + 1, D, t + 1);
                team.prefetch_step(first, last, 1, a.d_hs, T_ + 1, D, t + 1);
              });
  initial_grad(d, a.mask, a.scratch, a.d_hs, a.dh0);
  return true;
}

bool team_slstm_forward(const Env<float>& env, const Dims& d, const SlstmForward<float>& a) {
  if (!team_applies(env, d)) return false;
  Team team(*env.tiles, d, 4, env.threads);
  const int64_t T_ = d.T, B = d.B, D = d.D, GD = 4 * D;
  const int64_t k = a.save ? T_ : 1, ns = a.save ? T_ + 1 : 2;
  const std::vector<float> init_h(static_cast<size_t>(D), a.init_h);
  const auto step = [&](int64_t first, int64_t last, int64_t t) {
    const int64_t s = a.save ? t : 0, i0 = t % ns, i1 = (t + 1) % ns;
    if (t + 1 < T_) team.prefetch_step(first, last, 4, a.px, T_, GD, t + 1);
    team.forward_step(
        first, last,
        [&](int64_t n, int64_t b) { return h_entering(d, a.mask, a.hs, init_h, n, t, b); },
        [&](int64_t n, int64_t b) { return a.gates + at(n, s, b, k, B, GD); },
        [&](int64_t n, int64_t u, int64_t L, int64_t b) {
          const bool reset = reset_at(a.mask, t, b, B);
          const float* cn_in = a.cn + at(n, i0, b, ns, B, 2 * D);
          const float* m_in = a.ms + at(n, i0, b, ns, B, D);
          if (a.mask != nullptr) {
            std::memcpy(a.hp + at(n, s, b, k, B, D) + u,
                        h_entering(d, a.mask, a.hs, init_h, n, t, b) + u, sizeof(float) * L);
            float* o = a.cnp + at(n, s, b, k, B, 2 * D);
            if (reset) {
              fill(o + u, a.init_c, L);
              fill(o + D + u, a.init_n, L);
            } else {
              std::memcpy(o + u, cn_in + u, sizeof(float) * L);
              std::memcpy(o + D + u, cn_in + D + u, sizeof(float) * L);
            }
            cn_in = o;
          }
          // A restarting row reads m from scratch: ms keeps m leaving each step.
          if (reset) {
            float* o = a.m_scratch + (n * B + b) * D;
            fill(o + u, a.init_m, L);
            m_in = o;
          }
          slstm_fwd_row(a.px + at(n, t, b, T_, B, GD) + u, a.gates + at(n, s, b, k, B, GD) + u,
                        a.ex + at(n, s, b, k, B, 2 * D) + u, cn_in + u, m_in + u,
                        a.cn + at(n, i1, b, ns, B, 2 * D) + u,
                        a.ms + at(n, i1, b, ns, B, D) + u,
                        a.hs + at(n, t + 1, b, T_ + 1, B, D) + u, D, L);
        });
  };
  run_loop(team, a.W, false, false, step, no_tail);
  return true;
}

bool team_slstm_backward(const Env<float>& env, const Dims& d, const SlstmBackward<float>& a) {
  if (!team_applies(env, d)) return false;
  Team team(*env.tiles, d, 4, env.threads);
  run_reverse(team, a.W, a.dq, a.scratch,
              [&](int64_t t, int64_t n, int64_t u, int64_t L, int64_t b) {
                slstm_bwd_step(d, a, t, n, u, L, b);
              },
              [&](int64_t first, int64_t last, int64_t t) {
                const int64_t T_ = d.T, D = d.D;
                team.prefetch_step(first, last, 4, a.gates, T_, 4 * D, t);
                team.prefetch_step(first, last, 2, a.ex, T_, 2 * D, t);
                team.prefetch_step(first, last, 2, a.cn, T_ + 1, 2 * D, t + 1);
                team.prefetch_step(first, last, 1, a.ms, T_ + 1, D, t + 1);
                team.prefetch_step(first, last, 1, a.hs, T_ + 1, D, t + 1);
                team.prefetch(first, last, 2, a.cnp + t * a.cnp_step, a.cnp_head, 2 * D);
                team.prefetch_step(first, last, 1, a.d_hs, T_ + 1, D, t + 1);
              });
  initial_grad(d, a.mask, a.scratch, a.d_hs, a.dh0);
  return true;
}

}  // namespace

// ---- LSTM ----------------------------------------------------------------------------------

template <typename T>
void lstm_forward(const Env<T>& env, const Dims& d, const LstmForward<T>& a) {
  if constexpr (std::is_same_v<T, float>) {
    if (team_lstm_forward(env, d, a)) return;
  }
  const HeadWeights<T> w(env, d, 4, a.W, false);
  const int64_t N = d.N, T_ = d.T, B = d.B, D = d.D, GD = 4 * D;
  const int64_t k = a.save ? T_ : 1, nc = a.save ? T_ + 1 : 2;
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t s = a.save ? t : 0;
    const int64_t ci = t % nc, co = (t + 1) % nc;
    const T* hprev = a.hs + at(0, t, 0, T_ + 1, B, D);
    int64_t h_head = (T_ + 1) * B * D;
    if (a.mask != nullptr) {
      reset_rows(d, a.mask, t, hprev, h_head, a.hp + at(0, s, 0, k, B, D), k * B * D, a.h_init, D);
      // c entering step t is read only by this step and the backward: reset it in place.
      for (int64_t n = 0; n < N; ++n)
        for (int64_t b = 0; b < B; ++b)
          if (reset_at(a.mask, t, b, B)) fill(a.cs + at(n, ci, b, nc, B, D), a.c_init, D);
      hprev = a.hp + at(0, s, 0, k, B, D);
      h_head = k * B * D;
    }
    step_gemm(w, d, 4, hprev, h_head, a.acts + at(0, s, 0, k, B, GD), k * B * GD);
    for_rows(env, d, GD, [&](int64_t n, int64_t b) {
      lstm_fwd_row(a.px + at(n, t, b, T_, B, GD), a.acts + at(n, s, b, k, B, GD),
                   a.cs + at(n, ci, b, nc, B, D), a.cs + at(n, co, b, nc, B, D),
                   a.tcs + at(n, s, b, k, B, D), a.hs + at(n, t + 1, b, T_ + 1, B, D), D, D);
    });
  }
}

template <typename T>
void lstm_backward(const Env<T>& env, const Dims& d, const LstmBackward<T>& a) {
  if constexpr (std::is_same_v<T, float>) {
    if (team_lstm_backward(env, d, a)) return;
  }
  const HeadWeights<T> wt(env, d, 4, a.W, true);
  const int64_t T_ = d.T, B = d.B, D = d.D, GD = 4 * D;
  for (int64_t t = T_ - 1; t >= 0; --t) {
    if (t < T_ - 1) grad_through_w(wt, d, 4, a.dq + at(0, t + 1, 0, T_, B, GD), T_ * B * GD, a.scratch);
    for_rows(env, d, GD, [&](int64_t n, int64_t b) { lstm_bwd_step(d, a, t, n, 0, D, b); });
  }
  grad_through_w(wt, d, 4, a.dq, T_ * B * GD, a.scratch);
  initial_grad(d, a.mask, a.scratch, a.d_hs, a.dh0);
}

// ---- GRU -----------------------------------------------------------------------------------

template <typename T>
void gru_forward(const Env<T>& env, const Dims& d, const GruForward<T>& a) {
  if constexpr (std::is_same_v<T, float>) {
    if (team_gru_forward(env, d, a)) return;
  }
  const HeadWeights<T> w(env, d, 3, a.W, false);
  const int64_t T_ = d.T, B = d.B, D = d.D, GD = 3 * D;
  const int64_t k = a.save ? T_ : 1;
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t s = a.save ? t : 0;
    const T* hprev = a.hs + at(0, t, 0, T_ + 1, B, D);
    int64_t h_head = (T_ + 1) * B * D;
    if (a.mask != nullptr) {
      reset_rows(d, a.mask, t, hprev, h_head, a.hp + at(0, s, 0, k, B, D), k * B * D, a.h_init, D);
      hprev = a.hp + at(0, s, 0, k, B, D);
      h_head = k * B * D;
    }
    step_gemm(w, d, 3, hprev, h_head, a.qs + at(0, s, 0, k, B, GD), k * B * GD);
    for_rows(env, d, GD, [&](int64_t n, int64_t b) {
      gru_fwd_row(a.px + at(n, t, b, T_, B, GD), a.qs + at(n, s, b, k, B, GD),
                  a.bhn != nullptr ? a.bhn + n * D : nullptr, hprev + n * h_head + b * D,
                  a.acts + at(n, s, b, k, B, GD), a.hs + at(n, t + 1, b, T_ + 1, B, D), D, D);
    });
  }
}

template <typename T>
void gru_backward(const Env<T>& env, const Dims& d, const GruBackward<T>& a) {
  if constexpr (std::is_same_v<T, float>) {
    if (team_gru_backward(env, d, a)) return;
  }
  const HeadWeights<T> wt(env, d, 3, a.W, true);
  const int64_t T_ = d.T, B = d.B, D = d.D, GD = 3 * D;
  for (int64_t t = T_ - 1; t >= 0; --t) {
    if (t < T_ - 1) grad_through_w(wt, d, 3, a.dq + at(0, t + 1, 0, T_, B, GD), T_ * B * GD, a.scratch);
    for_rows(env, d, GD, [&](int64_t n, int64_t b) { gru_bwd_step(d, a, t, n, 0, D, b); });
  }
  grad_through_w(wt, d, 3, a.dq, T_ * B * GD, a.scratch);
  gru_initial_grad(d, a);
}

// ---- Elman ---------------------------------------------------------------------------------

template <typename T>
void elman_forward(const Env<T>& env, const Dims& d, const ElmanForward<T>& a) {
  if constexpr (std::is_same_v<T, float>) {
    if (team_elman_forward(env, d, a)) return;
  }
  const HeadWeights<T> w(env, d, 1, a.W, false);
  const int64_t T_ = d.T, B = d.B, D = d.D;
  for (int64_t t = 0; t < T_; ++t) {
    const T* hprev = a.hs + at(0, t, 0, T_ + 1, B, D);
    int64_t h_head = (T_ + 1) * B * D;
    if (a.mask != nullptr) {
      reset_rows(d, a.mask, t, hprev, h_head, a.hp + at(0, t, 0, T_, B, D), T_ * B * D, a.h_init, D);
      hprev = a.hp + at(0, t, 0, T_, B, D);
      h_head = T_ * B * D;
    }
    // The GEMM writes straight into h_t; the pass adds px and applies phi in place.
    step_gemm(w, d, 1, hprev, h_head, a.hs + at(0, t + 1, 0, T_ + 1, B, D), (T_ + 1) * B * D);
    for_rows(env, d, D, [&](int64_t n, int64_t b) {
      elman_fwd_row(a.px + at(n, t, b, T_, B, D), a.hs + at(n, t + 1, b, T_ + 1, B, D), a.relu, D, D);
    });
  }
}

template <typename T>
void elman_backward(const Env<T>& env, const Dims& d, const ElmanBackward<T>& a) {
  if constexpr (std::is_same_v<T, float>) {
    if (team_elman_backward(env, d, a)) return;
  }
  const HeadWeights<T> wt(env, d, 1, a.W, true);
  const int64_t T_ = d.T, B = d.B, D = d.D;
  for (int64_t t = T_ - 1; t >= 0; --t) {
    if (t < T_ - 1) grad_through_w(wt, d, 1, a.dq + at(0, t + 1, 0, T_, B, D), T_ * B * D, a.scratch);
    for_rows(env, d, D, [&](int64_t n, int64_t b) { elman_bwd_step(d, a, t, n, 0, D, b); });
  }
  grad_through_w(wt, d, 1, a.dq, T_ * B * D, a.scratch);
  initial_grad(d, a.mask, a.scratch, a.d_hs, a.dh0);
}

// ---- sLSTM ---------------------------------------------------------------------------------

template <typename T>
void slstm_forward(const Env<T>& env, const Dims& d, const SlstmForward<T>& a) {
  if constexpr (std::is_same_v<T, float>) {
    if (team_slstm_forward(env, d, a)) return;
  }
  const HeadWeights<T> w(env, d, 4, a.W, false);
  const int64_t N = d.N, T_ = d.T, B = d.B, D = d.D, GD = 4 * D;
  const int64_t k = a.save ? T_ : 1, ns = a.save ? T_ + 1 : 2;
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t s = a.save ? t : 0;
    const int64_t i0 = t % ns, i1 = (t + 1) % ns;
    const T* hprev = a.hs + at(0, t, 0, T_ + 1, B, D);
    int64_t h_head = (T_ + 1) * B * D;
    const T* cnprev = a.cn + at(0, i0, 0, ns, B, 2 * D);
    int64_t cn_head = ns * B * 2 * D;
    if (a.mask != nullptr) {
      reset_rows(d, a.mask, t, hprev, h_head, a.hp + at(0, s, 0, k, B, D), k * B * D, a.init_h, D);
      hprev = a.hp + at(0, s, 0, k, B, D);
      h_head = k * B * D;
      T* dst = a.cnp + at(0, s, 0, k, B, 2 * D);
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t b = 0; b < B; ++b) {
          T* o = dst + at(n, 0, b, k, B, 2 * D);
          if (reset_at(a.mask, t, b, B)) {
            fill(o, a.init_c, D);
            fill(o + D, a.init_n, D);
          } else {
            std::memcpy(o, cnprev + n * cn_head + b * 2 * D, sizeof(T) * 2 * D);
          }
        }
      }
      cnprev = dst;
      cn_head = k * B * 2 * D;
    }
    step_gemm(w, d, 4, hprev, h_head, a.gates + at(0, s, 0, k, B, GD), k * B * GD);
    for_rows(env, d, GD, [&](int64_t n, int64_t b) {
      // A restarting row reads m from scratch: ms keeps m leaving each step for the backward.
      const T* mp = a.ms + at(n, i0, b, ns, B, D);
      if (reset_at(a.mask, t, b, B)) {
        T* o = a.m_scratch + (n * B + b) * D;
        fill(o, a.init_m, D);
        mp = o;
      }
      slstm_fwd_row(a.px + at(n, t, b, T_, B, GD), a.gates + at(n, s, b, k, B, GD),
                    a.ex + at(n, s, b, k, B, 2 * D), cnprev + n * cn_head + b * 2 * D, mp,
                    a.cn + at(n, i1, b, ns, B, 2 * D), a.ms + at(n, i1, b, ns, B, D),
                    a.hs + at(n, t + 1, b, T_ + 1, B, D), D, D);
    });
  }
}

template <typename T>
void slstm_backward(const Env<T>& env, const Dims& d, const SlstmBackward<T>& a) {
  if constexpr (std::is_same_v<T, float>) {
    if (team_slstm_backward(env, d, a)) return;
  }
  const HeadWeights<T> wt(env, d, 4, a.W, true);
  const int64_t T_ = d.T, B = d.B, D = d.D, GD = 4 * D;
  for (int64_t t = T_ - 1; t >= 0; --t) {
    if (t < T_ - 1) grad_through_w(wt, d, 4, a.dq + at(0, t + 1, 0, T_, B, GD), T_ * B * GD, a.scratch);
    for_rows(env, d, GD, [&](int64_t n, int64_t b) { slstm_bwd_step(d, a, t, n, 0, D, b); });
  }
  grad_through_w(wt, d, 4, a.dq, T_ * B * GD, a.scratch);
  initial_grad(d, a.mask, a.scratch, a.d_hs, a.dh0);
}

#define RNNKIT_INSTANTIATE(T)                                                   \
  template void lstm_forward<T>(const Env<T>&, const Dims&, const LstmForward<T>&);   \
  template void lstm_backward<T>(const Env<T>&, const Dims&, const LstmBackward<T>&); \
  template void gru_forward<T>(const Env<T>&, const Dims&, const GruForward<T>&);     \
  template void gru_backward<T>(const Env<T>&, const Dims&, const GruBackward<T>&);   \
  template void elman_forward<T>(const Env<T>&, const Dims&, const ElmanForward<T>&); \
  template void elman_backward<T>(const Env<T>&, const Dims&, const ElmanBackward<T>&); \
  template void slstm_forward<T>(const Env<T>&, const Dims&, const SlstmForward<T>&); \
  template void slstm_backward<T>(const Env<T>&, const Dims&, const SlstmBackward<T>&);
RNNKIT_INSTANTIATE(float)
RNNKIT_INSTANTIATE(double)
#undef RNNKIT_INSTANTIATE

}  // namespace rnnkit_cpu
