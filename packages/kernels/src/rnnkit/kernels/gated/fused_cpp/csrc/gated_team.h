// The thread team of the float time loops (gated_loops.h): who owns which hidden units, their
// packed weights, the register-tiled products of a step, the prefetches, the barrier, and the
// phase timers that say where a loop spends its time.
//
// The hidden units of every head are cut into blocks of `vb` (the tile width); each thread of
// a team owns a contiguous run of blocks for the whole loop, packs their weights once into
// its own panels (which then stay in its cache), and per step computes the products AND the
// pointwise pass of its units only. The state a step writes is read by every thread at the
// next step, so the team meets at one barrier per step. The pointwise pass is a cell's row
// kernels (gated_rows.h) called with a count of one block run instead of D, so the team loops
// store exactly what the per-head loops store; only the summation order of the products
// differs.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <utility>

#include "gated_cells.h"
#include "gated_tiles.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace rnnkit_cpu {

// ---- phase timers (off unless set_phase_timing(true)) -------------------------------------
// Each thread of a team adds the wall time between its marks to one phase; flush() adds the
// thread's sums to those of all loops since the last reset, per direction (forward, reverse),
// which phase_times() reports.
struct PhaseClock {
  bool on = false;
  std::chrono::steady_clock::time_point last;
  double sums[kPhases] = {};

  // Starts a loop on this thread: timing is on if set_phase_timing(true) was called.
  void start();
  // The time since the previous mark belongs to `phase`.
  void mark(int phase) {
    if (!on) return;
    const auto now = std::chrono::steady_clock::now();
    sums[phase] += std::chrono::duration<double>(now - last).count();
    last = now;
  }
  void flush(bool reverse);
};

// One clock per thread. Defined here (not extern) so that the loops, which mark a few times per
// step, see its constant initialiser and reach it without a thread-local init call.
inline thread_local PhaseClock t_clock;

// Counts a loop for team_loops_run().
void count_team_loop();

// ---- the team ------------------------------------------------------------------------------

// Multiply-adds of one step below which a thread is not worth waking (a barrier costs about
// a microsecond; this is a few microseconds of work).
constexpr int64_t kTeamWork = int64_t(1) << 16;

