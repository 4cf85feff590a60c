// Native CPU scans for the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t.
//
// Two ops, registered as torch.ops.rnnkit_scan_cpp.* (no pybind11; the library is loaded with
// torch.ops.load_library by rnnkit.kernels.native):
//
//   scan(a, b, h0, out, reverse)
//       out_t = a_t * out_{t-1} + b_t for t = 0 .. T-1 (out_{-1} = h0), or, when reverse,
//       out_t = a_t * out_{t+1} + b_t for t = T-1 .. 0 (out_T = h0).
//   scan_backward(a, h, h0, dh, dh_last, db, da, dh0, need_a)
//       the adjoint of the forward scan in ONE reverse pass, with g_t = dL/db_t:
//         g_{T-1} = dh_{T-1} + dh_last,   g_t = dh_t + conj(a_{t+1}) g_{t+1},
//         da_t = g_t conj(h_{t-1})  (h_{-1} = h0),   dh0 = conj(a_0) g_0
//       (torch's conjugate Wirtinger convention; conj is the identity for real dtypes).
//
// All (B, T, D) operands are batch-first with any strides (a and b may be expanded views with
// stride 0), so the Python side never copies its inputs. Work is split over lanes: units of
// (batch row, block of features), run in parallel with at::parallel_for. Each unit walks time
// once; per step it reads one row of every input and writes one row of every output, and the
// row it continues from is the one it wrote a step earlier (still in L1). With unit feature
// strides the rows are contiguous and the inner loop over features is plain vectorisable
// arithmetic; consecutive steps of one batch row are adjacent in memory when the block is the
// whole width, so each unit is a sequential stream the hardware prefetcher follows.
//
// Why not a chunked (multi-pass) scan here: the chunked scan reads a and b twice to expose
// parallelism across time. On CPU there are few threads and usually many lanes, so lane
// parallelism alone fills them and one pass moves the fewest bytes (3 arrays forward, 5
// backward: the memory floor). Time is never split: with fewer lane groups than threads
// (B * D tiny, e.g. B=1, D=16) one thread walks the sequence, which is then bound by memory
// bandwidth, and a split would cost a second read of a and b.
//
// SIMD: no -march flag is used (the cached library must run on any x86-64 CPU); the float
// loops are compiled twice with GCC's target_clones (x86-64-v3: AVX2 + FMA, and the SSE2
// baseline), and the loader picks one when the library loads.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNNKIT_SCAN_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define RNNKIT_SCAN_CLONES
#endif

#if defined(__GNUC__)
#define RNNKIT_SCAN_RESTRICT __restrict__
#define RNNKIT_SCAN_INLINE inline __attribute__((always_inline))
#else
#define RNNKIT_SCAN_RESTRICT
#define RNNKIT_SCAN_INLINE inline
#endif

