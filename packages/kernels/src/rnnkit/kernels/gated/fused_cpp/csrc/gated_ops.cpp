// Torch glue of the native gated-cell loops: checks the inputs, allocates the outputs and
// the saved buffers (the same ones the Python `fused` loops save), and registers the ops as
// torch.ops.rnnkit_fused_cpp.* (no pybind11: the library is loaded with torch.ops.load_library).
//
// The per-step GEMM calls the BLAS that libtorch_cpu exports (MKL's sgemm_/dgemm_ in the x86
// wheels) through weak symbols, with no dispatcher or tensor overhead per step, and with MKL's
// packed GEMM the recurrent weights are packed once per loop; where torch exports no BLAS the
// weak symbols are null and at::mm_out does the GEMM instead.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "gated_cells.h"
#include "gated_tiles.h"
#include "buffer_pool.h"

extern "C" {
// Fortran BLAS (column-major), resolved from libtorch_cpu when it exports them, else null.
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
// MKL's packed GEMM: the weights are packed once per loop instead of inside every product.
size_t sgemm_pack_get_size(const char* id, const int* m, const int* n, const int* k)
    __attribute__((weak));
void sgemm_pack(const char* id, const char* t, const int* m, const int* n, const int* k,
                const float* alpha, const float* src, const int* ld, float* dest)
    __attribute__((weak));
void sgemm_compute(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                   const float* a, const int* lda, const float* b, const int* ldb,
                   const float* beta, float* c, const int* ldc) __attribute__((weak));
size_t dgemm_pack_get_size(const char* id, const int* m, const int* n, const int* k)
    __attribute__((weak));
void dgemm_pack(const char* id, const char* t, const int* m, const int* n, const int* k,
                const double* alpha, const double* src, const int* ld, double* dest)
    __attribute__((weak));
void dgemm_compute(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                   const double* a, const int* lda, const double* b, const int* ldb,
                   const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace {

using rnnkit_cpu::Dims;
using rnnkit_cpu::Env;

// Pointwise elements per thread chunk: below about this much work a step stays on one thread
// (waking a second thread costs microseconds, and on a loaded machine can stall a step).
std::atomic<int64_t> g_grain_elements{1 << 15};
std::atomic<bool> g_use_blas{true};
std::atomic<bool> g_use_pack{true};
// The tile kernels of the float team loops (null: off); set_options("auto") picks the widest
// this CPU runs, which is also the default.
std::atomic<const rnnkit_cpu::TileKernels*> g_tiles{rnnkit_cpu::find_tile_kernels("auto")};

bool blas_available() { return sgemm_ != nullptr && dgemm_ != nullptr; }

bool pack_available() {
  return sgemm_pack_get_size != nullptr && sgemm_pack != nullptr && sgemm_compute != nullptr &&
         dgemm_pack_get_size != nullptr && dgemm_pack != nullptr && dgemm_compute != nullptr;
}

// Row-major c = a @ op(b) as column-major c^T = op(b)^T a^T.
template <typename T>
void blas_gemm(bool trans_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
               const T* b, int64_t ldb, T* c, int64_t ldc) {
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  const T one = 1, zero = 0;
  const char* ta = trans_b ? "T" : "N";
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(ta, "N", &M, &N, &K, &one, b, &la, a, &lb, &zero, c, &lc);
  } else {
    dgemm_(ta, "N", &M, &N, &K, &one, b, &la, a, &lb, &zero, c, &lc);
  }
}

template <typename T>
void aten_gemm(bool trans_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
               const T* b, int64_t ldb, T* c, int64_t ldc) {
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor A = at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opt);
  at::Tensor Bm = trans_b ? at::from_blob(const_cast<T*>(b), {n, k}, {ldb, 1}, opt).t()
                          : at::from_blob(const_cast<T*>(b), {k, n}, {ldb, 1}, opt);
  at::Tensor C = at::from_blob(c, {m, n}, {ldc, 1}, opt);
  at::mm_out(C, A, Bm);
}

void parallel(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
  at::parallel_for(0, n, grain, f);
}

// One head's weights for products c (m x n) = a (m x k) @ op(w) (see Env::prepare).
template <typename T>
struct Weights {
  bool trans;
  int64_t m, n, k;
  const T* w;
  int64_t ldw;
  std::vector<T> packed;  // MKL's packed copy of op(w), or empty
};

// Column-major view of the row-major product: c^T (n x m) = op(w)^T (n x k) a^T (k x m), so
// op(w)^T is BLAS's left operand ("A", packed once) and a^T its right one.
template <typename T>
void* prepare(bool trans, int64_t m, int64_t n, int64_t k, const T* w, int64_t ldw) {
  auto* h = new Weights<T>{trans, m, n, k, w, ldw, {}};
  if (g_use_blas.load() && g_use_pack.load() && blas_available() && pack_available()) {
    const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
    const int ld = static_cast<int>(ldw);
    const T one = 1;
    const char* t = trans ? "T" : "N";
    if constexpr (std::is_same_v<T, float>) {
      h->packed.resize(sgemm_pack_get_size("A", &M, &N, &K) / sizeof(T) + 1);
      sgemm_pack("A", t, &M, &N, &K, &one, w, &ld, h->packed.data());
    } else {
      h->packed.resize(dgemm_pack_get_size("A", &M, &N, &K) / sizeof(T) + 1);
      dgemm_pack("A", t, &M, &N, &K, &one, w, &ld, h->packed.data());
    }
  }
  return h;
}

template <typename T>
void multiply(const void* handle, const T* a, int64_t lda, T* c, int64_t ldc) {
  const auto& h = *static_cast<const Weights<T>*>(handle);
  const int M = static_cast<int>(h.n), N = static_cast<int>(h.m), K = static_cast<int>(h.k);
  const int lw = static_cast<int>(h.ldw), la = static_cast<int>(lda), lc = static_cast<int>(ldc);
  const T zero = 0;
  if (!h.packed.empty()) {
    if constexpr (std::is_same_v<T, float>) {
      sgemm_compute("P", "N", &M, &N, &K, h.packed.data(), &lw, a, &la, &zero, c, &lc);
    } else {
      dgemm_compute("P", "N", &M, &N, &K, h.packed.data(), &lw, a, &la, &zero, c, &lc);
    }
  } else if (g_use_blas.load() && blas_available()) {
    blas_gemm<T>(h.trans, h.m, h.n, h.k, a, lda, h.w, h.ldw, c, ldc);
  } else {
    aten_gemm<T>(h.trans, h.m, h.n, h.k, a, lda, h.w, h.ldw, c, ldc);
  }
}

template <typename T>
void release(void* handle) {
  delete static_cast<Weights<T>*>(handle);
}

template <typename T>
Env<T> make_env() {
  Env<T> env;
  // The BLAS takes int dimensions; the loops' products are per step, far below 2^31.
  env.prepare = &prepare<T>;
  env.multiply = &multiply<T>;
  env.release = &release<T>;
  env.parallel = &parallel;
  env.grain_elements = g_grain_elements.load();
  env.tiles = g_tiles.load();
  env.threads = at::get_num_threads();
  return env;
}

// ---- input checks --------------------------------------------------------------------------

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "rnnkit fused_cpp: ", name, " must be a CPU tensor, got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "rnnkit fused_cpp: ", name, " must be float32 or float64, got ", t.scalar_type());
}

