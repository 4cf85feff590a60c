// Row kernels of the gated cells (see gated_rows.h): the activations, state updates and saved
// values of one (head, batch) row per call. The equations are those of the Python loops in
// rnnkit/kernels/gated/fused/_lstm.py, _gru.py, _elman.py and _slstm.py.
//
// The float kernels are compiled two or three times on x86-64 (target_clones: AVX-512 with
// GCC >= 12, AVX2+FMA and baseline SSE2, picked when the library loads), so the cached library
// runs on any x86-64 CPU; no -march flag is used. This file holds nothing else, so that those
// clones are all that the instruction-set attributes touch.
#include "gated_rows.h"

#include "gated_cells.h"
#include "gated_math.h"

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

// Bodies are templates (internal to this file); the float instances are wrapped in cloned
// functions below, which are what gated_rows.h declares.

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
      // !(h <= 0) rather than h > 0: a NaN output passes its gradient on, as torch.relu's
      // backward does, so that a NaN weight multiplies it and reaches the earlier steps.
      dq[e] = !(h[e] <= T(0)) ? dh : T(0);
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

}  // namespace

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

}  // namespace rnnkit_cpu
