// torch glue of the persistent CUDA loops: argument checks, output allocation, TORCH_LIBRARY.
//
// Every op allocates its outputs and returns them as a list (no input is written, no output is
// a view of another); the Python adapters (rnnkit/kernels/gated/cuda/_loops.py) give them the
// signatures of the `fused` loops. All tensors are float32 CUDA tensors in the layouts of
// gated_cuda.h (the mask bool, the lengths int32); the caller makes the current device that of
// the tensors and checks the lengths' values (1 <= lengths <= T).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "gated_cuda.h"

namespace rnnkit_cuda {

cudaStream_t current_stream(int device);  // gated_cuda_stream.cpp

namespace {

#ifdef RNNKIT_HOST_EMULATION
// The CPU emulation of the kernels (packages/kernels/tests/csrc/gated_cuda_emulated.cpp) runs
// this glue on CPU tensors.
constexpr bool kHostEmulation = true;
#else
constexpr bool kHostEmulation = false;
#endif

const float* fptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<float>() : nullptr;
}

void check_float(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(kHostEmulation || t.is_cuda(), name, " must be a CUDA tensor");
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
  TORCH_CHECK((kHostEmulation || mask->is_cuda()) && mask->device() == like.device(),
              "mask must be on ",
              like.device());
  TORCH_CHECK(mask->scalar_type() == at::kBool && mask->is_contiguous(),
              "mask must be a contiguous bool tensor");
  check_shape(*mask, "mask", {T, B});
  return mask->data_ptr<bool>();
}

const int* lengths_ptr(const c10::optional<at::Tensor>& lengths, int64_t B,
                       const at::Tensor& like) {
  if (!lengths.has_value() || !lengths->defined()) return nullptr;
  TORCH_CHECK((kHostEmulation || lengths->is_cuda()) && lengths->device() == like.device(),
              "lengths must be on ", like.device());
  TORCH_CHECK(lengths->scalar_type() == at::kInt && lengths->is_contiguous(),
              "lengths must be a contiguous int32 tensor");
  check_shape(*lengths, "lengths", {B});
  return lengths->data_ptr<int>();
}

//! The cut (see Tiling in gated_cuda.h): resident (k_chunk 0) needs one block per item, streamed
//! at most one per item.
Tiling tiling_of(int64_t units, int64_t batch_tile, int64_t k_chunk, int64_t blocks, int64_t mma,
                 int64_t stage, int64_t exchange, int64_t N, int64_t D, int64_t G, bool backward) {
  TORCH_CHECK(units >= 1 && units <= D, "units per block must be in [1, ", D, "], got ", units);
  TORCH_CHECK(k_chunk >= 0, "k_chunk must be >= 0, got ", k_chunk);
  // a resident tile's restarting rows are one 32-bit word; a streamed tile keeps words of them
  // in shared memory (its bytes count them)
  if (k_chunk == 0) {
    TORCH_CHECK(batch_tile >= 1 && batch_tile <= kMaxBatchTile, "batch_tile must be in [1, ",
                kMaxBatchTile, "] for a resident cut, got ", batch_tile);
  } else {
    TORCH_CHECK(batch_tile >= 1 && batch_tile <= std::numeric_limits<int>::max(),
                "batch_tile must be at least 1, got ", batch_tile);
  }
  TORCH_CHECK(mma >= FMA && mma <= MMA_FP16,
              "mma must be 0 (float32 FMAs), 1 (TF32), 2 (bfloat16) or 3 (float16), got ", mma);
  if (mma != FMA) {  // the WMMA tiles' shapes and alignment (gated_cuda.h, Tiling)
    const int64_t columns = backward ? units : G * units, k = mma_k(static_cast<int>(mma));
    TORCH_CHECK(columns % 16 == 0 && D % k == 0 && k_chunk % k == 0, "tensor cores need the ",
                backward ? "backward's units" : "forward's gates x units",
                " divisible by 16 and the head size and k_chunk by ", k, ", got ", columns,
                ", head size ", D, ", k_chunk ", k_chunk);
  }
  if (stage != 0) {  // the resident backward's dq in chunks (gated_cuda.h, Tiling)
    TORCH_CHECK(backward && k_chunk == 0 && stage % kStageStep == 0 && stage > 0 &&
                    stage < G * D,
                "stage is for the resident backward only: a multiple of ", kStageStep,
                " below G * D = ",
                G * D, ", got ", stage, " (k_chunk ", k_chunk, ")");
  }
  TORCH_CHECK(exchange == GRID || exchange == FLAGS,
              "exchange must be 0 (grid barrier) or 1 (per-block flags), got ", exchange);
  const int64_t items = N * ((D + units - 1) / units);
  if (k_chunk == 0) {
    TORCH_CHECK(blocks == items, "a resident cut needs one block per item (", items, "), got ",
                blocks);
  } else {
    TORCH_CHECK(blocks >= 1 && blocks <= items, "a streamed cut needs 1 to ", items,
                " blocks, got ", blocks);
  }
  return Tiling{static_cast<int>(units), static_cast<int>(batch_tile), static_cast<int>(k_chunk),
                static_cast<int>(blocks), static_cast<int>(mma), static_cast<int>(stage),
                static_cast<int>(exchange)};
}

//! The FLAGS exchange's step counters, one per block, zero (Exchange in gated_cuda.h); an
//! undefined tensor for the grid barrier.
at::Tensor step_flags(const Tiling& tiling, const at::Tensor& like) {
  if (tiling.exchange != FLAGS) return at::Tensor();
  return at::zeros({tiling.blocks}, like.options().dtype(at::kInt));
}

int* flags_ptr(const at::Tensor& flags) {
  return flags.defined() ? flags.data_ptr<int>() : nullptr;
}

//! With 16-bit operands, the two-slot buffer of operand copies (OperandCopies in
//! gated_cuda.h), `width` values per batch row of each head, in the operand's dtype; an
//! undefined tensor otherwise.
at::Tensor operand_copies(const Tiling& tiling, int64_t N, int64_t B, int64_t width,
                          const at::Tensor& like) {
  if (tiling.mma != MMA_BF16 && tiling.mma != MMA_FP16) return at::Tensor();
  const auto dtype = tiling.mma == MMA_BF16 ? at::kBFloat16 : at::kHalf;
  return at::empty({N, 2, B, width}, like.options().dtype(dtype));
}

void check_launch(const char* failure, const char* what) {
  TORCH_CHECK(failure == nullptr, "rnnkit cuda ", what, ": ", failure ? failure : "");
}

//! State fields besides h: LSTM c; sLSTM c, n, m.
int64_t extra_states(int64_t kind) { return kind == LSTM ? 1 : (kind == SLSTM ? 3 : 0); }

float* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// Outputs by kind (save: the per-step buffers; hp only with resets):
//   elman [hs, (save) hp]
//   lstm  [hs, c_last, (save) acts, cs, tcs, hp?]
//   gru   [hs, (save) acts, qs, hp?]
//   slstm [hs, cn, ms, (save) acts, ex, cnp?, hp?]   cn, ms: (N, slots, B, 2, D), (N, slots, B, D)
std::vector<at::Tensor> forward(int64_t kind, const at::Tensor& px, const at::Tensor& W,
                                const c10::optional<at::Tensor>& bhn,
                                const c10::optional<at::Tensor>& mask,
                                const c10::optional<at::Tensor>& lengths, const at::Tensor& h0,
                                const c10::optional<at::Tensor>& c0,
                                const c10::optional<at::Tensor>& n0,
                                const c10::optional<at::Tensor>& m0, at::ArrayRef<double> inits,
                                bool save, int64_t units, int64_t batch_tile, int64_t k_chunk,
                                int64_t blocks, int64_t mma, int64_t exchange) {
  TORCH_CHECK(kind >= ELMAN_TANH && kind <= SLSTM, "unknown cell kind ", kind);
  const int G = gates_of(static_cast<int>(kind));
  TORCH_CHECK(px.dim() == 4, "px must be (N, T, B, G*D)");
  check_float(px, "px", px);
  const int64_t N = px.size(0), T = px.size(1), B = px.size(2), D = px.size(3) / G;
  TORCH_CHECK(px.size(3) == G * D, "px's last dimension must be a multiple of ", G);
  check_float(W, "W", px);
  check_shape(W, "W", {N, D, G * D});
  check_float(h0, "h0", px);
  check_shape(h0, "h0", {N, B, D});
  const bool lstm = kind == LSTM, gru = kind == GRU, slstm = kind == SLSTM;
  const int64_t K = extra_states(kind);
  TORCH_CHECK(static_cast<int64_t>(inits.size()) == 1 + K, "inits must hold ", 1 + K,
              " values (one per state field), got ", inits.size());
  auto state = [&](const c10::optional<at::Tensor>& t, const char* name) {
    TORCH_CHECK(t.has_value() && t->defined(), "this cell needs ", name);
    check_float(*t, name, px);
    check_shape(*t, name, {N, B, D});
    return *t;
  };
  if (gru && bhn.has_value() && bhn->defined()) {
    check_float(*bhn, "bhn", px);
    TORCH_CHECK(bhn->numel() == N * D, "bhn must have N * D elements");
  }
  const bool* m = mask_ptr(mask, T, B, px);
  const int* lens = lengths_ptr(lengths, B, px);
  const Tiling tiling =
      tiling_of(units, batch_tile, k_chunk, blocks, mma, 0, exchange, N, D, G, false);
  const auto opts = px.options();
  const int64_t slots = save ? T + 1 : 2;

  at::Tensor hs = at::empty({N, T + 1, B, D}, opts);
  hs.select(1, 0).copy_(h0);
  at::Tensor cs, ms, acts, qs, tcs, ex, cnp, hp;
  if (lstm) {
    cs = at::empty({N, slots, B, D}, opts);
    cs.select(1, 0).copy_(state(c0, "c0"));
  }
  if (slstm) {
    cs = at::empty({N, slots, B, 2, D}, opts);
    cs.select(1, 0).select(2, 0).copy_(state(c0, "c0"));
    cs.select(1, 0).select(2, 1).copy_(state(n0, "n0"));
    ms = at::empty({N, slots, B, D}, opts);
    ms.select(1, 0).copy_(state(m0, "m0"));
  }
  if (save && !(kind == ELMAN_TANH || kind == ELMAN_RELU)) acts = at::empty({N, T, B, G * D}, opts);
  if (save && gru) qs = at::empty({N, T, B, G * D}, opts);
  if (save && lstm) tcs = at::empty({N, T, B, D}, opts);
  if (save && slstm) ex = at::empty({N, T, B, 2, D}, opts);
  if (save && slstm && m != nullptr) cnp = at::empty({N, T, B, 2, D}, opts);
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
  a.lengths = lens;
  a.h_init = static_cast<float>(inits[0]);
  a.c_init = K >= 1 ? static_cast<float>(inits[1]) : 0.0f;
  a.n_init = K >= 3 ? static_cast<float>(inits[2]) : 0.0f;
  a.m_init = K >= 3 ? static_cast<float>(inits[3]) : 0.0f;
  a.save = save ? 1 : 0;
  a.hs = hs.data_ptr<float>();
  a.cs = ptr_or_null(cs);
  a.ms = ptr_or_null(ms);
  a.acts = ptr_or_null(acts);
  a.qs = ptr_or_null(qs);
  a.tcs = ptr_or_null(tcs);
  a.ex = ptr_or_null(ex);
  a.cnp = ptr_or_null(cnp);
  a.hp = ptr_or_null(hp);
  const at::Tensor flags = step_flags(tiling, px);
  a.flags = flags_ptr(flags);
  const at::Tensor h16 = operand_copies(tiling, N, B, D, px);
  if (h16.defined()) {
    h16.select(1, 0).copy_(h0);  // rounded to nearest, as the kernels round
    a.h16 = h16.data_ptr();
  }
  check_launch(launch_forward(a, tiling, current_stream(px.get_device())), "forward");

  std::vector<at::Tensor> out{hs};
  if (lstm) out.push_back(cs.select(1, save ? T : T % 2).clone());
  if (slstm) {
    out.push_back(cs);
    out.push_back(ms);
  }
  if (save) {
    if (lstm) {
      out.push_back(acts);
      out.push_back(cs);
      out.push_back(tcs);
    } else if (gru) {
      out.push_back(acts);
      out.push_back(qs);
    } else if (slstm) {
      out.push_back(acts);
      out.push_back(ex);
      if (cnp.defined()) out.push_back(cnp);
    }
    if (hp.defined()) out.push_back(hp);
  }
  return out;
}

// Outputs: [dq, dh0, (lstm, slstm) d_state0 (N, K, B, D), (gru) dpx].
std::vector<at::Tensor> backward(int64_t kind, const at::Tensor& W, const at::Tensor& hs,
                                 const c10::optional<at::Tensor>& acts,
                                 const c10::optional<at::Tensor>& cs,
                                 const c10::optional<at::Tensor>& tcs,
                                 const c10::optional<at::Tensor>& qs,
                                 const c10::optional<at::Tensor>& ms,
                                 const c10::optional<at::Tensor>& ex,
                                 const c10::optional<at::Tensor>& cnp,
                                 const c10::optional<at::Tensor>& hp,
                                 const c10::optional<at::Tensor>& mask,
                                 const c10::optional<at::Tensor>& lengths, const at::Tensor& d_hs,
                                 const c10::optional<at::Tensor>& d_state, int64_t units,
                                 int64_t batch_tile, int64_t k_chunk, int64_t blocks,
                                 int64_t mma, int64_t stage, int64_t exchange) {
  TORCH_CHECK(kind >= ELMAN_TANH && kind <= SLSTM, "unknown cell kind ", kind);
  const int G = gates_of(static_cast<int>(kind));
  TORCH_CHECK(hs.dim() == 4, "hs must be (N, T + 1, B, D)");
  check_float(hs, "hs", hs);
  const int64_t N = hs.size(0), T = hs.size(1) - 1, B = hs.size(2), D = hs.size(3);
  check_float(W, "W", hs);
  check_shape(W, "W", {N, D, G * D});
  check_float(d_hs, "d_hs", hs);
  check_shape(d_hs, "d_hs", {N, T + 1, B, D});
  const bool lstm = kind == LSTM, gru = kind == GRU, slstm = kind == SLSTM;
  const int64_t K = extra_states(kind);
  auto need = [&](const c10::optional<at::Tensor>& t, const char* name,
                  at::IntArrayRef shape) -> const float* {
    TORCH_CHECK(t.has_value() && t->defined(), "this cell's backward needs ", name);
    check_float(*t, name, hs);
    check_shape(*t, name, shape);
    return t->data_ptr<float>();
  };
  const bool* m = mask_ptr(mask, T, B, hs);
  const int* lens = lengths_ptr(lengths, B, hs);
  const Tiling tiling =
      tiling_of(units, batch_tile, k_chunk, blocks, mma, stage, exchange, N, D, G, true);
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
  a.lengths = lens;
  a.d_hs = d_hs.data_ptr<float>();
  at::Tensor dq = at::empty({N, T, B, G * D}, opts);
  at::Tensor dh0 = at::empty({N, B, D}, opts);
  at::Tensor dpx, dstate, carry;
  if (K > 0) {
    TORCH_CHECK(d_state.has_value() && d_state->defined(), "this cell's backward needs d_state");
    check_float(*d_state, "d_state", hs);
    check_shape(*d_state, "d_state", {N, K, B, D});
    dstate = d_state->clone();
    a.dstate = dstate.data_ptr<float>();
  }
  if (lstm) {
    a.acts = need(acts, "acts", {N, T, B, G * D});
    a.cs = need(cs, "cs", {N, T + 1, B, D});
    a.tcs = need(tcs, "tcs", {N, T, B, D});
  }
  if (gru) {
    a.acts = need(acts, "acts", {N, T, B, G * D});
    a.qs = need(qs, "qs", {N, T, B, G * D});
    // Without resets the states entering each step are hs[:, :T] (read from hs).
    a.hp = m != nullptr ? need(hp, "hp", {N, T, B, D}) : nullptr;
    dpx = at::empty({N, T, B, G * D}, opts);
    a.dpx = dpx.data_ptr<float>();
  }
  if (slstm) {
    a.acts = need(acts, "acts", {N, T, B, G * D});
    a.cs = need(cs, "cs", {N, T + 1, B, 2, D});
    a.ms = need(ms, "ms", {N, T + 1, B, D});
    a.ex = need(ex, "ex", {N, T, B, 2, D});
    // Without resets the c, n entering each step are cs[:, :T] (read from cs).
    a.cnp = m != nullptr ? need(cnp, "cnp", {N, T, B, 2, D}) : nullptr;
  }
  if (gru || lens != nullptr) {
    carry = at::empty({N, B, D}, opts);
    a.carry = carry.data_ptr<float>();
  }
  a.dq = dq.data_ptr<float>();
  a.dh0 = dh0.data_ptr<float>();
  if (T > 0) {
    const at::Tensor flags = step_flags(tiling, hs);
    a.flags = flags_ptr(flags);
    const at::Tensor dq16 = operand_copies(tiling, N, B, G * D, hs);
    a.dq16 = dq16.defined() ? dq16.data_ptr() : nullptr;
    check_launch(launch_backward(a, tiling, current_stream(hs.get_device())), "backward");
  } else {
    dh0.copy_(d_hs.select(1, 0));
  }
  std::vector<at::Tensor> out{dq, dh0};
  if (K > 0) out.push_back(dstate);
  if (gru) out.push_back(dpx);
  return out;
}

//! The dynamic shared memory (bytes) of one block of the forward and of the backward: what the
//! launches ask for, so that the planner's arithmetic (_plan.py) can be checked against it.
std::vector<int64_t> smem_bytes(int64_t kind, int64_t D, int64_t units, int64_t batch_tile,
                                int64_t k_chunk, int64_t forward_mma, int64_t backward_mma,
                                int64_t stage) {
  TORCH_CHECK(kind >= ELMAN_TANH && kind <= SLSTM, "unknown cell kind ", kind);
  for (const int64_t mma : {forward_mma, backward_mma})
    TORCH_CHECK(mma >= FMA && mma <= MMA_FP16, "mma must be 0 to 3, got ", mma);
  const Tiling fwd{static_cast<int>(units), static_cast<int>(batch_tile),
                   static_cast<int>(k_chunk), 1, static_cast<int>(forward_mma)};
  Tiling bwd = fwd;
  bwd.mma = static_cast<int>(backward_mma);
  bwd.stage = static_cast<int>(stage);
  const int k = static_cast<int>(kind), d = static_cast<int>(D);
  return {static_cast<int64_t>(forward_smem_bytes(k, d, fwd)),
          static_cast<int64_t>(backward_smem_bytes(k, d, bwd))};
}

}  // namespace
}  // namespace rnnkit_cuda