namespace rnnkit_scan {

using c64 = c10::complex<float>;
using c128 = c10::complex<double>;

template <typename T>
RNNKIT_SCAN_INLINE T conj_(T x) {
  return x;
}
template <typename R>
RNNKIT_SCAN_INLINE c10::complex<R> conj_(c10::complex<R> x) {
  return c10::complex<R>(x.real(), -x.imag());
}

// One (batch row, feature block) lane group of a (B, T, D) operand: the pointer to its row at
// the first step in scan order, the step between rows in scan order (negative when the scan
// runs backwards in time) and the stride between features.
template <typename T>
struct Lanes {
  T* p;
  int64_t step;
  int64_t sd;
};

// ---- forward scan over one lane group ---------------------------------------------------
// Unit: every feature stride is 1, so rows are contiguous and the compiler vectorises the row
// loop; otherwise the same arithmetic with strides. h0 is one contiguous row (B * D is small;
// the Python side makes it contiguous).

template <typename T, bool Unit>
RNNKIT_SCAN_INLINE void scan_rows(Lanes<const T> a, Lanes<const T> b, const T* h0, Lanes<T> out,
                                  int64_t steps, int64_t width) {
  const int64_t asd = Unit ? 1 : a.sd, bsd = Unit ? 1 : b.sd, osd = Unit ? 1 : out.sd;
  for (int64_t t = 0; t < steps; ++t) {
    const T* RNNKIT_SCAN_RESTRICT pa = a.p + t * a.step;
    const T* RNNKIT_SCAN_RESTRICT pb = b.p + t * b.step;
    // the row to continue from: h0, or the row written one step earlier (a different row of
    // `out`, rows never overlap, and still in L1)
    const T* RNNKIT_SCAN_RESTRICT prev = t ? out.p + (t - 1) * out.step : h0;
    const int64_t psd = t ? osd : 1;
    T* RNNKIT_SCAN_RESTRICT po = out.p + t * out.step;
    for (int64_t d = 0; d < width; ++d) {
      po[d * osd] = pa[d * asd] * prev[d * psd] + pb[d * bsd];
    }
  }
}

// ---- adjoint scan over one lane group (scan order = reverse time) ------------------------
// The pointers are at time T-1 and the steps negative: row k of a lane group is time T-1-k.
// One loop computes g (the recurrence, one dependency chain through the row written a step
// earlier) and, when NeedA, da from the same g row before it leaves the registers, so every
// array is touched once. h0 and dh_last are contiguous rows; dh0 a contiguous output row.

template <typename T, bool Unit, bool NeedA>
RNNKIT_SCAN_INLINE void backward_rows(Lanes<const T> a, Lanes<const T> h, const T* h0,
                                      Lanes<const T> dh, const T* dh_last, Lanes<T> db,
                                      Lanes<T> da, T* dh0, int64_t steps, int64_t width) {
  if (steps <= 0) return;
  const int64_t asd = Unit ? 1 : a.sd, hsd = Unit ? 1 : h.sd, dhsd = Unit ? 1 : dh.sd;
  const int64_t gsd = Unit ? 1 : db.sd, dasd = Unit ? 1 : da.sd;
  for (int64_t k = 0; k < steps; ++k) {
    const T* RNNKIT_SCAN_RESTRICT pdh = dh.p + k * dh.step;
    T* RNNKIT_SCAN_RESTRICT pg = db.p + k * db.step;
    // h_{t-1} for da_t: the next row in scan order, or h0 at t = 0
    const bool first_in_time = k + 1 == steps;
    const T* RNNKIT_SCAN_RESTRICT ph = first_in_time ? h0 : h.p + (k + 1) * h.step;
    const int64_t phsd = first_in_time ? 1 : hsd;
    T* RNNKIT_SCAN_RESTRICT pda = da.p + k * da.step;
    if (k == 0) {  // time T-1: the seed is dh_{T-1} + dh_last
      for (int64_t d = 0; d < width; ++d) {
        const T g = pdh[d * dhsd] + dh_last[d];
        pg[d * gsd] = g;
        if (NeedA) pda[d * dasd] = g * conj_(ph[d * phsd]);
      }
    } else {  // time t = T-1-k: g_t = dh_t + conj(a_{t+1}) g_{t+1}, a_{t+1} is row k-1 of a
      const T* RNNKIT_SCAN_RESTRICT pa = a.p + (k - 1) * a.step;
      const T* RNNKIT_SCAN_RESTRICT gnext = db.p + (k - 1) * db.step;
      for (int64_t d = 0; d < width; ++d) {
        const T g = pdh[d * dhsd] + conj_(pa[d * asd]) * gnext[d * gsd];
        pg[d * gsd] = g;
        if (NeedA) pda[d * dasd] = g * conj_(ph[d * phsd]);
      }
    }
  }
  // dh0 = conj(a_0) g_0: a_0 and g_0 are the last rows of the lane group
  const T* pa = a.p + (steps - 1) * a.step;
  const T* pg = db.p + (steps - 1) * db.step;
  for (int64_t d = 0; d < width; ++d) dh0[d] = conj_(pa[d * asd]) * pg[d * gsd];
}

}  // namespace rnnkit_scan

