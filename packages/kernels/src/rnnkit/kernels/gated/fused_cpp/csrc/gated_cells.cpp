// The gated cells as policies of the loop drivers (gated_loops.h): for each cell and direction,
// its gate count, where its buffers are, and its row step, the resets of its states and the
// call of its row kernel (gated_rows.h) on units [u, u + L) of row (n, b). The same row step
// serves the per-head loops (u = 0, L = D) and the team loops (one block run per call), so
// both store exactly the same values.
#include "gated_cells.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "gated_loops.h"
#include "gated_rows.h"
#include "gated_team.h"

namespace rnnkit_cpu {

namespace {

// ---- LSTM ----------------------------------------------------------------------------------

template <typename T>
struct LstmForwardCell {
  static constexpr int64_t G = 4;
  const Dims& d;
  const LstmForward<T>& a;
  ForwardCommon<T> common{a.px, a.W, a.mask, a.h_init, a.save, a.hs, a.hp, a.acts};

  void row(const Step& st, const Units& r, int64_t L) const {
    const int64_t k = common.kept(d), ring = a.save ? d.T + 1 : 2;
    // c entering step t is read only by this step and the backward: reset it in place.
    T* c_in = r.in(a.cs, ring, 1, st.in);
    if (reset_at(a.mask, st.t, r.b, d.B)) fill(c_in, a.c_init, L);
    lstm_fwd_row(r.in(a.px, d.T, G, st.t), r.in(a.acts, k, G, st.s), c_in,
                 r.in(a.cs, ring, 1, st.out), r.in(a.tcs, k, 1, st.s),
                 r.in(a.hs, d.T + 1, 1, st.t + 1), d.D, L);
  }
};

template <typename T>
struct LstmReverseCell {
  static constexpr int64_t G = 4;
  const Dims& d;
  const LstmBackward<T>& a;
  ReverseCommon<T> common{a.W, a.dq, a.scratch, a.mask, a.d_hs, a.dh0};

  void row(int64_t t, const Units& r, int64_t L) const {
    const T keep_h = t < d.T - 1 && !reset_at(a.mask, t + 1, r.b, d.B) ? T(1) : T(0);
    const T keep_c = reset_at(a.mask, t, r.b, d.B) ? T(0) : T(1);
    lstm_bwd_row(r.in(a.acts, d.T, G, t), r.in(a.tcs, d.T, 1, t), r.in(a.cs, d.T + 1, 1, t),
                 r.in(a.scratch), r.in(a.d_hs, d.T + 1, 1, t + 1), keep_h, keep_c, r.in(a.dc),
                 r.in(a.dq, d.T, G, t), d.D, L);
  }

  void prefetch(const Team& team, int64_t first, int64_t last, int64_t t) const {
    team.prefetch_step(first, last, G, a.acts, d.T, G * d.D, t);
    team.prefetch_step(first, last, 1, a.tcs, d.T, d.D, t);
    team.prefetch_step(first, last, 1, a.cs, d.T + 1, d.D, t);
    team.prefetch_step(first, last, 1, a.d_hs, d.T + 1, d.D, t + 1);
  }
};

// ---- GRU -----------------------------------------------------------------------------------

template <typename T>
struct GruForwardCell {
  static constexpr int64_t G = 3;
  const Dims& d;
  const GruForward<T>& a;
  // The products go to qs: the row keeps q_n apart from px_n (n = tanh(px_n + r q_n)).
  ForwardCommon<T> common{a.px, a.W, a.mask, a.h_init, a.save, a.hs, a.hp, a.qs};

  void row(const Step& st, const Units& r, int64_t L) const {
    const int64_t k = common.kept(d);
    // h entering the step also enters the update h = n + z (h_prev - n).
    const T* h_in = a.mask != nullptr ? r.in(a.hp, k, 1, st.s) : r.in(a.hs, d.T + 1, 1, st.t);
    gru_fwd_row(r.in(a.px, d.T, G, st.t), r.in(a.qs, k, G, st.s),
                a.bhn != nullptr ? a.bhn + r.n * d.D + r.u : nullptr, h_in,
                r.in(a.acts, k, G, st.s), r.in(a.hs, d.T + 1, 1, st.t + 1), d.D, L);
  }
};

template <typename T>
struct GruReverseCell {
  static constexpr int64_t G = 3;
  const Dims& d;
  const GruBackward<T>& a;
  ReverseCommon<T> common{a.W, a.dq, a.scratch, a.mask, a.d_hs, a.dh0};

