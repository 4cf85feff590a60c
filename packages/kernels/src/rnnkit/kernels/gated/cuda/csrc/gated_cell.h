// The per-element step of each gated cell, forward and backward: the pointwise math of the
// persistent kernels (gated_cuda.cu), kept apart so that a host compiler can run it too.
//
// Under nvcc the functions are __host__ __device__; under a plain C++ compiler (the CPU test
// harness, packages/kernels/tests/csrc/gated_cell_harness.cpp) they are ordinary inline
// functions. Nothing here includes a CUDA or torch header. float throughout, as in the kernels.
//
// Conventions are those of the `fused` loops (rnnkit/kernels/gated/fused/): the inputs of a
// forward step are the gate pre-activations (px_t + h_{t-1} W, per gate) and the state entering
// the step after resets; a backward step takes the total gradient of h_t (gh) and of the other
// state fields leaving the step, and what the forward saved, and returns the gradients of the
// pre-activations and of the state entering the step. A reset's cut of those state gradients is
// the caller's (it replaces the state, so the gradient is set to zero, never multiplied by 0).
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define RNNKIT_HD __host__ __device__ __forceinline__
#else
#define RNNKIT_HD inline
#endif

namespace rnnkit_cuda {
namespace cell {

RNNKIT_HD float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

//! ReLU that keeps NaN (as torch.relu), unlike fmaxf.
RNNKIT_HD float relu(float x) { return x < 0.0f ? 0.0f : x; }

//! log σ(x) = min(x, 0) - log1p(exp(-|x|)), which overflows for no x; NaN stays NaN.
RNNKIT_HD float log_sigmoid(float x) { return (x < 0.0f ? x : 0.0f) - log1pf(expf(-fabsf(x))); }

//! The larger of a and b, NaN when either is (as torch.maximum; fmaxf would drop the NaN).
//! `a != a` is the NaN test: these files are never compiled with fast-math.
RNNKIT_HD float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }

// --- Elman: h = act(v), v = px_t + h_{t-1} W ------------------------------------------------

RNNKIT_HD float elman_forward(float v, bool relu_act) { return relu_act ? relu(v) : tanhf(v); }

//! Gradient of v from that of h (given h). ReLU's as torch's: a select, exactly 0 where h <= 0
//! (even for a NaN gh, which 0 * gh would keep) and gh elsewhere (a NaN h passes gh).
RNNKIT_HD float elman_backward(float gh, float h, bool relu_act) {
  if (relu_act) return h <= 0.0f ? 0.0f : gh;
  return gh * (1.0f - h * h);
}

// --- LSTM (gates i, f, g, o) --------------------------------------------------------------

struct LstmStep {
  float i, f, g, o;  // activations (saved for the backward)
  float c, tc, h;    // c_t, tanh(c_t) (saved), h_t
};

RNNKIT_HD LstmStep lstm_forward(float ai, float af, float ag, float ao, float c_prev) {
  LstmStep s;
  s.i = sigmoid(ai);
  s.f = sigmoid(af);
  s.g = tanhf(ag);
  s.o = sigmoid(ao);
  s.c = fmaf(s.f, c_prev, s.i * s.g);
  s.tc = tanhf(s.c);
  s.h = s.o * s.tc;
  return s;
}

struct LstmGrad {
  float di, df, dg, dout;  // gradients of the pre-activations
  float dc_prev;           // gradient of c_{t-1}
};

//! gh: total gradient of h_t; dc: gradient of c_t from the later steps (or the final c).
RNNKIT_HD LstmGrad lstm_backward(float gh, float dc, float i, float f, float g, float o, float tc,
                                 float c_prev) {
  LstmGrad d;
  dc = fmaf(gh, o * (1.0f - tc * tc), dc);
  d.di = dc * g * i * (1.0f - i);
  d.df = dc * c_prev * f * (1.0f - f);
  d.dg = dc * i * (1.0f - g * g);
  d.dout = gh * tc * o * (1.0f - o);
  d.dc_prev = dc * f;
  return d;
}

// --- GRU (gates r, z, n; torch's convention: b_hn inside the reset gate's product) -----------

struct GruStep {
  float r, z, n;  // activations (saved)
  float h;
};

//! xr, xz, xn: the projected input's gates; qr, qz, qn: the recurrent terms h_{t-1} W (qn with
//! b_hn added).
RNNKIT_HD GruStep gru_forward(float xr, float xz, float xn, float qr, float qz, float qn,
                              float h_prev) {
  GruStep s;
  s.r = sigmoid(xr + qr);
  s.z = sigmoid(xz + qz);
  s.n = tanhf(fmaf(s.r, qn, xn));
  s.h = fmaf(s.z, h_prev - s.n, s.n);
  return s;
}

struct GruGrad {
  float dr, dz;  // gradients of the r and z pre-activations (the same for px and q)
  float dxn;     // gradient of px's n gate
  float dqn;     // gradient of the recurrent n term (r dxn)
  float dh_prev; // gradient of h_{t-1} by the direct path (z gh), not through q
};

RNNKIT_HD GruGrad gru_backward(float gh, float r, float z, float n, float qn, float h_prev) {
  GruGrad d;
  d.dxn = gh * (1.0f - z) * (1.0f - n * n);
  d.dz = gh * (h_prev - n) * z * (1.0f - z);
  d.dr = d.dxn * qn * r * (1.0f - r);
  d.dqn = d.dxn * r;
  d.dh_prev = gh * z;
  return d;
}

// --- sLSTM (gates i, f, z, o; xLSTM's stabilised exponential gating) -----------------------
//
//   a   = log σ(f̃) + m_{t-1}, or -inf where n_{t-1} == 0 (nothing accumulated yet)
//   m_t = max(ĩ, a),  i' = exp(ĩ - m_t),  f' = exp(a - m_t)
//   c_t = f' c_{t-1} + i' tanh z̃,  n_t = f' n_{t-1} + i',  h_t = σ(õ) c_t / n_t

struct SlstmStep {
  float zt, o;   // tanh z̃ and σ(õ) (saved)
  float ip, fp;  // i' and f' (saved)
  float c, n, m, h;
};

RNNKIT_HD SlstmStep slstm_forward(float ai, float af, float az, float ao, float c_prev,
                                  float n_prev, float m_prev) {
  SlstmStep s;
  const float a = n_prev == 0.0f ? -INFINITY : log_sigmoid(af) + m_prev;
  s.m = max_nan(ai, a);
  s.ip = expf(ai - s.m);
  s.fp = expf(a - s.m);
  s.zt = tanhf(az);
  s.o = sigmoid(ao);
  s.c = fmaf(s.fp, c_prev, s.ip * s.zt);
  s.n = fmaf(s.fp, n_prev, s.ip);
  s.h = s.c / s.n * s.o;
  return s;
}

struct SlstmGrad {
  float di, df, dz, dout;            // gradients of the pre-activations
  float dc_prev, dn_prev, dm_prev;  // gradients of the state entering the step
};

//! gh: total gradient of h_t; dc, dn, dm: gradients of c_t, n_t, m_t from the later steps (or
//! the final state); ai, af: the pre-activations ĩ, f̃; zt, o, ip, fp, c, n, m, h: the forward
//! step's values; c_prev, n_prev: the state entering it (after resets).
//!
//! h does not depend on m (m rescales c and n together), but the final m has a cotangent of its
//! own, so dm is carried exactly. m_t = max(ĩ, a) sends its gradient to ĩ where it took ĩ, to a
//! otherwise, half to each at a tie (then f' == 1), as torch.maximum's backward.
RNNKIT_HD SlstmGrad slstm_backward(float gh, float dc, float dn, float dm, float ai, float af,
                                   float zt, float o, float ip, float fp, float c, float n,
                                   float m, float h, float c_prev, float n_prev) {
  SlstmGrad d;
  const float inv_n = 1.0f / n;
  dc = fmaf(gh, o * inv_n, dc);
  dn = fmaf(gh, -h * inv_n, dn);
  d.dout = gh * (c * inv_n * o * (1.0f - o));
  d.dz = dc * (ip * (1.0f - zt * zt));
  const float de_i = ip * fmaf(dc, zt, dn);             // gradient of the exponent ĩ - m_t
  const float de_f = fp * fmaf(dc, c_prev, dn * n_prev); // gradient of the exponent a - m_t
  const float rest = dm - (de_i + de_f);                 // total gradient of m_t
  const float took_i = ai == m ? (fp == 1.0f ? 0.5f : 1.0f) : 0.0f;
  d.di = fmaf(took_i, rest, de_i);
  const float da = fmaf(1.0f - took_i, rest, de_f);     // gradient of a = log σ(f̃) + m_{t-1}
  d.df = da * sigmoid(-af);
  d.dm_prev = da;
  d.dc_prev = dc * fp;
  d.dn_prev = dn * fp;
  return d;
}

}  // namespace cell
}  // namespace rnnkit_cuda