// A contiguous copy (if needed) of `t` with the expected shape and px's dtype.
at::Tensor arg(const at::Tensor& t, const char* name, at::IntArrayRef shape,
               const at::Tensor& like) {
  check_float(t, name);
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "rnnkit fused_cpp: ", name, " has dtype ",
              t.scalar_type(), ", expected ", like.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "rnnkit fused_cpp: ", name, " has shape ", t.sizes(),
              ", expected ", shape);
  return t.contiguous();
}

// The resets as (T, B) bytes, or an undefined tensor.
at::Tensor mask_arg(const std::optional<at::Tensor>& mask, int64_t T, int64_t B) {
  if (!mask.has_value() || !mask->defined()) return {};
  TORCH_CHECK(mask->device().is_cpu() && mask->scalar_type() == at::kBool,
              "rnnkit fused_cpp: mask must be a bool CPU tensor");
  TORCH_CHECK(mask->sizes() == at::IntArrayRef({T, B}), "rnnkit fused_cpp: mask has shape ",
              mask->sizes(), ", expected [", T, ", ", B, "]");
  return mask->contiguous();
}

const uint8_t* mask_ptr(const at::Tensor& m) {
  return m.defined() ? reinterpret_cast<const uint8_t*>(m.data_ptr<bool>()) : nullptr;
}