  void row(int64_t t, const Units& r, int64_t L) const {
    const T keep_next = t < d.T - 1 && !reset_at(a.mask, t + 1, r.b, d.B) ? T(1) : T(0);
    // z of step t + 1 (any valid row at the last step, where keep_next is false).
    const T* z_next = r.in(a.acts, d.T, G, std::min(t + 1, d.T - 1)) + d.D;
    const T* hp = a.hp + r.n * a.hp_head + t * a.hp_step + r.b * d.D + r.u;
    gru_bwd_row(r.in(a.acts, d.T, G, t), z_next, r.in(a.qs, d.T, G, t), hp, r.in(a.scratch),
                r.in(a.d_hs, d.T + 1, 1, t + 1), keep_next, r.in(a.dh), r.in(a.dq, d.T, G, t),
                r.in(a.dpx, d.T, G, t), d.D, L);
  }

  void prefetch(const Team& team, int64_t first, int64_t last, int64_t t) const {
    team.prefetch_step(first, last, G, a.acts, d.T, G * d.D, t);
    team.prefetch_step(first, last, 1, a.qs + 2 * d.D, d.T, G * d.D, t);
    team.prefetch(first, last, 1, a.hp + t * a.hp_step, a.hp_head, d.D);
    team.prefetch_step(first, last, 1, a.d_hs, d.T + 1, d.D, t + 1);
  }

  // h_0 feeds step 0 through W and directly through z_0: dh0 = keep_0 (dq_0 W^T + dh z_0) +
  // dy_0, with dq_0 W^T already in a.scratch.
  void initial_grad() const {
    const int64_t D = d.D;
    for (int64_t n = 0; n < d.N; ++n) {
      for (int64_t b = 0; b < d.B; ++b) {
        const Units r{d, n, b, 0};
        const bool keep = !reset_at(a.mask, 0, b, d.B);
        const T *g = r.in(a.scratch), *dh = r.in(a.dh), *z = r.in(a.acts, d.T, G, 0) + D;
        const T* dy = r.in(a.d_hs, d.T + 1, 1, 0);
        T* o = r.in(a.dh0);
        for (int64_t e = 0; e < D; ++e) o[e] = (keep ? g[e] + dh[e] * z[e] : T(0)) + dy[e];
      }
    }
  }
};

// ---- Elman ---------------------------------------------------------------------------------

template <typename T>
struct ElmanForwardCell {
  static constexpr int64_t G = 1;
  const Dims& d;
  const ElmanForward<T>& a;
  // Every step kept (the backward reads phi' from hs, and h entering from hp); the products
  // go straight into h_t (no gates buffer) and the row adds px and applies phi in place.
  ForwardCommon<T> common{a.px, a.W, a.mask, a.h_init, true, a.hs, a.hp, nullptr};

  void row(const Step& st, const Units& r, int64_t L) const {
    elman_fwd_row(r.in(a.px, d.T, 1, st.t), r.in(a.hs, d.T + 1, 1, st.t + 1), a.relu, d.D, L);
  }
};

template <typename T>
struct ElmanReverseCell {
  static constexpr int64_t G = 1;
  const Dims& d;
  const ElmanBackward<T>& a;
  ReverseCommon<T> common{a.W, a.dq, a.scratch, a.mask, a.d_hs, a.dh0};

  void row(int64_t t, const Units& r, int64_t L) const {
    const T keep_h = t < d.T - 1 && !reset_at(a.mask, t + 1, r.b, d.B) ? T(1) : T(0);
    elman_bwd_row(r.in(a.hs, d.T + 1, 1, t + 1), r.in(a.scratch), r.in(a.d_hs, d.T + 1, 1, t + 1),
                  keep_h, a.relu, r.in(a.dq, d.T, 1, t), d.D, L);
  }

  void prefetch(const Team& team, int64_t first, int64_t last, int64_t t) const {
    team.prefetch_step(first, last, 1, a.hs, d.T + 1, d.D, t + 1);
    team.prefetch_step(first, last, 1, a.d_hs, d.T + 1, d.D, t + 1);
  }
};

// ---- sLSTM ---------------------------------------------------------------------------------

template <typename T>
struct SlstmForwardCell {
  static constexpr int64_t G = 4;
  const Dims& d;
  const SlstmForward<T>& a;
  ForwardCommon<T> common{a.px, a.W, a.mask, a.init_h, a.save, a.hs, a.hp, a.gates};

