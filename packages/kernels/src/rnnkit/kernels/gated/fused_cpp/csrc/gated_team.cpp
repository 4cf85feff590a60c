// The parts of the thread team (gated_team.h) that run once per loop, not per step: the team's
// size and panels, the packing of the weights, the loop counter and the phase timer sums.
#include "gated_team.h"

#include <atomic>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace rnnkit_cpu {

namespace {
std::atomic<int64_t> g_team_loops{0};

// The phase sums of all threads of all loops since the last reset, per direction.
std::atomic<bool> g_phase_timing{false};
std::mutex g_phase_mutex;
double g_phase_sums[2][kPhases] = {};
}  // namespace

void count_team_loop() { g_team_loops.fetch_add(1); }

int64_t team_loops_run() { return g_team_loops.load(); }

void PhaseClock::start() {
  on = g_phase_timing.load(std::memory_order_relaxed);
  for (double& v : sums) v = 0;
  if (on) last = std::chrono::steady_clock::now();
}

void PhaseClock::flush(bool reverse) {
  if (!on) return;
  const std::lock_guard<std::mutex> lock(g_phase_mutex);
  for (int i = 0; i < kPhases; ++i) g_phase_sums[reverse ? 1 : 0][i] += sums[i];
}

void set_phase_timing(bool on) { g_phase_timing.store(on); }

std::vector<double> phase_times(bool reset) {
  const std::lock_guard<std::mutex> lock(g_phase_mutex);
  std::vector<double> out;
  for (const auto& dir : g_phase_sums) out.insert(out.end(), dir, dir + kPhases);
  if (reset)
    for (auto& dir : g_phase_sums)
      for (double& v : dir) v = 0;
  return out;
}

Team::Team(const TileKernels& tk, const Dims& d, int64_t G, int64_t threads)
    : tk(tk), d(d), G(G), vb(tk.vb), nb(d.D / tk.vb), total(d.N * (d.D / tk.vb)) {
  const int64_t work = d.N * d.B * G * d.D * d.D;
  size = std::max<int64_t>(1, std::min({threads, total, work / kTeamWork}));
  if (3 * tk.rows > kMaxRows)
    throw std::logic_error("rnnkit fused_cpp: tiles of more than kMaxRows / 3 rows");
  // Not value-initialised: each thread writes (and so first touches) its own panels.
  panels.reset(new float[static_cast<size_t>(total * G * d.D * vb)]);
}

void Team::pack(int64_t blk, const float* W, bool transposed) {
  const int64_t D = d.D, GD = G * D, n = blk / nb, u = (blk % nb) * vb;
  const float* w = W + n * D * GD;
  float* p = panel(blk);
  if (!transposed) {
    for (int64_t k = 0; k < D; ++k)
      for (int64_t g = 0; g < G; ++g)
        std::memcpy(p + (k * G + g) * vb, w + k * GD + g * D + u, sizeof(float) * vb);
  } else {
    for (int64_t c = 0; c < GD; ++c)
      for (int64_t e = 0; e < vb; ++e) p[c * vb + e] = w[(u + e) * GD + c];
  }
}

}  // namespace rnnkit_cpu
