// The time loops of the gated cells, written once for every cell: a cell is a small policy
// struct (gated_cells.cpp) that names its gate count, the buffers every loop handles alike, and
// its row step (which row kernel of gated_rows.h to call on which buffers, after which resets).
//
// Two drivers per direction:
//   team loops (float, gated_team.h): one OpenMP team for the whole loop, each thread with its
//     own hidden units, register-tiled products and one barrier per step;
//   per-head loops (double, or head sizes that are not a multiple of the tile width): one
//     Env::multiply per head and step, then ONE pass over the rows of every (head, batch).
// forward_loop / reverse_loop take the team loop where it applies.
//
// A forward cell provides:
//   static constexpr int64_t G;                    gates per unit
//   ForwardCommon<T> common;                       px, W, h and its resets, where the products
//                                                  go, how many steps the buffers keep
//   void row(const Step&, const Units&, L) const;  resets of the cell's other states for L
//                                                  units, then its row kernel; h entering the
//                                                  step is in hp (with a mask) or hs[t] by then
// A reverse cell provides:
//   static constexpr int64_t G;
//   ReverseCommon<T> common;                       W, dq, and gh, the gradient through W
//   void row(t, const Units&, L) const;            the reverse row kernel; gh holds
//                                                  dq_{t+1} W^T (undefined at the last step)
//   void prefetch(const Team&, first, last, t) const;  what row() reads at step t (float)
// and, where h_0 reaches step 0 by more than W (GRU), void initial_grad() const: dh0, once gh
// holds dq_0 W^T (else the loop computes dh0 = keep_0 gh + dy_0).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "gated_cells.h"
#include "gated_team.h"

namespace rnnkit_cpu {

// ---- buffers and steps ---------------------------------------------------------------------

template <typename T>
void fill(T* p, T v, int64_t n) {
  std::fill(p, p + n, v);
}

// Rows (n, b) of one step of an (N, steps, B, width) buffer.
template <typename T>
struct StepRows {
  T* base;       // row (0, 0)
  int64_t head;  // elements between heads
  int64_t width;
  T* row(int64_t n, int64_t b) const { return base + n * head + b * width; }
};

template <typename T>
StepRows<T> step_rows(T* buf, const Dims& d, int64_t steps, int64_t width, int64_t t) {
  return {buf + t * d.B * width, steps * d.B * width, width};
}

// Where step t reads and writes: `s`, its slot in the per-step buffers (N, T or 1, B, ...);
// `in` and `out`, the slots of the state it reads and writes in a ring (N, T+1 or 2, B, ...)
// that keeps every state, or only the last two when the per-step buffers keep one step.
struct Step {
  int64_t t, s, in, out;
};

inline Step step_at(const Dims& d, bool save, int64_t t) {
  const int64_t ring = save ? d.T + 1 : 2;
  return {t, save ? t : 0, t % ring, (t + 1) % ring};
}

// Units u.. of row (n, b): where a row step finds them in the loops' buffers.
struct Units {
  const Dims& d;
  int64_t n, b, u;

  // In step t of an (N, steps, B, k D) buffer.
  template <typename P>
  P* in(P* buf, int64_t steps, int64_t k, int64_t t) const {
    return buf + at(n, t, b, steps, d.B, k * d.D) + u;
  }
  // In an (N, B, D) buffer.
  template <typename P>
  P* in(P* buf) const {
    return buf + (n * d.B + b) * d.D + u;
  }
};

// What every forward loop handles the same way, whatever the cell.
template <typename T>
struct ForwardCommon {
  const T* px;           // (N, T, B, G D)
  const T* W;            // (N, D, G D)
  const uint8_t* mask;   // (T, B) or null
  T h_init;              // h of a restarting row
  bool save;             // per-step buffers keep every step (else one, reused)
  T* hs;                 // (N, T+1, B, D), slot 0 holds h0
  T* hp;                 // (N, T or 1, B, D): h entering each step after resets; null
                         // without mask (then hs[:, t] is that state)
  T* gates;              // (N, T or 1, B, G D): the products h W of each step; null: they go
                         // straight into hs[:, t+1] (G = 1, the row applies phi in place)