// ---- the float kernels, compiled for two instruction sets ------------------------------------
// target_clones wants plain (non-template) functions with external linkage: one overload per
// dtype, each instantiating the Unit / strided (and NeedA) variants of the templates.
namespace rnnkit_scan {

#define RNNKIT_SCAN_DEFINE(T)                                                                  \
  RNNKIT_SCAN_CLONES void scan_group(Lanes<const T> a, Lanes<const T> b, const T* h0,          \
                                     Lanes<T> out, int64_t steps, int64_t width, bool unit) {  \
    if (unit) {                                                                                \
      scan_rows<T, true>(a, b, h0, out, steps, width);                                         \
    } else {                                                                                   \
      scan_rows<T, false>(a, b, h0, out, steps, width);                                        \
    }                                                                                          \
  }                                                                                            \
  RNNKIT_SCAN_CLONES void backward_group(Lanes<const T> a, Lanes<const T> h, const T* h0,      \
                                         Lanes<const T> dh, const T* dh_last, Lanes<T> db,     \
                                         Lanes<T> da, T* dh0, int64_t steps, int64_t width,    \
                                         bool unit, bool need_a) {                             \
    if (unit && need_a) {                                                                      \
      backward_rows<T, true, true>(a, h, h0, dh, dh_last, db, da, dh0, steps, width);          \
    } else if (unit) {                                                                         \
      backward_rows<T, true, false>(a, h, h0, dh, dh_last, db, da, dh0, steps, width);         \
    } else if (need_a) {                                                                       \
      backward_rows<T, false, true>(a, h, h0, dh, dh_last, db, da, dh0, steps, width);         \
    } else {                                                                                   \
      backward_rows<T, false, false>(a, h, h0, dh, dh_last, db, da, dh0, steps, width);        \
    }                                                                                          \
  }

RNNKIT_SCAN_DEFINE(float)
RNNKIT_SCAN_DEFINE(double)
RNNKIT_SCAN_DEFINE(c64)
RNNKIT_SCAN_DEFINE(c128)
#undef RNNKIT_SCAN_DEFINE

}  // namespace rnnkit_scan

namespace {

using rnnkit_scan::c128;
using rnnkit_scan::c64;
using rnnkit_scan::Lanes;

// ---- torch glue ----------------------------------------------------------------------------

// How the (batch row, feature block) lane groups are cut and handed to threads.
struct Plan {
  int64_t block;  // features per group (the last group of a row may be narrower)
  int64_t blocks;  // groups per batch row
  int64_t units;  // batch * blocks
  int64_t grain;  // at::parallel_for grain: units per task (all of them: run inline)
};

Plan make_plan(int64_t batch, int64_t time, int64_t width, int64_t itemsize) {
  // Whole rows stream best (consecutive steps of a batch row are adjacent); split the features
  // only until every thread has two groups, and never below one 64-byte cache line.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t line = std::max<int64_t>(1, 64 / itemsize);
  int64_t block = std::max<int64_t>(width, 1);
  auto groups = [&](int64_t blk) { return batch * ((width + blk - 1) / blk); };
  while (groups(block) < 2 * threads && block > line) {
    block = std::max(line, ((block + 1) / 2 + line - 1) / line * line);
  }
  Plan plan;
  plan.block = block;
  plan.blocks = std::max<int64_t>(1, (width + block - 1) / block);
  plan.units = batch * plan.blocks;
  // Below ~64 KiB of elements a thread hand-off costs more than the work.
  const bool small = batch * time * width * itemsize < (int64_t{1} << 16);
  plan.grain = small ? std::max<int64_t>(1, plan.units) : 1;
  return plan;
}

template <typename T>
Lanes<const T> lanes_in(const at::Tensor& x, int64_t bi, int64_t d0, bool reverse) {
  const int64_t st = x.stride(1);
  const T* base = x.data_ptr<T>() + bi * x.stride(0) + d0 * x.stride(2);
  if (reverse) base += (x.size(1) - 1) * st;
  return {base, reverse ? -st : st, x.stride(2)};
}

template <typename T>
Lanes<T> lanes_out(const at::Tensor& x, int64_t bi, int64_t d0, bool reverse) {
  const int64_t st = x.stride(1);
  T* base = x.data_ptr<T>() + bi * x.stride(0) + d0 * x.stride(2);
  if (reverse) base += (x.size(1) - 1) * st;
  return {base, reverse ? -st : st, x.stride(2)};
}

bool unit_features(std::initializer_list<const at::Tensor*> xs) {
  for (const at::Tensor* x : xs) {
    if (x->size(2) > 1 && x->stride(2) != 1) return false;
  }
  return true;
}

void check_dtype(const at::Tensor& ref) {
  const auto st = ref.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kComplexFloat ||
                  st == at::kComplexDouble,
              "rnnkit_scan_cpp: float32, float64, complex64 or complex128 expected, got ",
              ref.scalar_type());
}

