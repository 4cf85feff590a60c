// A small cache of large CPU buffers for the outputs and saved tensors of the native loops.
//
// Why: a training step allocates the same few large tensors every time (the projection, the
// saved activations, the gate gradients: tens of MiB each). glibc serves blocks of 32 MiB and
// more with fresh mmap'ed pages, so every step pays a page fault and a page clear per 4 KiB
// (measured: about a fifth of a multi-head LSTM training step on the development VM). Blocks
// freed here are kept, up to a byte limit, and handed out again for the same size.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace rnnkit_cpu {

// An uninitialised CPU tensor like at::empty(sizes, options), from the cache when it holds a
// block of the same size. Below 1 MiB (or with a zero limit) it is at::empty itself. With
// torch.utils.deterministic.fill_uninitialized_memory (and deterministic algorithms) on, the
// buffer is filled with NaN, as at::empty does.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes cached (free) and the limit; frees every cached block; sets the limit (0: no cache).
int64_t pool_cached_bytes();
int64_t pool_limit_bytes();
void pool_release();
void pool_set_limit(int64_t bytes);

}  // namespace rnnkit_cpu