  void row(const Step& st, const Units& r, int64_t L) const {
    const int64_t k = common.kept(d), ring = a.save ? d.T + 1 : 2, D = d.D;
    const bool reset = reset_at(a.mask, st.t, r.b, d.B);
    const T* cn_in = r.in(a.cn, ring, 2, st.in);
    const T* m_in = r.in(a.ms, ring, 1, st.in);
    // With a mask, c and n entering the step (after resets) are kept for the backward in cnp.
    if (a.mask != nullptr) {
      T* o = r.in(a.cnp, k, 2, st.s);
      if (reset) {
        fill(o, a.init_c, L);
        fill(o + D, a.init_n, L);
      } else {
        std::memcpy(o, cn_in, sizeof(T) * L);
        std::memcpy(o + D, cn_in + D, sizeof(T) * L);
      }
      cn_in = o;
    }
    // A restarting row reads m from scratch: ms keeps m leaving each step for the backward.
    if (reset) {
      T* o = r.in(a.m_scratch);
      fill(o, a.init_m, L);
      m_in = o;
    }
    slstm_fwd_row(r.in(a.px, d.T, G, st.t), r.in(a.gates, k, G, st.s), r.in(a.ex, k, 2, st.s),
                  cn_in, m_in, r.in(a.cn, ring, 2, st.out), r.in(a.ms, ring, 1, st.out),
                  r.in(a.hs, d.T + 1, 1, st.t + 1), D, L);
  }
};

template <typename T>
struct SlstmReverseCell {
  static constexpr int64_t G = 4;
  const Dims& d;
  const SlstmBackward<T>& a;
  ReverseCommon<T> common{a.W, a.dq, a.scratch, a.mask, a.d_hs, a.dh0};

  void row(int64_t t, const Units& r, int64_t L) const {
    const int64_t T1 = d.T + 1;
    // No gradient through W at the last step or where step t + 1 restarted.
    if (t == d.T - 1 || reset_at(a.mask, t + 1, r.b, d.B)) fill(r.in(a.scratch), T(0), L);
    const T* cnp = a.cnp + r.n * a.cnp_head + t * a.cnp_step + r.b * 2 * d.D + r.u;
    const T keep_c = reset_at(a.mask, t, r.b, d.B) ? T(0) : T(1);
    slstm_bwd_row(r.in(a.gates, d.T, G, t), r.in(a.ex, d.T, 2, t), r.in(a.cn, T1, 2, t + 1),
                  r.in(a.ms, T1, 1, t + 1), r.in(a.hs, T1, 1, t + 1), cnp, r.in(a.scratch),
                  r.in(a.d_hs, T1, 1, t + 1), keep_c, r.in(a.dc), r.in(a.dn), r.in(a.dm),
                  r.in(a.dq, d.T, G, t), d.D, L);
  }

  void prefetch(const Team& team, int64_t first, int64_t last, int64_t t) const {
    const int64_t T1 = d.T + 1, D = d.D;
    team.prefetch_step(first, last, G, a.gates, d.T, G * D, t);
    team.prefetch_step(first, last, 2, a.ex, d.T, 2 * D, t);
    team.prefetch_step(first, last, 2, a.cn, T1, 2 * D, t + 1);
    team.prefetch_step(first, last, 1, a.ms, T1, D, t + 1);
    team.prefetch_step(first, last, 1, a.hs, T1, D, t + 1);
    team.prefetch(first, last, 2, a.cnp + t * a.cnp_step, a.cnp_head, 2 * D);
    team.prefetch_step(first, last, 1, a.d_hs, T1, D, t + 1);
  }
};

}  // namespace

// ---- entry points (gated_cells.h) ----------------------------------------------------------
// Each is one loop driver over one cell, defined and instantiated for float and double here.
#define RNNKIT_LOOP(name, Args, Cell, loop)                                      \
  template <typename T>                                                          \
  void name(const Env<T>& env, const Dims& d, const Args<T>& a) {                \
    loop(env, d, Cell<T>{d, a});                                                 \
  }                                                                              \
  template void name<float>(const Env<float>&, const Dims&, const Args<float>&); \
  template void name<double>(const Env<double>&, const Dims&, const Args<double>&);
RNNKIT_LOOP(lstm_forward, LstmForward, LstmForwardCell, forward_loop)
RNNKIT_LOOP(lstm_backward, LstmBackward, LstmReverseCell, reverse_loop)
RNNKIT_LOOP(gru_forward, GruForward, GruForwardCell, forward_loop)
RNNKIT_LOOP(gru_backward, GruBackward, GruReverseCell, reverse_loop)
RNNKIT_LOOP(elman_forward, ElmanForward, ElmanForwardCell, forward_loop)
RNNKIT_LOOP(elman_backward, ElmanBackward, ElmanReverseCell, reverse_loop)
RNNKIT_LOOP(slstm_forward, SlstmForward, SlstmForwardCell, forward_loop)
RNNKIT_LOOP(slstm_backward, SlstmBackward, SlstmReverseCell, reverse_loop)
#undef RNNKIT_LOOP

}  // namespace rnnkit_cpu
