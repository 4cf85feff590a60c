// torch glue of the persistent CUDA loops: argument checks, output allocation, TORCH_LIBRARY.
//
// Every op allocates its outputs and returns them as a list (no input is written, no output is
// a view of another); the Python adapters (rnnkit/kernels/gated/cuda/_loops.py) give them the
// signatures of the `fused` loops. All tensors are float32 CUDA tensors in the layouts of
// gated_cuda.h; the caller makes the current device that of the tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "gated_cuda.h"

namespace rnnkit_cuda {

cudaStream_t current_stream(int device);  // gated_cuda_stream.cpp

namespace {

const float* fptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<float>() : nullptr;
}

void check_float(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), ", expected ",
              like.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, name, " has shape ", t.sizes(), ", expected ", shape);
}

const bool* mask_ptr(const c10::optional<at::Tensor>& mask, int64_t T, int64_t B,
                     const at::Tensor& like) {
  if (!mask.has_value() || !mask->defined()) return nullptr;
  TORCH_CHECK(mask->is_cuda() && mask->device() == like.device(), "mask must be on ",
              like.device());
  TORCH_CHECK(mask->scalar_type() == at::kBool && mask->is_contiguous(),
              "mask must be a contiguous bool tensor");
  check_shape(*mask, "mask", {T, B});
  return mask->data_ptr<bool>();
}

Tiling tiling_of(int64_t units, int64_t batch_tile, int64_t D) {
  TORCH_CHECK(units >= 1 && units <= D, "units per block must be in [1, ", D, "], got ", units);
  TORCH_CHECK(batch_tile >= 1, "batch_tile must be >= 1, got ", batch_tile);
  return Tiling{static_cast<int>(units), static_cast<int>(batch_tile)};
}

void check_launch(const char* failure, const char* what) {
  TORCH_CHECK(failure == nullptr, "rnnkit cuda ", what, ": ", failure ? failure : "");
}

std::vector<at::Tensor> forward(int64_t kind, const at::Tensor& px, const at::Tensor& W,
                                const c10::optional<at::Tensor>& bhn,
                                const c10::optional<at::Tensor>& mask, const at::Tensor& h0,
                                const c10::optional<at::Tensor>& c0, double h_init, double c_init,
                                bool save, int64_t units, int64_t batch_tile) {
  TORCH_CHECK(kind >= ELMAN_TANH && kind <= GRU, "unknown cell kind ", kind);
  const int G = gates_of(static_cast<int>(kind));
  TORCH_CHECK(px.dim() == 4, "px must be (N, T, B, G*D)");
  check_float(px, "px", px);
  const int64_t N = px.size(0), T = px.size(1), B = px.size(2), D = px.size(3) / G;
  TORCH_CHECK(px.size(3) == G * D, "px's last dimension must be a multiple of ", G);
  check_float(W, "W", px);
  check_shape(W, "W", {N, D, G * D});
  check_float(h0, "h0", px);
  check_shape(h0, "h0", {N, B, D});
  const bool lstm = kind == LSTM, gru = kind == GRU;
  if (lstm) {
    TORCH_CHECK(c0.has_value() && c0->defined(), "LSTM needs c0");
    check_float(*c0, "c0", px);
    check_shape(*c0, "c0", {N, B, D});
  }
  if (gru && bhn.has_value() && bhn->defined()) {
    check_float(*bhn, "bhn", px);
    TORCH_CHECK(bhn->numel() == N * D, "bhn must have N * D elements");
  }
  const bool* m = mask_ptr(mask, T, B, px);
  const Tiling tiling = tiling_of(units, batch_tile, D);
  const auto opts = px.options();

  at::Tensor hs = at::empty({N, T + 1, B, D}, opts);
  hs.select(1, 0).copy_(h0);
  at::Tensor cs, acts, qs, tcs, hp;
  if (lstm) {
    cs = at::empty({N, save ? T + 1 : 2, B, D}, opts);
    cs.select(1, 0).copy_(*c0);
  }
  if (save && !(kind == ELMAN_TANH || kind == ELMAN_RELU)) acts = at::empty({N, T, B, G * D}, opts);
  if (save && gru) qs = at::empty({N, T, B, G * D}, opts);
  if (save && lstm) tcs = at::empty({N, T, B, D}, opts);
  if (save && m != nullptr) hp = at::empty({N, T, B, D}, opts);

  ForwardArgs a{};
  a.kind = static_cast<int>(kind);
  a.N = static_cast<int>(N);
  a.T = static_cast<int>(T);
  a.B = static_cast<int>(B);
  a.D = static_cast<int>(D);
  a.px = px.data_ptr<float>();
  a.W = W.data_ptr<float>();
  a.bhn = gru ? fptr(bhn) : nullptr;
  a.mask = m;
  a.h_init = static_cast<float>(h_init);
  a.c_init = static_cast<float>(c_init);
  a.save = save ? 1 : 0;
  a.hs = hs.data_ptr<float>();
  a.cs = lstm ? cs.data_ptr<float>() : nullptr;
  a.acts = acts.defined() ? acts.data_ptr<float>() : nullptr;
  a.qs = qs.defined() ? qs.data_ptr<float>() : nullptr;
  a.tcs = tcs.defined() ? tcs.data_ptr<float>() : nullptr;
  a.hp = hp.defined() ? hp.data_ptr<float>() : nullptr;
  check_launch(launch_forward(a, tiling, current_stream(px.get_device())), "forward");

  std::vector<at::Tensor> out{hs};
  if (lstm) out.push_back(cs.select(1, save ? T : T % 2).clone());
  if (save) {
    if (lstm) {
      out.push_back(acts);
      out.push_back(cs);
      out.push_back(tcs);
    } else if (gru) {
      out.push_back(acts);
      out.push_back(qs);
    }
    if (hp.defined()) out.push_back(hp);
  }
  return out;
}