inline void team_barrier() {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

// Runs f(rank, size) on a team of up to `want` threads (OpenMP, torch's own pool); one thread
// when OpenMP is off or this is already inside a parallel region.
template <typename F>
void run_team(int64_t want, const F& f) {
#ifdef _OPENMP
  if (want > 1 && omp_in_parallel() == 0) {
#pragma omp parallel num_threads(static_cast<int>(want))
    f(static_cast<int64_t>(omp_get_thread_num()), static_cast<int64_t>(omp_get_num_threads()));
    return;
  }
#endif
  f(0, 1);
}

class Team {
 public:
  // G gates; the panels are packed by run_loop (forward or transposed).
  Team(const TileKernels& tk, const Dims& d, int64_t G, int64_t threads);

  // The blocks of thread `rank` among `team` threads: [first, last).
  std::pair<int64_t, int64_t> share(int64_t rank, int64_t team) const {
    return {total * rank / team, total * (rank + 1) / team};
  }

  // Panel of block `blk` (head blk / nb, units u = (blk % nb) vb ...): forward
  // p[(k G + g) vb + e] = W[n][k][g D + u + e]; transposed p[c vb + e] = W[n][u + e][c].
  void pack(int64_t blk, const float* W, bool transposed);

  float* panel(int64_t blk) { return panels.get() + blk * G * d.D * vb; }

  // Calls f(n, u, first, count) for runs of at most 4 consecutive blocks of one head among
  // [first, last): head n, units u .. u + count vb.
  template <typename F>
  void for_runs(int64_t first, int64_t last, const F& f) const {
    for (int64_t blk = first; blk < last;) {
      const int64_t n = blk / nb;
      const int64_t end = std::min({last, blk + 4, (n + 1) * nb});
      f(n, (blk % nb) * vb, blk, end - blk);
      blk = end;
    }
  }

  // Forward products of a run for batch rows [b0, b0 + rows): out_row(b) + u receives the G
  // gate blocks (gate stride D) of h_row(b) W; one output vector per (block, gate).
  template <typename HRow, typename ORow>
  void forward(int64_t blk, int64_t count, int64_t b0, int64_t rows, const HRow& h_row,
               const ORow& out_row) {
    const float* p[kMaxVectors];
    int64_t off[kMaxVectors];
    const float* a[kMaxRows];
    float* o[kMaxRows];
    int nv = 0;
    for (int64_t j = 0; j < count; ++j) {
      for (int64_t g = 0; g < G; ++g, ++nv) {
        p[nv] = panel(blk + j) + g * vb;
        off[nv] = g * d.D + j * vb;
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      a[r] = h_row(b0 + r);
      o[r] = out_row(b0 + r);
    }
    tk.product(nv, static_cast<int>(rows), p, G * vb, a, d.D, o, off);
  }

  // Backward products of a run: out_row(b)[0 .. count vb) = dq_row(b) (G D) @ W^T; one output
  // vector per block.
  template <typename ARow, typename ORow>
  void backward(int64_t blk, int64_t count, int64_t b0, int64_t rows, const ARow& dq_row,
                const ORow& out_row) {
    const float* p[kMaxVectors];
    int64_t off[kMaxVectors];
    const float* a[kMaxRows];
    float* o[kMaxRows];
    for (int64_t j = 0; j < count; ++j) {
      p[j] = panel(blk + j);
      off[j] = j * vb;
    }
    for (int64_t r = 0; r < rows; ++r) {
      a[r] = dq_row(b0 + r);
      o[r] = out_row(b0 + r);
    }
    tk.product(static_cast<int>(count), static_cast<int>(rows), p, vb, a, G * d.D, o, off);
  }

  // Prefetches what the thread's units read at the next step of the loop: for every run of
  // its blocks (head n, units u ..) and every batch row b, `pieces` spans of the run's units at
  // p + n head + b row + i D + u (i < pieces). The loops read each step's slice of their big
  // (N, T, B, width) buffers once, in short spans per row that the hardware prefetchers do not
  // pick up, and stalled on them (docs/kernels-fused.md has the timings). Prefetching what a
  // step writes (for ownership) made the forward loop slower: only reads are prefetched.
  void prefetch(int64_t first, int64_t last, int64_t pieces, const float* p, int64_t head,
                int64_t row) const {
    for_runs(first, last, [&](int64_t n, int64_t u, int64_t, int64_t count) {
      const int64_t bytes = count * vb * static_cast<int64_t>(sizeof(float));
      for (int64_t b = 0; b < d.B; ++b) {
        for (int64_t i = 0; i < pieces; ++i) {
          const char* q = reinterpret_cast<const char*>(p + n * head + b * row + i * d.D + u);
          // Every line of [q, q + bytes); q need not start a line.
          for (int64_t o = 0; o < bytes + 63; o += 64)
            __builtin_prefetch(q + std::min(o, bytes - 1), 0, 2);
        }
      }
    });
  }

  // The same for step t of an (N, steps, B, width) buffer.
  void prefetch_step(int64_t first, int64_t last, int64_t pieces, const float* buf,
                     int64_t steps, int64_t width, int64_t t) const {
    prefetch(first, last, pieces, buf + t * d.B * width, steps * d.B * width, width);
  }

  // Calls f(b0, rows) over the batch in slices of three register tiles of rows (one product
  // call each: the kernel reuses a chunk of the weights for all rows of a slice, and the
  // slice's gates are still in cache for the pointwise pass that follows).
  template <typename F>
  void for_row_tiles(const F& f) const {
    const int64_t slice = 3 * static_cast<int64_t>(tk.rows);
    for (int64_t b0 = 0; b0 < d.B; b0 += slice) f(b0, std::min(slice, d.B - b0));
  }

  // Row pointers of one slice (three tiles of at most 8 rows).
  static constexpr int64_t kMaxRows = 24;

  // One forward step over the thread's blocks [first, last): for each run of blocks and slice
  // of batch rows, the gate products of h_row(n, b) (the state entering the step) into
  // out_row(n, b) + u (gate stride D), then row(n, u, L, b) for the L units u.. of head n.
  template <typename HRow, typename ORow, typename Row>
  void forward_step(int64_t first, int64_t last, const HRow& h_row, const ORow& out_row,
                    const Row& row) {
    t_clock.mark(kPhasePrefetch);
    for_runs(first, last, [&](int64_t n, int64_t u, int64_t blk, int64_t count) {
      for_row_tiles([&](int64_t b0, int64_t rows) {
        forward(blk, count, b0, rows, [&](int64_t b) { return h_row(n, b); },
                [&](int64_t b) { return out_row(n, b) + u; });
        t_clock.mark(kPhaseProduct);
        for (int64_t b = b0; b < b0 + rows; ++b) row(n, u, count * vb, b);
        t_clock.mark(kPhasePointwise);
      });
    });
  }

  // One reverse step at step t: unless t is the last step, the rows (n, b) of `gh` (N, B, D)
  // receive dq_{t+1} W^T for the thread's units; then row(t, n, u, L, b). With t = -1 only
  // the products, of dq_0 (the gradient reaching h_0 through W).
  template <typename Row>
  void reverse_step(int64_t first, int64_t last, int64_t t, const float* dq, float* gh,
                    const Row& row) {
    const int64_t GD = G * d.D;
    t_clock.mark(kPhasePrefetch);
    for_runs(first, last, [&](int64_t n, int64_t u, int64_t blk, int64_t count) {
      for_row_tiles([&](int64_t b0, int64_t rows) {
        if (t < d.T - 1)
          backward(blk, count, b0, rows,
                   [&](int64_t b) { return dq + at(n, t + 1, b, d.T, d.B, GD); },
                   [&](int64_t b) { return gh + (n * d.B + b) * d.D + u; });
        t_clock.mark(kPhaseProduct);
        if (t >= 0)
          for (int64_t b = b0; b < b0 + rows; ++b) row(t, n, u, count * vb, b);
        t_clock.mark(kPhasePointwise);
      });
    });
  }

  const TileKernels& tk;
  const Dims d;
  const int64_t G, vb, nb, total;
  int64_t size;

 private:
  std::unique_ptr<float[]> panels;
};

// Whether the team loops take this call (see Env::tiles).
inline bool team_applies(const Env<float>& env, const Dims& d) {
  return env.tiles != nullptr && d.D % env.tiles->vb == 0;
}

// Runs a whole loop: packs the panels of each thread's blocks, then step(rank_first,
// rank_last, t) for t in `steps` order with a barrier after each, then tail(first, last).
template <typename Step, typename Tail>
void run_loop(Team& team, const float* W, bool transposed, bool reverse, const Step& step,
              const Tail& tail) {
  const int64_t T_ = team.d.T;
  count_team_loop();
  run_team(team.size, [&](int64_t rank, int64_t size) {
    const auto [first, last] = team.share(rank, size);
    t_clock.start();
    for (int64_t blk = first; blk < last; ++blk) team.pack(blk, W, transposed);
    t_clock.mark(kPhasePack);
    for (int64_t i = 0; i < T_; ++i) {
      step(first, last, reverse ? T_ - 1 - i : i);
      t_clock.mark(kPhasePointwise);  // what follows the last row pass (resets, none usually)
      team_barrier();
      t_clock.mark(kPhaseBarrier);
    }
    tail(first, last);
    t_clock.mark(kPhaseProduct);
    t_clock.flush(reverse);
  });
}

}  // namespace rnnkit_cpu