// (N, T, B, G*D) projected input -> dims, checking that G divides the last size.
Dims dims_of(const at::Tensor& px, int64_t G) {
  check_float(px, "px");
  TORCH_CHECK(px.dim() == 4, "rnnkit fused_cpp: px must be (N, T, B, G*D), got ", px.sizes());
  TORCH_CHECK(px.size(3) % G == 0, "rnnkit fused_cpp: px's last size ", px.size(3),
              " is not a multiple of ", G, " gates");
  TORCH_CHECK(px.size(1) > 0, "rnnkit fused_cpp: empty sequence (T == 0)");
  return Dims{px.size(0), px.size(1), px.size(2), px.size(3) / G};
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename F>
auto by_dtype(const at::Tensor& t, const F& f) {
  if (t.scalar_type() == at::kFloat) return f(float{});
  return f(double{});
}

// ---- LSTM ----------------------------------------------------------------------------------

std::vector<at::Tensor> lstm_forward(const at::Tensor& px_, const at::Tensor& W_,
                                     const std::optional<at::Tensor>& mask_,
                                     const at::Tensor& h0, const at::Tensor& c0, double h_init,
                                     double c_init, bool save) {
  const Dims d = dims_of(px_, 4);
  const int64_t N = d.N, T = d.T, B = d.B, D = d.D, k = save ? T : 1;
  const at::Tensor px = px_.contiguous();
  const at::Tensor W = arg(W_, "W", {N, D, 4 * D}, px);
  const at::Tensor mask = mask_arg(mask_, T, B);
  const auto o = px.options();
  at::Tensor hs = rnnkit_cpu::pooled_empty({N, T + 1, B, D}, o);
  at::Tensor cs = rnnkit_cpu::pooled_empty({N, save ? T + 1 : 2, B, D}, o);
  hs.select(1, 0).copy_(arg(h0, "h0", {N, B, D}, px));
  cs.select(1, 0).copy_(arg(c0, "c0", {N, B, D}, px));
  at::Tensor acts = rnnkit_cpu::pooled_empty({N, k, B, 4 * D}, o);
  at::Tensor tcs = rnnkit_cpu::pooled_empty({N, k, B, D}, o);
  at::Tensor hp = mask.defined() ? rnnkit_cpu::pooled_empty({N, k, B, D}, o) : at::Tensor();
  by_dtype(px, [&](auto zero) {
    using T_ = decltype(zero);
    rnnkit_cpu::LstmForward<T_> a{ptr<T_>(px), ptr<T_>(W), mask_ptr(mask), T_(h_init),
                                  T_(c_init), save, ptr<T_>(hs), ptr<T_>(cs), ptr<T_>(acts),
                                  ptr<T_>(tcs), ptr<T_>(hp)};
    rnnkit_cpu::lstm_forward(make_env<T_>(), d, a);
    return 0;
  });
  at::Tensor c_last = cs.select(1, T % cs.size(1)).clone();
  if (!save) return {hs, c_last};
  if (!hp.defined()) return {hs, c_last, acts, cs, tcs};
  return {hs, c_last, acts, cs, tcs, hp};
}

std::vector<at::Tensor> lstm_backward(const at::Tensor& W_, const at::Tensor& acts,
                                      const at::Tensor& cs, const at::Tensor& tcs,
                                      const std::optional<at::Tensor>& mask_,
                                      const at::Tensor& d_hs_, const at::Tensor& d_c) {
  const Dims d = dims_of(acts, 4);
  const int64_t N = d.N, T = d.T, B = d.B, D = d.D;
  const at::Tensor W = arg(W_, "W", {N, D, 4 * D}, acts);
  const at::Tensor cs_ = arg(cs, "cs", {N, T + 1, B, D}, acts);
  const at::Tensor tcs_ = arg(tcs, "tcs", {N, T, B, D}, acts);
  const at::Tensor d_hs = arg(d_hs_, "d_hs", {N, T + 1, B, D}, acts);
  const at::Tensor mask = mask_arg(mask_, T, B);
  const at::Tensor acts_ = acts.contiguous();
  const auto o = acts.options();
  at::Tensor dq = rnnkit_cpu::pooled_empty({N, T, B, 4 * D}, o);
  at::Tensor dc = arg(d_c, "d_c", {N, B, D}, acts).clone();
  at::Tensor dh0 = rnnkit_cpu::pooled_empty({N, B, D}, o);
  at::Tensor scratch = rnnkit_cpu::pooled_empty({N, B, D}, o);
  by_dtype(acts, [&](auto zero) {
    using T_ = decltype(zero);
    rnnkit_cpu::LstmBackward<T_> a{ptr<T_>(W),    ptr<T_>(acts_), ptr<T_>(cs_),
                                   ptr<T_>(tcs_), mask_ptr(mask), ptr<T_>(d_hs),
                                   ptr<T_>(dq),   ptr<T_>(dc),    ptr<T_>(dh0),
                                   ptr<T_>(scratch)};
    rnnkit_cpu::lstm_backward(make_env<T_>(), d, a);
    return 0;
  });
  return {dq, dh0, dc};
}

// ---- GRU -----------------------------------------------------------------------------------

std::vector<at::Tensor> gru_forward(const at::Tensor& px_, const at::Tensor& W_,
                                    const std::optional<at::Tensor>& bhn_,
                                    const std::optional<at::Tensor>& mask_, const at::Tensor& h0,
                                    double h_init, bool save) {
  const Dims d = dims_of(px_, 3);
  const int64_t N = d.N, T = d.T, B = d.B, D = d.D, k = save ? T : 1;
  const at::Tensor px = px_.contiguous();
  const at::Tensor W = arg(W_, "W", {N, D, 3 * D}, px);
  at::Tensor bhn;
  if (bhn_.has_value() && bhn_->defined()) bhn = arg(*bhn_, "bhn", {N, D}, px);
  const at::Tensor mask = mask_arg(mask_, T, B);
  const auto o = px.options();
  at::Tensor hs = rnnkit_cpu::pooled_empty({N, T + 1, B, D}, o);
  hs.select(1, 0).copy_(arg(h0, "h0", {N, B, D}, px));
  at::Tensor acts = rnnkit_cpu::pooled_empty({N, k, B, 3 * D}, o);
  at::Tensor qs = rnnkit_cpu::pooled_empty({N, k, B, 3 * D}, o);
  at::Tensor hp = mask.defined() ? rnnkit_cpu::pooled_empty({N, k, B, D}, o) : at::Tensor();
  by_dtype(px, [&](auto zero) {
    using T_ = decltype(zero);
    rnnkit_cpu::GruForward<T_> a{ptr<T_>(px),   ptr<T_>(W),    ptr<T_>(bhn), mask_ptr(mask),
                                 T_(h_init),    save,          ptr<T_>(hs),  ptr<T_>(acts),
                                 ptr<T_>(qs),   ptr<T_>(hp)};
    rnnkit_cpu::gru_forward(make_env<T_>(), d, a);
    return 0;
  });
  if (!save) return {hs};
  if (!hp.defined()) return {hs, acts, qs};
  return {hs, acts, qs, hp};
}

std::vector<at::Tensor> gru_backward(const at::Tensor& W_, const at::Tensor& acts,
                                     const at::Tensor& qs, const at::Tensor& hp,
                                     const std::optional<at::Tensor>& mask_,
                                     const at::Tensor& d_hs_) {
  const Dims d = dims_of(acts, 3);
  const int64_t N = d.N, T = d.T, B = d.B, D = d.D;
  const at::Tensor W = arg(W_, "W", {N, D, 3 * D}, acts);
  const at::Tensor qs_ = arg(qs, "qs", {N, T, B, 3 * D}, acts);
  const at::Tensor d_hs = arg(d_hs_, "d_hs", {N, T + 1, B, D}, acts);
  const at::Tensor mask = mask_arg(mask_, T, B);
  const at::Tensor acts_ = acts.contiguous();
  // hp may be a view hs[:, :T] (head stride (T+1) B D): only its inner (B, D) must be dense.
  check_float(hp, "hp");
  TORCH_CHECK(hp.sizes() == at::IntArrayRef({N, T, B, D}), "rnnkit fused_cpp: hp has shape ",
              hp.sizes());
  at::Tensor hp_ = (hp.stride(3) == 1 && hp.stride(2) == D && hp.stride(1) == B * D)
                       ? hp
                       : hp.contiguous();
  const auto o = acts.options();
  at::Tensor dq = rnnkit_cpu::pooled_empty({N, T, B, 3 * D}, o);
  at::Tensor dpx = rnnkit_cpu::pooled_empty({N, T, B, 3 * D}, o);
  at::Tensor dh0 = rnnkit_cpu::pooled_empty({N, B, D}, o);
  at::Tensor dh = rnnkit_cpu::pooled_empty({N, B, D}, o);
  at::Tensor scratch = rnnkit_cpu::pooled_empty({N, B, D}, o);
  by_dtype(acts, [&](auto zero) {
    using T_ = decltype(zero);
    rnnkit_cpu::GruBackward<T_> a{ptr<T_>(W),     ptr<T_>(acts_), ptr<T_>(qs_),
                                  ptr<T_>(hp_),   hp_.stride(1),  hp_.stride(0),
                                  mask_ptr(mask), ptr<T_>(d_hs),  ptr<T_>(dq),
                                  ptr<T_>(dpx),   ptr<T_>(dh0),   ptr<T_>(dh),
                                  ptr<T_>(scratch)};
    rnnkit_cpu::gru_backward(make_env<T_>(), d, a);
    return 0;
  });
  return {dq, dpx, dh0};
}

// ---- Elman ---------------------------------------------------------------------------------

std::vector<at::Tensor> elman_forward(const at::Tensor& px_, const at::Tensor& W_,
                                      const std::optional<at::Tensor>& mask_,
                                      const at::Tensor& h0, double h_init, bool relu) {
  const Dims d = dims_of(px_, 1);
  const int64_t N = d.N, T = d.T, B = d.B, D = d.D;
  const at::Tensor px = px_.contiguous();
  const at::Tensor W = arg(W_, "W", {N, D, D}, px);
  const at::Tensor mask = mask_arg(mask_, T, B);
  const auto o = px.options();
  at::Tensor hs = rnnkit_cpu::pooled_empty({N, T + 1, B, D}, o);
  hs.select(1, 0).copy_(arg(h0, "h0", {N, B, D}, px));
  at::Tensor hp = mask.defined() ? rnnkit_cpu::pooled_empty({N, T, B, D}, o) : at::Tensor();
  by_dtype(px, [&](auto zero) {
    using T_ = decltype(zero);
    rnnkit_cpu::ElmanForward<T_> a{ptr<T_>(px), ptr<T_>(W),  mask_ptr(mask), T_(h_init),
                                   relu,        ptr<T_>(hs), ptr<T_>(hp)};
    rnnkit_cpu::elman_forward(make_env<T_>(), d, a);
    return 0;
  });
  if (!hp.defined()) return {hs};
  return {hs, hp};
}

std::vector<at::Tensor> elman_backward(const at::Tensor& W_, const at::Tensor& hs_,
                                       const std::optional<at::Tensor>& mask_,
                                       const at::Tensor& d_hs_, bool relu) {
  check_float(hs_, "hs");
  TORCH_CHECK(hs_.dim() == 4 && hs_.size(1) > 1, "rnnkit fused_cpp: hs must be (N, T+1, B, D)");
  const int64_t N = hs_.size(0), T = hs_.size(1) - 1, B = hs_.size(2), D = hs_.size(3);
  const Dims d{N, T, B, D};
  const at::Tensor hs = hs_.contiguous();
  const at::Tensor W = arg(W_, "W", {N, D, D}, hs);
  const at::Tensor d_hs = arg(d_hs_, "d_hs", {N, T + 1, B, D}, hs);
  const at::Tensor mask = mask_arg(mask_, T, B);
  const auto o = hs.options();
  at::Tensor dq = rnnkit_cpu::pooled_empty({N, T, B, D}, o);
  at::Tensor dh0 = rnnkit_cpu::pooled_empty({N, B, D}, o);
  at::Tensor scratch = rnnkit_cpu::pooled_empty({N, B, D}, o);
  by_dtype(hs, [&](auto zero) {
    using T_ = decltype(zero);
    rnnkit_cpu::ElmanBackward<T_> a{ptr<T_>(W),  ptr<T_>(hs),  mask_ptr(mask),   relu,
                                    ptr<T_>(d_hs), ptr<T_>(dq), ptr<T_>(dh0), ptr<T_>(scratch)};
    rnnkit_cpu::elman_backward(make_env<T_>(), d, a);
    return 0;
  });
  return {dq, dh0};
}

// ---- sLSTM ---------------------------------------------------------------------------------

std::vector<at::Tensor> slstm_forward(const at::Tensor& px_, const at::Tensor& W_,
                                      const std::optional<at::Tensor>& mask_,
                                      const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& n0, const at::Tensor& m0,
                                      at::ArrayRef<double> inits, bool save) {
  const Dims d = dims_of(px_, 4);
  const int64_t N = d.N, T = d.T, B = d.B, D = d.D, k = save ? T : 1, ns = save ? T + 1 : 2;
  TORCH_CHECK(inits.size() == 4, "rnnkit fused_cpp: slstm needs 4 init values (h, c, n, m)");
  const at::Tensor px = px_.contiguous();
  const at::Tensor W = arg(W_, "W", {N, D, 4 * D}, px);
  const at::Tensor mask = mask_arg(mask_, T, B);
  const auto o = px.options();
  at::Tensor hs = rnnkit_cpu::pooled_empty({N, T + 1, B, D}, o);
  at::Tensor cn = rnnkit_cpu::pooled_empty({N, ns, B, 2, D}, o);
  at::Tensor ms = rnnkit_cpu::pooled_empty({N, ns, B, D}, o);
  hs.select(1, 0).copy_(arg(h0, "h0", {N, B, D}, px));
  cn.select(1, 0).select(2, 0).copy_(arg(c0, "c0", {N, B, D}, px));
  cn.select(1, 0).select(2, 1).copy_(arg(n0, "n0", {N, B, D}, px));
  ms.select(1, 0).copy_(arg(m0, "m0", {N, B, D}, px));
  at::Tensor gates = rnnkit_cpu::pooled_empty({N, k, B, 4 * D}, o);
  at::Tensor ex = rnnkit_cpu::pooled_empty({N, k, B, 2, D}, o);
  at::Tensor cnp, hp, m_scratch;
  if (mask.defined()) {
    cnp = rnnkit_cpu::pooled_empty({N, k, B, 2, D}, o);
    hp = rnnkit_cpu::pooled_empty({N, k, B, D}, o);
    m_scratch = rnnkit_cpu::pooled_empty({N, B, D}, o);
  }
  by_dtype(px, [&](auto zero) {
    using T_ = decltype(zero);
    rnnkit_cpu::SlstmForward<T_> a{ptr<T_>(px),     ptr<T_>(W),        mask_ptr(mask),
                                   T_(inits[0]),    T_(inits[1]),      T_(inits[2]),
                                   T_(inits[3]),    save,              ptr<T_>(hs),
                                   ptr<T_>(cn),     ptr<T_>(ms),       ptr<T_>(gates),
                                   ptr<T_>(ex),     ptr<T_>(cnp),      ptr<T_>(hp),
                                   ptr<T_>(m_scratch)};
    rnnkit_cpu::slstm_forward(make_env<T_>(), d, a);
    return 0;
  });
  if (!save) return {hs, cn, ms};
  if (!mask.defined()) return {hs, cn, ms, gates, ex};
  return {hs, cn, ms, gates, ex, cnp, hp};
}

std::vector<at::Tensor> slstm_backward(const at::Tensor& W_, const at::Tensor& hs_,
                                       const at::Tensor& cn_, const at::Tensor& ms_,
                                       const at::Tensor& gates, const at::Tensor& ex_,
                                       const at::Tensor& cnp, const std::optional<at::Tensor>& mask_,
                                       const at::Tensor& d_hs_, const at::Tensor& d_c,
                                       const at::Tensor& d_n, const at::Tensor& d_m) {
  const Dims d = dims_of(gates, 4);
  const int64_t N = d.N, T = d.T, B = d.B, D = d.D;
  const at::Tensor W = arg(W_, "W", {N, D, 4 * D}, gates);
  const at::Tensor hs = arg(hs_, "hs", {N, T + 1, B, D}, gates);
  const at::Tensor cn = arg(cn_, "cn", {N, T + 1, B, 2, D}, gates);
  const at::Tensor ms = arg(ms_, "ms", {N, T + 1, B, D}, gates);
  const at::Tensor ex = arg(ex_, "ex", {N, T, B, 2, D}, gates);
  const at::Tensor d_hs = arg(d_hs_, "d_hs", {N, T + 1, B, D}, gates);
  const at::Tensor mask = mask_arg(mask_, T, B);
  const at::Tensor gates_ = gates.contiguous();
  check_float(cnp, "cnp");
  TORCH_CHECK(cnp.sizes() == at::IntArrayRef({N, T, B, 2, D}), "rnnkit fused_cpp: cnp has shape ",
              cnp.sizes());
  // cnp may be the view cn[:, :T]: only its inner (B, 2, D) must be dense.
  at::Tensor cnp_ = (cnp.stride(4) == 1 && cnp.stride(3) == D && cnp.stride(2) == 2 * D &&
                     cnp.stride(1) == 2 * B * D)
                        ? cnp
                        : cnp.contiguous();
  const auto o = gates.options();
  at::Tensor dq = rnnkit_cpu::pooled_empty({N, T, B, 4 * D}, o);
  at::Tensor dc = arg(d_c, "d_c", {N, B, D}, gates).clone();
  at::Tensor dn = arg(d_n, "d_n", {N, B, D}, gates).clone();
  at::Tensor dm = arg(d_m, "d_m", {N, B, D}, gates).clone();
  at::Tensor dh0 = rnnkit_cpu::pooled_empty({N, B, D}, o);
  at::Tensor scratch = rnnkit_cpu::pooled_empty({N, B, D}, o);
  by_dtype(gates, [&](auto zero) {
    using T_ = decltype(zero);
    rnnkit_cpu::SlstmBackward<T_> a{ptr<T_>(W),     ptr<T_>(hs),       ptr<T_>(cn),
                                    ptr<T_>(ms),    ptr<T_>(gates_),   ptr<T_>(ex),
                                    ptr<T_>(cnp_),  cnp_.stride(1),    cnp_.stride(0),
                                    mask_ptr(mask), ptr<T_>(d_hs),     ptr<T_>(dq),
                                    ptr<T_>(dc),    ptr<T_>(dn),       ptr<T_>(dm),
                                    ptr<T_>(dh0),   ptr<T_>(scratch)};
    rnnkit_cpu::slstm_backward(make_env<T_>(), d, a);
    return 0;
  });
  return {dq, dh0, dc, dn, dm};
}

// ---- configuration -------------------------------------------------------------------------

std::string info() {
  std::string gemm = "aten mm (torch exports no BLAS)";
  if (blas_available()) {
    gemm = !g_use_blas.load()                      ? "aten mm (blas disabled)"
           : (pack_available() && g_use_pack.load()) ? "blas, weights packed once per loop (MKL)"
                                                     : "blas (sgemm_/dgemm_ from torch)";
  }
  const rnnkit_cpu::TileKernels* tiles = g_tiles.load();
  const std::string team =
      tiles == nullptr ? "off"
                       : std::string(tiles->isa) + " tiles, head sizes that are multiples of " +
                             std::to_string(tiles->vb);
  return "float team loops: " + team + "; other loops' gemm: " + gemm +
         "; pointwise: " + rnnkit_cpu::simd_variant() +
         "; grain: " + std::to_string(g_grain_elements.load()) + " elements";
}

int64_t team_loops_run() { return rnnkit_cpu::team_loops_run(); }

at::Tensor pooled_empty_op(at::IntArrayRef size, at::ScalarType dtype) {
  return rnnkit_cpu::pooled_empty(size, at::TensorOptions().dtype(dtype));
}

// [bytes cached, limit in bytes]
std::vector<int64_t> pool_info() {
  return {rnnkit_cpu::pool_cached_bytes(), rnnkit_cpu::pool_limit_bytes()};
}

// The tile kernel sets this CPU runs, widest first (each a valid `tiles` of set_options).
std::vector<std::string> tile_isas() {
  std::vector<std::string> out;
  for (const char* isa : {"avx512", "avx2", "generic"})
    if (rnnkit_cpu::find_tile_kernels(isa) != nullptr) out.emplace_back(isa);
  return out;
}

// One call of a tile kernel, for tests: out (rows, nv vb) with out[r][v vb + e] =
// sum_k a[r][k] w[k][v vb + e], where w is (K, nv vb) with any row stride (the forward panels
// interleave G vectors per reduction step; the transposed ones have one), float32 only.
at::Tensor tile_product(const std::string& isa, const at::Tensor& w, const at::Tensor& a) {
  const rnnkit_cpu::TileKernels* k = rnnkit_cpu::find_tile_kernels(isa.c_str());
  TORCH_CHECK(k != nullptr, "rnnkit fused_cpp: no ", isa, " tile kernels on this CPU or build");
  TORCH_CHECK(w.dim() == 2 && a.dim() == 2 && w.scalar_type() == at::kFloat &&
                  a.scalar_type() == at::kFloat,
              "rnnkit fused_cpp: tile_product takes float32 matrices w (K, nv vb), a (rows, K)");
  TORCH_CHECK(w.stride(1) == 1 && a.is_contiguous() && a.size(1) == w.size(0) &&
                  w.size(1) % k->vb == 0,
              "rnnkit fused_cpp: tile_product wants rows of w in unit stride, a contiguous, "
              "a.size(1) == w.size(0) and w.size(1) a multiple of ", k->vb);
  const int64_t K = w.size(0), nv = w.size(1) / k->vb, rows = a.size(0);
  TORCH_CHECK(nv >= 1 && nv <= rnnkit_cpu::kMaxVectors && rows >= 1 && K >= 1,
              "rnnkit fused_cpp: tile_product takes 1 to ", rnnkit_cpu::kMaxVectors,
              " vectors, at least one row and at least one reduction step");
  at::Tensor out = at::full({rows, nv * k->vb}, std::nan(""), a.options());
  std::vector<const float*> p(nv), ar(rows);
  std::vector<float*> o(rows);
  std::vector<int64_t> off(nv);
  for (int64_t v = 0; v < nv; ++v) {
    p[v] = w.data_ptr<float>() + v * k->vb;
    off[v] = v * k->vb;
  }
  for (int64_t r = 0; r < rows; ++r) {
    ar[r] = a.data_ptr<float>() + r * K;
    o[r] = out.data_ptr<float>() + r * nv * k->vb;
  }
  k->product(static_cast<int>(nv), static_cast<int>(rows), p.data(), w.stride(0), ar.data(), K,
             o.data(), off.data());
  return out;
}

// tiles: "auto" (the widest this CPU runs), "avx512", "avx2", "generic", or "off" (the float
// loops then do one GEMM per head and step, as the double ones always do).
void set_options(int64_t grain_elements, bool use_blas, bool use_pack,
                 const std::string& tiles) {
  TORCH_CHECK(grain_elements >= 1, "rnnkit fused_cpp: grain_elements must be >= 1");
  const rnnkit_cpu::TileKernels* k = nullptr;
  if (tiles != "off") {
    k = rnnkit_cpu::find_tile_kernels(tiles.c_str());
    TORCH_CHECK(k != nullptr, "rnnkit fused_cpp: tiles=", tiles,
                " is not available on this CPU or build (choose auto, avx512, avx2, generic "
                "or off)");
  }
  g_grain_elements.store(grain_elements);
  g_use_blas.store(use_blas);
  g_use_pack.store(use_pack);
  g_tiles.store(k);
}

}  // namespace

