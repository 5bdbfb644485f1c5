// What every part of the CPU kernels shares: accumulation types, the dtype rule, casts.
#pragma once

#include <torch/extension.h>

#include <cmath>
#include <vector>

namespace cafusion {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

// float for float/bfloat16/half data, double for double.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

// cafusion._dtypes.compute_dtype: never below float32, float64 stays float64.
inline at::ScalarType compute_dtype(at::ScalarType a, at::ScalarType b) {
  return at::promote_types(at::promote_types(at::kFloat, a), b);
}


#define CAFUSION_DISPATCH(dtype, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, NAME, __VA_ARGS__)


inline Tensor cast(const Tensor& t, at::ScalarType dtype) { return t.scalar_type() == dtype ? t : t.to(dtype); }

// The small path's elementwise functions, with torch's NaN behaviour.
template <typename A>
inline A relu_of(A v) {
  const A positive = v > A(0) ? v : A(0);
  return v != v ? v : positive;  // NaN stays NaN, as torch.relu; two selects, so that loops vectorise
}
template <typename A>
inline A sigmoid_of(A v) {
  return A(1) / (A(1) + std::exp(-v));
}
template <typename A>
inline A hardsigmoid_of(A v) {
  const A lo = (v + A(3) < A(0)) ? A(0) : v + A(3);  // NaN falls through both comparisons
  return ((A(6) < lo) ? A(6) : lo) / A(6);
}

constexpr double kOneSixth = static_cast<double>(1.0f / 6.0f);  // torch's hardsigmoid_backward constant

// The block's switches, as the op's schema passes them (fusion, gate, act).
struct Config {
  bool softmax, hard, silu;
};

// The block's parameters, as the op's schema lists them (absent ones nullopt).
struct Params {
  Tensor fc1_w;
  OptTensor fc1_b;
  Tensor fc2_w;
  OptTensor fc2_b;
  OptTensor r1_w, r1_b, r2_w, r2_b;
  Tensor temperature;
};


}  // namespace cafusion