TORCH_LIBRARY(rnnkit_gated_cuda, m) {
  m.def(
      "forward(int kind, Tensor px, Tensor W, Tensor? bhn, Tensor? mask, Tensor? lengths, "
      "Tensor h0, Tensor? c0, Tensor? n0, Tensor? m0, float[] inits, bool save, int units, "
      "int batch_tile, int k_chunk, int blocks, int mma=0, int exchange=0) -> Tensor[]");
  m.def(
      "backward(int kind, Tensor W, Tensor hs, Tensor? acts, Tensor? cs, Tensor? tcs, "
      "Tensor? qs, Tensor? ms, Tensor? ex, Tensor? cnp, Tensor? hp, Tensor? mask, "
      "Tensor? lengths, Tensor d_hs, Tensor? d_state, int units, int batch_tile, int k_chunk, "
      "int blocks, int mma=0, int stage=0, int exchange=0) -> Tensor[]");
  m.def(
      "smem_bytes(int kind, int D, int units, int batch_tile, int k_chunk, int forward_mma=0, "
      "int backward_mma=0, int stage=0) -> int[]",
        &rnnkit_cuda::smem_bytes);
}

#ifdef RNNKIT_HOST_EMULATION
TORCH_LIBRARY_IMPL(rnnkit_gated_cuda, CPU, m) {
#else
TORCH_LIBRARY_IMPL(rnnkit_gated_cuda, CUDA, m) {
#endif
  m.impl("forward", &rnnkit_cuda::forward);
  m.impl("backward", &rnnkit_cuda::backward);
}