// The tensor ops are defined by schema and implemented for CPU only, so that other dispatch
// keys (the fake tensors of torch.compile and torch.export) reach the fake kernels registered
// in Python (fused_cpp/_fake.py) instead of this code. None of them returns a view of another
// output or of an input (custom ops must not alias): the Python side makes those views.
TORCH_LIBRARY(rnnkit_fused_cpp, m) {
  m.def(
      "lstm_forward(Tensor px, Tensor W, Tensor? mask, Tensor h0, Tensor c0, float h_init, "
      "float c_init, bool save) -> Tensor[]");
  m.def(
      "lstm_backward(Tensor W, Tensor acts, Tensor cs, Tensor tcs, Tensor? mask, Tensor d_hs, "
      "Tensor d_c) -> Tensor[]");
  m.def(
      "gru_forward(Tensor px, Tensor W, Tensor? bhn, Tensor? mask, Tensor h0, float h_init, "
      "bool save) -> Tensor[]");
  m.def(
      "gru_backward(Tensor W, Tensor acts, Tensor qs, Tensor hp, Tensor? mask, Tensor d_hs) "
      "-> Tensor[]");
  m.def(
      "elman_forward(Tensor px, Tensor W, Tensor? mask, Tensor h0, float h_init, bool relu) "
      "-> Tensor[]");
  m.def("elman_backward(Tensor W, Tensor hs, Tensor? mask, Tensor d_hs, bool relu) -> Tensor[]");
  m.def(
      "slstm_forward(Tensor px, Tensor W, Tensor? mask, Tensor h0, Tensor c0, Tensor n0, "
      "Tensor m0, float[] inits, bool save) -> Tensor[]");
  m.def(
      "slstm_backward(Tensor W, Tensor hs, Tensor cn, Tensor ms, Tensor gates, Tensor ex, "
      "Tensor cnp, Tensor? mask, Tensor d_hs, Tensor d_c, Tensor d_n, Tensor d_m) -> Tensor[]");
  m.def("tile_product(str isa, Tensor w, Tensor a) -> Tensor");
  m.def("info() -> str", &info);
  m.def("team_loops_run() -> int", &team_loops_run);
  m.def("set_phase_timing(bool on) -> ()", &rnnkit_cpu::set_phase_timing);
  m.def("phase_times(bool reset) -> float[]", &rnnkit_cpu::phase_times);
  m.def("tile_isas() -> str[]", &tile_isas);
  // no tensor argument to dispatch on: one kernel for every key (not called while tracing)
  m.def("pooled_empty(int[] size, ScalarType dtype) -> Tensor", &pooled_empty_op);
  m.def("pool_info() -> int[]", &pool_info);
  m.def("pool_release() -> ()", &rnnkit_cpu::pool_release);
  m.def("pool_set_limit(int bytes) -> ()", &rnnkit_cpu::pool_set_limit);
  m.def(
      "set_options(int grain_elements, bool use_blas, bool use_pack, str tiles=\"auto\") -> ()",
      &set_options);
}

TORCH_LIBRARY_IMPL(rnnkit_fused_cpp, CPU, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
  m.impl("elman_forward", &elman_forward);
  m.impl("elman_backward", &elman_backward);
  m.impl("slstm_forward", &slstm_forward);
  m.impl("slstm_backward", &slstm_backward);
  m.impl("tile_product", &tile_product);
}
