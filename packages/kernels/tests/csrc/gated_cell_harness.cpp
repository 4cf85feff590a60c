// Host harness of the CUDA kernels' per-element step math (gated_cell.h): compiled by a plain
// C++ compiler into a shared library that test_cuda_gated.py loads with ctypes and compares
// against a float64 torch reference of the same step.
//
// One function per cell kind runs the forward step of `rows` elements and then, on what that
// forward produced (as the kernels' stored-gates backward does), the backward step. Each row of
// `in` and `out` is a fixed list of floats, documented per function (row-major, contiguous).
#include "gated_cell.h"

namespace c = rnnkit_cuda::cell;

extern "C" {

//! in: v, gh. out: h, dv.
void rnnkit_elman_step(int rows, int relu, const float* in, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* x = in + 2 * r;
    float* y = out + 2 * r;
    y[0] = c::elman_forward(x[0], relu != 0);
    y[1] = c::elman_backward(x[1], y[0], relu != 0);
  }
}

//! in: ai, af, ag, ao, c_prev, gh, dc.
//! out: i, f, g, o, c, tanh c, h, di, df, dg, do, dc_prev.
void rnnkit_lstm_step(int rows, const float* in, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* x = in + 7 * r;
    float* y = out + 12 * r;
    const c::LstmStep s = c::lstm_forward(x[0], x[1], x[2], x[3], x[4]);
    const c::LstmGrad d = c::lstm_backward(x[5], x[6], s.i, s.f, s.g, s.o, s.tc, x[4]);
    const float v[12] = {s.i, s.f, s.g, s.o, s.c, s.tc, s.h, d.di, d.df, d.dg, d.dout,
                         d.dc_prev};
    for (int k = 0; k < 12; ++k) y[k] = v[k];
  }
}

//! in: xr, xz, xn, qr, qz, qn, h_prev, gh.
//! out: r, z, n, h, dr, dz, dxn, dqn, dh_prev (direct path).
void rnnkit_gru_step(int rows, const float* in, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* x = in + 8 * r;
    float* y = out + 9 * r;
    const c::GruStep s = c::gru_forward(x[0], x[1], x[2], x[3], x[4], x[5], x[6]);
    const c::GruGrad d = c::gru_backward(x[7], s.r, s.z, s.n, x[5], x[6]);
    const float v[9] = {s.r, s.z, s.n, s.h, d.dr, d.dz, d.dxn, d.dqn, d.dh_prev};
    for (int k = 0; k < 9; ++k) y[k] = v[k];
  }
}

//! in: ai, af, az, ao, c_prev, n_prev, m_prev, gh, dc, dn, dm.
//! out: tanh z, σ(o), i', f', c, n, m, h, di, df, dz, do, dc_prev, dn_prev, dm_prev.
void rnnkit_slstm_step(int rows, const float* in, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* x = in + 11 * r;
    float* y = out + 15 * r;
    const c::SlstmStep s = c::slstm_forward(x[0], x[1], x[2], x[3], x[4], x[5], x[6]);
    const c::SlstmGrad d = c::slstm_backward(x[7], x[8], x[9], x[10], x[0], x[1], s.zt, s.o,
                                             s.ip, s.fp, s.c, s.n, s.m, s.h, x[4], x[5]);
    const float v[15] = {s.zt, s.o,  s.ip, s.fp,   s.c,       s.n,       s.m,      s.h,
                         d.di, d.df, d.dz, d.dout, d.dc_prev, d.dn_prev, d.dm_prev};
    for (int k = 0; k < 15; ++k) y[k] = v[k];
  }
}

}  // extern "C"