void check_same(const at::Tensor& ref, const at::Tensor& x, const char* name, int64_t dims) {
  TORCH_CHECK(x.device().is_cpu(), "rnnkit_scan_cpp: ", name, " must be on the CPU");
  TORCH_CHECK(x.scalar_type() == ref.scalar_type(), "rnnkit_scan_cpp: ", name, " has dtype ",
              x.scalar_type(), ", expected ", ref.scalar_type());
  TORCH_CHECK(x.dim() == dims, "rnnkit_scan_cpp: ", name, " must have ", dims,
              " dimensions, got ", x.dim());
  if (dims == 3) {
    TORCH_CHECK(x.sizes() == ref.sizes(), "rnnkit_scan_cpp: ", name, " has shape ", x.sizes(),
                ", expected ", ref.sizes());
  } else {
    TORCH_CHECK(x.size(0) == ref.size(0) && x.size(1) == ref.size(2), "rnnkit_scan_cpp: ", name,
                " must be (B, D) = (", ref.size(0), ", ", ref.size(2), "), got ", x.sizes());
    TORCH_CHECK(x.is_contiguous(), "rnnkit_scan_cpp: ", name, " must be contiguous");
  }
}

void check_writable(const at::Tensor& x, const char* name) {
  // an expanded output would have several lanes write one element
  for (int64_t i = 0; i < x.dim(); ++i) {
    TORCH_CHECK(x.size(i) <= 1 || x.stride(i) != 0, "rnnkit_scan_cpp: ", name,
                " must not be an expanded view");
  }
}

template <typename T>
void scan_typed(const at::Tensor& a, const at::Tensor& b, const at::Tensor& h0,
                const at::Tensor& out, bool reverse) {
  const int64_t batch = out.size(0), time = out.size(1), width = out.size(2);
  const Plan plan = make_plan(batch, time, width, sizeof(T));
  const bool unit = unit_features({&a, &b, &out});
  const T* h0p = h0.data_ptr<T>();
  at::parallel_for(0, plan.units, plan.grain, [&](int64_t lo, int64_t hi) {
    for (int64_t u = lo; u < hi; ++u) {
      const int64_t bi = u / plan.blocks, d0 = (u % plan.blocks) * plan.block;
      const int64_t w = std::min(plan.block, width - d0);
      rnnkit_scan::scan_group(lanes_in<T>(a, bi, d0, reverse), lanes_in<T>(b, bi, d0, reverse),
                              h0p + bi * width + d0, lanes_out<T>(out, bi, d0, reverse), time, w,
                              unit);
    }
  });
}

template <typename T>
void backward_typed(const at::Tensor& a, const at::Tensor& h, const at::Tensor& h0,
                    const at::Tensor& dh, const at::Tensor& dh_last, const at::Tensor& db,
                    const at::Tensor& da, const at::Tensor& dh0, bool need_a) {
  const int64_t batch = db.size(0), time = db.size(1), width = db.size(2);
  const Plan plan = make_plan(batch, time, width, sizeof(T));
  const bool unit = need_a ? unit_features({&a, &h, &dh, &db, &da}) : unit_features({&a, &dh, &db});
  const T* h0p = h0.data_ptr<T>();
  const T* dhlp = dh_last.data_ptr<T>();
  T* dh0p = dh0.data_ptr<T>();
  // without need_a, `da` and `h` are not read or written: any lane group of db stands in
  const at::Tensor& da_ = need_a ? da : db;
  const at::Tensor& h_ = need_a ? h : a;
  at::parallel_for(0, plan.units, plan.grain, [&](int64_t lo, int64_t hi) {
    for (int64_t u = lo; u < hi; ++u) {
      const int64_t bi = u / plan.blocks, d0 = (u % plan.blocks) * plan.block;
      const int64_t w = std::min(plan.block, width - d0);
      const int64_t row = bi * width + d0;
      rnnkit_scan::backward_group(
          lanes_in<T>(a, bi, d0, true), lanes_in<T>(h_, bi, d0, true), h0p + row,
          lanes_in<T>(dh, bi, d0, true), dhlp + row, lanes_out<T>(db, bi, d0, true),
          lanes_out<T>(da_, bi, d0, true), dh0p + row, time, w, unit, need_a);
    }
  });
}

