// The small (B, C) path through ATen calls, for large B*C*H where matrix-multiply kernels win.
#pragma once

#include <torch/extension.h>

#include <tuple>
#include <vector>

#include "common.h"

namespace cafusion {

// The small path on (B, C) matrices: cafusion/functional/composite.py's attend, op for op (one MLP call on
// the stacked avg/max rows), with its backward written out.

inline Tensor mat(const Tensor& w, at::ScalarType dtype) { return cast(w.flatten(1), dtype); }
inline OptTensor vec(const OptTensor& b, at::ScalarType dtype) {
  if (!b.has_value()) return c10::nullopt;
  return cast(*b, dtype);
}

// Field order of cafusion.kernels.small.Forward.
enum Fw { kS, kPre, kHid, kOut, kCat, kQ, kW, kT, kU, kCa, kFwCount };

inline std::vector<Tensor> small_forward(const Tensor& avg, const Tensor& mx, const Params& p, bool softmax, bool hard,
                                  bool silu) {
  const auto dtype = avg.scalar_type();
  const int64_t b = avg.size(0);
  std::vector<Tensor> f(kFwCount);
  f[kS] = at::cat({avg, mx}, 0);
  f[kPre] = at::linear(f[kS], mat(p.fc1_w, dtype), vec(p.fc1_b, dtype));
  f[kHid] = silu ? at::silu(f[kPre]) : at::relu(f[kPre]);
  f[kOut] = at::linear(f[kHid], mat(p.fc2_w, dtype), vec(p.fc2_b, dtype));
  const Tensor a = f[kOut].narrow(0, 0, b), m = f[kOut].narrow(0, b, b);
  Tensor z;
  if (!softmax) {
    z = a + m;
  } else {
    f[kCat] = at::cat({avg, mx}, 1);
    f[kQ] = at::linear(f[kCat], mat(*p.r1_w, dtype), vec(p.r1_b, dtype));
    const Tensor logits = at::linear(at::relu(f[kQ]), mat(*p.r2_w, dtype), vec(p.r2_b, dtype));
    f[kW] = at::softmax(logits, 1);
    z = f[kW].narrow(1, 0, 1) * a + f[kW].narrow(1, 1, 1) * m;
  }
  f[kT] = cast(p.temperature, dtype).reshape({});
  f[kU] = z / f[kT];
  f[kCa] = hard ? at::hardsigmoid(f[kU]) : at::sigmoid(f[kU]);
  return f;
}

// For out = inp @ W^T + b: (d inp, dW shaped and typed like weight, db like bias).
inline std::tuple<Tensor, Tensor, Tensor> linear_backward(const Tensor& g, const Tensor& inp, const Tensor& weight,
                                                   const OptTensor& bias) {
  const Tensor d_inp = at::mm(g, mat(weight, g.scalar_type()));
  const Tensor d_w = cast(at::mm(g.t(), inp).reshape(weight.sizes()), weight.scalar_type());
  const Tensor d_b = bias.has_value() ? cast(g.sum(0), bias->scalar_type()) : Tensor();
  return {d_inp, d_w, d_b};
}


// Returns (g_avg, g_max, d fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature).
inline std::vector<Tensor> small_backward(const std::vector<Tensor>& f, const Params& p, const Tensor& g_ca,
                                   const OptTensor& g_w, bool softmax, bool hard, bool silu) {
  const int64_t b = f[kU].size(0);
  Tensor g_u;
  if (!hard) {
    g_u = g_ca * f[kCa] * (1 - f[kCa]);
  } else {
    g_u = at::where(f[kU].gt(-3).logical_and_(f[kU].lt(3)), g_ca * kOneSixth, at::zeros_like(g_ca));
  }
  const Tensor g_z = g_u / f[kT];
  const Tensor g_t = -(g_u * f[kU]).sum() / f[kT];
  const Tensor a = f[kOut].narrow(0, 0, b), m = f[kOut].narrow(0, b, b);
  Tensor g_out, d_cat, d_r1_w, d_r1_b, d_r2_w, d_r2_b;
  if (!softmax) {
    g_out = at::cat({g_z, g_z}, 0);
  } else {
    const Tensor& w = f[kW];
    g_out = at::cat({g_z * w.narrow(1, 0, 1), g_z * w.narrow(1, 1, 1)}, 0);
    Tensor g_w_total = at::stack({(g_z * a).sum(1), (g_z * m).sum(1)}, 1);
    if (g_w.has_value()) g_w_total = g_w_total + cast(*g_w, g_w_total.scalar_type());
    const Tensor g_logits = w * (g_w_total - (g_w_total * w).sum(1, true));
    Tensor d_r;
    std::tie(d_r, d_r2_w, d_r2_b) = linear_backward(g_logits, at::relu(f[kQ]), *p.r2_w, p.r2_b);
    const Tensor g_q = at::where(f[kQ].le(0), at::zeros_like(d_r), d_r);  // NaN passes, as in aten
    std::tie(d_cat, d_r1_w, d_r1_b) = linear_backward(g_q, f[kCat], *p.r1_w, p.r1_b);
  }
  auto [d_hid, d_fc2_w, d_fc2_b] = linear_backward(g_out, f[kHid], p.fc2_w, p.fc2_b);
  Tensor g_pre;
  if (!silu) {
    g_pre = at::where(f[kPre].le(0), at::zeros_like(d_hid), d_hid);
  } else {
    const Tensor sig = at::sigmoid(f[kPre]);
    g_pre = d_hid * sig * (1 + f[kPre] * (1 - sig));
  }
  auto [d_s, d_fc1_w, d_fc1_b] = linear_backward(g_pre, f[kS], p.fc1_w, p.fc1_b);
  Tensor g_avg = d_s.narrow(0, 0, b), g_mx = d_s.narrow(0, b, b);
  if (d_cat.defined()) {
    const int64_t c = g_avg.size(1);
    g_avg = g_avg + d_cat.narrow(1, 0, c);
    g_mx = g_mx + d_cat.narrow(1, c, c);
  }
  const Tensor d_t = cast(g_t.reshape(p.temperature.sizes()), p.temperature.scalar_type());
  return {g_avg, g_mx, d_fc1_w, d_fc1_b, d_fc2_w, d_fc2_b, d_r1_w, d_r1_b, d_r2_w, d_r2_b, d_t};
}


}  // namespace cafusion
