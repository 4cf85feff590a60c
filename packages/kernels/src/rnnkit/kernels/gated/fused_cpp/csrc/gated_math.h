// Pointwise math of the gated cells, written so that GCC and Clang vectorise the loops that
// call it (no libm calls, no branches: selects only).
//
// float: exp, expm1 and log are computed here from their definitions (range reduction to
// 2^n * e^r and a short Taylor polynomial; log through the mantissa and an atanh series),
// accurate to a few ulp, so a loop over a row of gates becomes SIMD code. double: the
// standard library (the float64 path is the accuracy reference, not the fast path).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__GNUC__)
#define RNNKIT_INLINE inline __attribute__((always_inline))
#else
#define RNNKIT_INLINE inline
#endif

namespace rnnkit_cpu {

RNNKIT_INLINE float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

RNNKIT_INLINE int32_t float_to_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// e^x = 2^n (1 + p) with |r| <= ln2 / 2, r = x - n ln2; returns 2^n and p = e^r - 1. x is
// clamped to [-87, 88] so that 2^n stays a normal float (callers handle the ends).
RNNKIT_INLINE void exp_split(float x, float& scale, float& p) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // Round to nearest by adding and subtracting 1.5 * 2^23 (|x log2 e| < 2^22).
  const float shift = 12582912.0f;
  const float n = (x * 1.44269504088896341f + shift) - shift;
  // Cody-Waite: ln2 = hi + lo with hi exact in 9 bits, so n * hi is exact.
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  // e^r - 1 = r (1 + r/2 (1 + r/3 (...))): Taylor to r^7, error below 2e-8 relative.
  float q = 1.0f / 5040.0f;
  q = q * r + 1.0f / 720.0f;
  q = q * r + 1.0f / 120.0f;
  q = q * r + 1.0f / 24.0f;
  q = q * r + 1.0f / 6.0f;
  q = q * r + 0.5f;
  q = q * r + 1.0f;
  p = q * r;
  scale = bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}

RNNKIT_INLINE float exp_(float x) {
  float s, p;
  exp_split(x, s, p);
  const float y = s + s * p;
  // Below the clamp e^x is under the smallest normal float: 0, as e^-inf must be.
  return x < -87.0f ? 0.0f : y;
}

// e^x - 1 without cancellation near 0 (for n == 0 it is p itself). x <= 0 only.
RNNKIT_INLINE float expm1_neg(float x) {
  float s, p;
  exp_split(x, s, p);
  return s * p + (s - 1.0f);
}

// log y for y > 0 normal: y = 2^e m with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s),
// s = (m - 1) / (m + 1), |s| < 0.172; series to s^11 (error below 1e-9 relative).
RNNKIT_INLINE float log_(float y) {
  int32_t bits = float_to_bits(y);
  // Subtracting the bits of sqrt(1/2) splits the exponent so that m lands in [0.707, 1.414).
  const int32_t off = bits - 0x3f3504f3;
  const int32_t e = off >> 23;
  const float m = bits_to_float(bits - (e << 23));
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float q = 2.0f / 11.0f;
  q = q * s2 + 2.0f / 9.0f;
  q = q * s2 + 2.0f / 7.0f;
  q = q * s2 + 2.0f / 5.0f;
  q = q * s2 + 2.0f / 3.0f;
  q = q * s2 + 2.0f;
  return static_cast<float>(e) * 0.693147180559945309f + q * s;
}

RNNKIT_INLINE double exp_(double x) { return std::exp(x); }

RNNKIT_INLINE double expm1_neg(double x) { return std::expm1(x); }

RNNKIT_INLINE double log_(double y) { return std::log(y); }

template <typename T>
RNNKIT_INLINE T sigmoid_(T x) {
  return T(1) / (T(1) + exp_(-x));
}

// tanh x = -u / (u + 2) with u = e^(-2|x|) - 1, sign restored: no overflow, and accurate near 0.
template <typename T>
RNNKIT_INLINE T tanh_(T x) {
  const T a = x < T(0) ? -x : x;
  const T u = expm1_neg(T(-2) * a);
  const T t = -u / (u + T(2));
  return x < T(0) ? -t : t;
}

// log sigmoid(x) = min(x, 0) - log(1 + e^-|x|); the log1p is corrected for the rounding of
// 1 + u (y = 1 + u, log1p(u) = log y - ((y - 1) - u) / y).
template <typename T>
RNNKIT_INLINE T log_sigmoid_(T x) {
  const T a = x < T(0) ? -x : x;
  const T u = exp_(-a);
  const T y = T(1) + u;
  const T l1p = log_(y) - ((y - T(1)) - u) / y;
  return (x < T(0) ? x : T(0)) - l1p;
}

template <typename T>
RNNKIT_INLINE T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

}  // namespace rnnkit_cpu