  // Steps the per-step buffers (hp and the cell's own) keep.
  int64_t kept(const Dims& d) const { return save ? d.T : 1; }
  // Where the products of step st go.
  StepRows<T> products(const Dims& d, int64_t G, const Step& st) const {
    return gates != nullptr ? step_rows(gates, d, kept(d), G * d.D, st.s)
                            : step_rows(hs, d, d.T + 1, d.D, st.t + 1);
  }
};

template <typename T>
struct ReverseCommon {
  const T* W;            // (N, D, G D)
  const T* dq;           // (N, T, B, G D): the gradient of the products h W, written by row()
  T* gh;                 // (N, B, D): dq_{t+1} W^T, the gradient reaching h_t through W
  const uint8_t* mask;   // (T, B) or null
  const T* d_hs;         // (N, T+1, B, D): gradient of hs
  T* dh0;                // (N, B, D): gradient of h_0
};

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

// Whether a reverse cell computes dh0 itself (Cell::initial_grad).
template <typename Cell, typename = void>
struct OwnInitialGrad : std::false_type {};
template <typename Cell>
struct OwnInitialGrad<Cell, std::void_t<decltype(&Cell::initial_grad)>> : std::true_type {};

// dh0 at the end of a reverse loop, once gh holds dq_0 W^T.
template <typename T, typename Cell>
void finish_reverse(const Dims& d, const Cell& cell) {
  if constexpr (OwnInitialGrad<Cell>::value) {
    cell.initial_grad();
  } else {
    const ReverseCommon<T>& c = cell.common;
    initial_grad(d, c.mask, static_cast<const T*>(c.gh), c.d_hs, c.dh0);
  }
}

// ---- per-head loops (Env::multiply) --------------------------------------------------------

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

// Per step: h entering the step (copied into hp with its resets where there is a mask), one
// product per head (common.products), one pass over the rows.
template <typename T, typename Cell>
void head_forward(const Env<T>& env, const Dims& d, const Cell& cell) {
  const ForwardCommon<T>& c = cell.common;
  const HeadWeights<T> w(env, d, Cell::G, c.W, false);
  const int64_t T_ = d.T, D = d.D, kept = c.kept(d);
  for (int64_t t = 0; t < T_; ++t) {
    const Step st = step_at(d, c.save, t);
    StepRows<const T> h = step_rows<const T>(c.hs, d, T_ + 1, D, t);
    if (c.mask != nullptr) {
      const StepRows<T> hp = step_rows(c.hp, d, kept, D, st.s);
      reset_rows(d, c.mask, t, h.base, h.head, hp.base, hp.head, c.h_init, D);
      h = {hp.base, hp.head, D};
    }
    const StepRows<T> out = c.products(d, Cell::G, st);
    step_gemm(w, d, Cell::G, h.base, h.head, out.base, out.head);
    for_rows(env, d, Cell::G * D,
             [&](int64_t n, int64_t b) { cell.row(st, Units{d, n, b, 0}, D); });
  }
}

// Per step, last to first: gh = dq_{t+1} W^T (one product per head), one pass over the rows;
// then gh = dq_0 W^T and dh0.
template <typename T, typename Cell>
void head_reverse(const Env<T>& env, const Dims& d, const Cell& cell) {
  const ReverseCommon<T>& c = cell.common;
  const HeadWeights<T> wt(env, d, Cell::G, c.W, true);
  const int64_t T_ = d.T, B = d.B, D = d.D, GD = Cell::G * D;
  for (int64_t t = T_ - 1; t >= 0; --t) {
    if (t < T_ - 1)
      grad_through_w(wt, d, Cell::G, c.dq + at(0, t + 1, 0, T_, B, GD), T_ * B * GD, c.gh);
    for_rows(env, d, GD, [&](int64_t n, int64_t b) { cell.row(t, Units{d, n, b, 0}, D); });
  }
  grad_through_w(wt, d, Cell::G, c.dq, T_ * B * GD, c.gh);
  finish_reverse<T>(d, cell);
}

// ---- team loops (float, Env::tiles) --------------------------------------------------------

// h entering step t of row b: the init row where it restarts, else hs[:, t].
inline const float* h_entering(const Dims& d, const uint8_t* mask, const float* hs,
                               const std::vector<float>& init, int64_t n, int64_t t, int64_t b) {
  return reset_at(mask, t, b, d.B) ? init.data() : hs + at(n, t, b, d.T + 1, d.B, d.D);
}

// Per step: prefetch the next step's px, then for each of the thread's block runs and row
// tiles the products of h entering the step, the copy of that h into hp (with a mask) and the
// cell's row. False (nothing done) where the team loops do not apply.
template <typename Cell>
bool team_forward(const Env<float>& env, const Dims& d, const Cell& cell) {
  if (!team_applies(env, d)) return false;
  const ForwardCommon<float>& c = cell.common;
  Team team(*env.tiles, d, Cell::G, env.threads);
  const int64_t T_ = d.T, B = d.B, D = d.D, GD = Cell::G * D, kept = c.kept(d);
  const std::vector<float> init_h(static_cast<size_t>(D), c.h_init);
  const auto step = [&](int64_t first, int64_t last, int64_t t) {
    const Step st = step_at(d, c.save, t);
    const StepRows<float> out = c.products(d, Cell::G, st);
    if (t + 1 < T_) team.prefetch_step(first, last, Cell::G, c.px, T_, GD, t + 1);
    team.forward_step(
        first, last,
        [&](int64_t n, int64_t b) { return h_entering(d, c.mask, c.hs, init_h, n, t, b); },
        [&](int64_t n, int64_t b) { return out.row(n, b); },
        [&](int64_t n, int64_t u, int64_t L, int64_t b) {
          if (c.mask != nullptr)
            std::memcpy(c.hp + at(n, st.s, b, kept, B, D) + u,
                        h_entering(d, c.mask, c.hs, init_h, n, t, b) + u, sizeof(float) * L);
          cell.row(st, Units{d, n, b, u}, L);
        });
  };
  run_loop(team, c.W, false, false, step, [](int64_t, int64_t) {});
  return true;
}

// Per step, last to first: prefetch what the next (earlier) step's rows read, then the
// products gh = dq_{t+1} W^T and the cell's row for each of the thread's block runs and row
// tiles; at the end the products of dq_0 and dh0.
template <typename Cell>
bool team_reverse(const Env<float>& env, const Dims& d, const Cell& cell) {
  if (!team_applies(env, d)) return false;
  const ReverseCommon<float>& c = cell.common;
  Team team(*env.tiles, d, Cell::G, env.threads);
  const auto row = [&](int64_t t, int64_t n, int64_t u, int64_t L, int64_t b) {
    cell.row(t, Units{d, n, b, u}, L);
  };
  const auto no_row = [](int64_t, int64_t, int64_t, int64_t, int64_t) {};
  run_loop(
      team, c.W, true, true,
      [&](int64_t first, int64_t last, int64_t t) {
        if (t > 0) cell.prefetch(team, first, last, t - 1);
        team.reverse_step(first, last, t, c.dq, c.gh, row);
      },
      [&](int64_t first, int64_t last) {
        team.reverse_step(first, last, -1, c.dq, c.gh, no_row);
      });
  finish_reverse<float>(d, cell);
  return true;
}

// ---- entry points --------------------------------------------------------------------------

template <typename T, typename Cell>
void forward_loop(const Env<T>& env, const Dims& d, const Cell& cell) {
  if constexpr (std::is_same_v<T, float>) {
    if (team_forward(env, d, cell)) return;
  }
  head_forward(env, d, cell);
}

template <typename T, typename Cell>
void reverse_loop(const Env<T>& env, const Dims& d, const Cell& cell) {
  if constexpr (std::is_same_v<T, float>) {
    if (team_reverse(env, d, cell)) return;
  }
  head_reverse(env, d, cell);
}

}  // namespace rnnkit_cpu