// scan(a, b, h0, out, reverse): see the top of the file. a, b, out: (B, T, D), any strides
// (out not expanded); h0: (B, D) contiguous.
void scan_op(const at::Tensor& a, const at::Tensor& b, const at::Tensor& h0, const at::Tensor& out,
             bool reverse) {
  check_dtype(out);
  TORCH_CHECK(out.dim() == 3, "rnnkit_scan_cpp: out must be (B, T, D), got ", out.sizes());
  check_same(out, out, "out", 3);
  check_same(out, a, "a", 3);
  check_same(out, b, "b", 3);
  check_same(out, h0, "h0", 2);
  check_writable(out, "out");
  if (out.numel() == 0) return;
  switch (out.scalar_type()) {
    case at::kFloat: return scan_typed<float>(a, b, h0, out, reverse);
    case at::kDouble: return scan_typed<double>(a, b, h0, out, reverse);
    case at::kComplexFloat: return scan_typed<c64>(a, b, h0, out, reverse);
    default: return scan_typed<c128>(a, b, h0, out, reverse);
  }
}

// scan_backward(a, h, h0, dh, dh_last, db, da, dh0, need_a): see the top of the file.
// a, h, dh, db, da: (B, T, D) (da ignored unless need_a); h0, dh_last, dh0: (B, D) contiguous.
void scan_backward_op(const at::Tensor& a, const at::Tensor& h, const at::Tensor& h0,
                      const at::Tensor& dh, const at::Tensor& dh_last, const at::Tensor& db,
                      const at::Tensor& da, const at::Tensor& dh0, bool need_a) {
  check_dtype(db);
  TORCH_CHECK(db.dim() == 3, "rnnkit_scan_cpp: db must be (B, T, D), got ", db.sizes());
  check_same(db, a, "a", 3);
  check_same(db, dh, "dh", 3);
  check_same(db, h0, "h0", 2);
  check_same(db, dh_last, "dh_last", 2);
  check_same(db, dh0, "dh0", 2);
  check_writable(db, "db");
  if (need_a) {
    check_same(db, h, "h", 3);
    check_same(db, da, "da", 3);
    check_writable(da, "da");
  }
  if (db.numel() == 0) return;
  switch (db.scalar_type()) {
    case at::kFloat: return backward_typed<float>(a, h, h0, dh, dh_last, db, da, dh0, need_a);
    case at::kDouble: return backward_typed<double>(a, h, h0, dh, dh_last, db, da, dh0, need_a);
    case at::kComplexFloat:
      return backward_typed<c64>(a, h, h0, dh, dh_last, db, da, dh0, need_a);
    default: return backward_typed<c128>(a, h, h0, dh, dh_last, db, da, dh0, need_a);
  }
}

// Which instruction set the loader picked for the cloned kernels (for reports and benches).
std::string simd_variant() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("x86-64-v3") ? "x86-64-v3 (AVX2, FMA)" : "x86-64 baseline";
#else
  return "compiler default";
#endif
}

// Meta (and so FakeTensor, i.e. torch.compile tracing) kernels: the ops only write into
// buffers the caller allocated, so there is nothing to compute about shapes.
void scan_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool) {}
void scan_backward_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        bool) {}

}  // namespace

// The schemas, then the kernels per dispatch key (a catch-all kernel would also run on the fake
// tensors of torch.compile, which have no data).
TORCH_LIBRARY(rnnkit_scan_cpp, m) {
  m.def("scan(Tensor a, Tensor b, Tensor h0, Tensor(a!) out, bool reverse) -> ()");
  m.def(
      "scan_backward(Tensor a, Tensor h, Tensor h0, Tensor dh, Tensor dh_last, Tensor(a!) db, "
      "Tensor(b!) da, Tensor(c!) dh0, bool need_a) -> ()");
  m.def("simd_variant() -> str", &simd_variant);
}

TORCH_LIBRARY_IMPL(rnnkit_scan_cpp, CPU, m) {
  m.impl("scan", &scan_op);
  m.impl("scan_backward", &scan_backward_op);
}

TORCH_LIBRARY_IMPL(rnnkit_scan_cpp, Meta, m) {
  m.impl("scan", &scan_meta);
  m.impl("scan_backward", &scan_backward_meta);
}
