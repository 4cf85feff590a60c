// Row kernels of the gated cells: the pointwise part of one step for units [0, L) of one
// (head, batch) row, where gate g of unit e sits at [g D + e] (the caller offsets every pointer
// by the row's first unit). The per-head loops pass L = D, the team loops one block run.
// Equations and buffer meanings are next to the bodies in gated_rows.cpp; the cells' row steps
// that call them are in gated_cells.cpp.
//
// Float kernels are compiled once per x86-64 instruction-set level and picked when the library
// loads (simd_variant() says which); double ones once.
#pragma once

#include <cstdint>

namespace rnnkit_cpu {

#define RNNKIT_ROW_KERNELS(T)                                                                    \
  /* LSTM: gates i, f, g, o in `a` (pre-activation without px in, activations out). */          \
  void lstm_fwd_row(const T* px, T* a, const T* cp, T* c, T* tc, T* h, int64_t D, int64_t L);   \
  void lstm_bwd_row(const T* a, const T* tc, const T* cp, const T* gh, const T* dy, T keep_h,   \
                    T keep_c, T* dc, T* dq, int64_t D, int64_t L);                              \
  /* GRU: q = h W in, q with b_hn out; gates r, z, n in `a`. */                                  \
  void gru_fwd_row(const T* px, T* q, const T* bhn, const T* hp, T* a, T* h, int64_t D,         \
                   int64_t L);                                                                  \
  void gru_bwd_row(const T* a, const T* z_next, const T* q, const T* hp, const T* gh,           \
                   const T* dy, T keep_next, T* dh, T* dq, T* dpx, int64_t D, int64_t L);       \
  /* Elman: h holds h W on entry and phi(px + h W) on return. */                                \
  void elman_fwd_row(const T* px, T* h, bool relu, int64_t D, int64_t L);                       \
  void elman_bwd_row(const T* h, const T* gh, const T* dy, T keep_h, bool relu, T* dq,         \
                     int64_t D, int64_t L);                                                     \
  /* sLSTM: gates i~, f~, z~, o~ in `g`; [c, n] pairs 2 D apart per row. */                      \
  void slstm_fwd_row(const T* px, T* g, T* ex, const T* cnp, const T* mp, T* cn, T* m, T* h,    \
                     int64_t D, int64_t L);                                                     \
  void slstm_bwd_row(const T* g, const T* ex, const T* cn, const T* m, const T* h,              \
                     const T* cnp, const T* gh, const T* dy, T keep_c, T* dc, T* dn, T* dm,     \
                     T* dq, int64_t D, int64_t L);

RNNKIT_ROW_KERNELS(float)
RNNKIT_ROW_KERNELS(double)
#undef RNNKIT_ROW_KERNELS

}  // namespace rnnkit_cpu