std::vector<at::Tensor> backward(int64_t kind, const at::Tensor& W, const at::Tensor& hs,
                                 const c10::optional<at::Tensor>& acts,
                                 const c10::optional<at::Tensor>& cs,
                                 const c10::optional<at::Tensor>& tcs,
                                 const c10::optional<at::Tensor>& qs,
                                 const c10::optional<at::Tensor>& hp,
                                 const c10::optional<at::Tensor>& mask, const at::Tensor& d_hs,
                                 const c10::optional<at::Tensor>& d_c, int64_t units,
                                 int64_t batch_tile) {
  TORCH_CHECK(kind >= ELMAN_TANH && kind <= GRU, "unknown cell kind ", kind);
  const int G = gates_of(static_cast<int>(kind));
  TORCH_CHECK(hs.dim() == 4, "hs must be (N, T + 1, B, D)");
  check_float(hs, "hs", hs);
  const int64_t N = hs.size(0), T = hs.size(1) - 1, B = hs.size(2), D = hs.size(3);
  check_float(W, "W", hs);
  check_shape(W, "W", {N, D, G * D});
  check_float(d_hs, "d_hs", hs);
  check_shape(d_hs, "d_hs", {N, T + 1, B, D});
  const bool lstm = kind == LSTM, gru = kind == GRU;
  auto need = [&](const c10::optional<at::Tensor>& t, const char* name,
                  at::IntArrayRef shape) -> const float* {
    TORCH_CHECK(t.has_value() && t->defined(), "this cell's backward needs ", name);
    check_float(*t, name, hs);
    check_shape(*t, name, shape);
    return t->data_ptr<float>();
  };
  const bool* m = mask_ptr(mask, T, B, hs);
  const Tiling tiling = tiling_of(units, batch_tile, D);
  const auto opts = hs.options();

  BackwardArgs a{};
  a.kind = static_cast<int>(kind);
  a.N = static_cast<int>(N);
  a.T = static_cast<int>(T);
  a.B = static_cast<int>(B);
  a.D = static_cast<int>(D);
  a.W = W.data_ptr<float>();
  a.hs = hs.data_ptr<float>();
  a.mask = m;
  a.d_hs = d_hs.data_ptr<float>();
  at::Tensor dq = at::empty({N, T, B, G * D}, opts);
  at::Tensor dh0 = at::empty({N, B, D}, opts);
  at::Tensor dpx, dstate, carry;
  if (lstm) {
    a.acts = need(acts, "acts", {N, T, B, G * D});
    a.cs = need(cs, "cs", {N, T + 1, B, D});
    a.tcs = need(tcs, "tcs", {N, T, B, D});
    TORCH_CHECK(d_c.has_value() && d_c->defined(), "the LSTM backward needs d_c");
    check_float(*d_c, "d_c", hs);
    check_shape(*d_c, "d_c", {N, B, D});
    dstate = d_c->clone();
    a.dstate = dstate.data_ptr<float>();
  }
  if (gru) {
    a.acts = need(acts, "acts", {N, T, B, G * D});
    a.qs = need(qs, "qs", {N, T, B, G * D});
    // Without resets the states entering each step are hs[:, :T] (read from hs).
    a.hp = m != nullptr ? need(hp, "hp", {N, T, B, D}) : nullptr;
    dpx = at::empty({N, T, B, G * D}, opts);
    carry = at::empty({N, B, D}, opts);
    a.dpx = dpx.data_ptr<float>();
    a.carry = carry.data_ptr<float>();
  }
  a.dq = dq.data_ptr<float>();
  a.dh0 = dh0.data_ptr<float>();
  if (T > 0) {
    check_launch(launch_backward(a, tiling, current_stream(hs.get_device())), "backward");
  } else {
    dh0.copy_(d_hs.select(1, 0));
  }
  std::vector<at::Tensor> out{dq, dh0};
  if (lstm) out.push_back(dstate);
  if (gru) out.push_back(dpx);
  return out;
}

}  // namespace
}  // namespace rnnkit_cuda

TORCH_LIBRARY(rnnkit_gated_cuda, m) {
  m.def(
      "forward(int kind, Tensor px, Tensor W, Tensor? bhn, Tensor? mask, Tensor h0, Tensor? c0, "
      "float h_init, float c_init, bool save, int units, int batch_tile) -> Tensor[]");
  m.def(
      "backward(int kind, Tensor W, Tensor hs, Tensor? acts, Tensor? cs, Tensor? tcs, "
      "Tensor? qs, Tensor? hp, Tensor? mask, Tensor d_hs, Tensor? d_c, int units, "
      "int batch_tile) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rnnkit_gated_cuda, CUDA, m) {
  m.impl("forward", &rnnkit_cuda::forward);
  m.impl("backward", &rnnkit_cuda::backward);
}
