// The small (B, C) path sample by sample as plain loops, for tiny problems.
//
// At 1x64x7x7 the batched path's few matmul calls and allocations (small.h) cost more than the
// arithmetic. These loops do the same math as cafusion/functional/composite.py's attend (same formulas,
// same NaN behaviour) with no call or allocation per step; the batched path takes over when B*C*H is
// large enough for its matmuls to pay (g_direct_max, measured by scripts/small_path_rule.py).
#pragma once

#include <torch/extension.h>

#include "common.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace cafusion {

// Weights as raw row-major pointers in the compute type A; biases and the router may be null.
template <typename A>
struct Direct {
  const A *w1, *b1, *w2, *b2, *r1, *rb1, *r2, *rb2;
  int64_t C, H, R;
  A t;
  bool softmax, hard, silu;
};

// One sample's intermediates, recomputed by the backward instead of being saved.
template <typename A>
struct Sample {
  std::vector<A> pre, hid, out, q, u, ca;  // pre/hid: 2H (avg row, max row); out: 2C (a, m); q: R; u, ca: C
  A w[2] = {0, 0};
  Sample(int64_t C, int64_t H, int64_t R) : pre(2 * H), hid(2 * H), out(2 * C), q(R), u(C), ca(C) {}
};


// a . b with 16 independent partial sums: a single running sum is a chain of dependent adds (4 cycles
// each), and the compiler may not reorder float additions by itself.
template <typename A>
inline A dot(const A* a, const A* b, int64_t n) {
  constexpr int64_t kL = 16;
  if (n < kL) {  // a hidden layer's few inputs: setting up and merging 16 partial sums would cost more
    A s0 = 0, s1 = 0;
    int64_t k = 0;
    for (; k + 2 <= n; k += 2) s0 += a[k] * b[k], s1 += a[k + 1] * b[k + 1];
    if (k < n) s0 += a[k] * b[k];
    return s0 + s1;
  }
  A s[kL] = {};
  int64_t k = 0;
  for (; k + kL <= n; k += kL)
    for (int64_t l = 0; l < kL; ++l) s[l] += a[k + l] * b[k + l];
  for (int64_t l = 0; k < n; ++k, ++l) s[l] += a[k] * b[k];
  for (int64_t w = kL / 2; w >= 1; w /= 2)
    for (int64_t l = 0; l < w; ++l) s[l] += s[l + w];
  return s[0];
}

template <typename A>
void direct_sample_forward(const Direct<A>& p, const A* avg, const A* mx, Sample<A>& s) {
  const int64_t C = p.C, H = p.H, R = p.R;
  const A* rows[2] = {avg, mx};
  for (int r = 0; r < 2; ++r) {
    for (int64_t h = 0; h < H; ++h) {
      A acc = dot(p.w1 + h * C, rows[r], C);
      if (p.b1) acc += p.b1[h];
      s.pre[r * H + h] = acc;
      s.hid[r * H + h] = p.silu ? acc * sigmoid_of(acc) : relu_of(acc);
    }
    for (int64_t c = 0; c < C; ++c) {
      A acc = dot(p.w2 + c * H, s.hid.data() + r * H, H);
      if (p.b2) acc += p.b2[c];
      s.out[r * C + c] = acc;
    }
  }
  const A* a = s.out.data();
  const A* m = a + C;
  if (p.softmax) {
    for (int64_t j = 0; j < R; ++j) {
      const A* w = p.r1 + j * 2 * C;
      A acc = dot(w, avg, C) + dot(w + C, mx, C);
      if (p.rb1) acc += p.rb1[j];
      s.q[j] = acc;
    }
    A logit[2];
    for (int i = 0; i < 2; ++i) {
      A acc = 0;
      for (int64_t j = 0; j < R; ++j) acc += p.r2[i * R + j] * relu_of(s.q[j]);
      logit[i] = p.rb2 ? acc + p.rb2[i] : acc;
    }
    const A top = logit[0] > logit[1] ? logit[0] : logit[1];
    const A e0 = std::exp(logit[0] - top), e1 = std::exp(logit[1] - top);
    s.w[0] = e0 / (e0 + e1);
    s.w[1] = e1 / (e0 + e1);
  }
  for (int64_t c = 0; c < C; ++c) {
    const A z = p.softmax ? s.w[0] * a[c] + s.w[1] * m[c] : a[c] + m[c];
    s.u[c] = z / p.t;
    s.ca[c] = p.hard ? hardsigmoid_of(s.u[c]) : sigmoid_of(s.u[c]);
  }
}

// Gradient accumulators for the weights (sums over the batch), in A, shaped as the weights.
template <typename A>
struct DirectGrads {
  std::vector<A> w1, b1, w2, b2, r1, rb1, r2, rb2;
  double t = 0;  // sum of g_u * u; the temperature gradient is -t / T
  DirectGrads(int64_t C, int64_t H, int64_t R)
      : w1(H * C), b1(H), w2(C * H), b2(C), r1(R * 2 * C), rb1(R), r2(2 * R), rb2(2) {}
};

// One sample's backward: from d(loss)/d(ca) (C) and d(loss)/d(w) (2, or null) to d avg, d max (C each),
// accumulating the weight gradients into g.
template <typename A>
void direct_sample_backward(const Direct<A>& p, const A* avg, const A* mx, const Sample<A>& s, const A* g_ca,
                            const A* g_w, A* d_avg, A* d_mx, DirectGrads<A>& g) {
  const int64_t C = p.C, H = p.H, R = p.R;
  std::vector<A> g_out(2 * C), d_hid(2 * H, A(0)), g_pre(2 * H);
  const A* a = s.out.data();
  const A* m = a + C;
  A gw[2] = {0, 0};
  for (int64_t c = 0; c < C; ++c) {
    const A gu = p.hard ? ((s.u[c] > -3 && s.u[c] < 3) ? g_ca[c] * A(kOneSixth) : A(0))
                        : g_ca[c] * s.ca[c] * (1 - s.ca[c]);
    g.t += static_cast<double>(gu * s.u[c]);
    const A gz = gu / p.t;
    if (p.softmax) {
      g_out[c] = gz * s.w[0];
      g_out[C + c] = gz * s.w[1];
      gw[0] += gz * a[c];
      gw[1] += gz * m[c];
    } else {
      g_out[c] = g_out[C + c] = gz;
    }
  }
  for (int64_t c = 0; c < C; ++c) d_avg[c] = d_mx[c] = 0;
  if (p.softmax) {
    if (g_w) gw[0] += g_w[0], gw[1] += g_w[1];
    const A dot = gw[0] * s.w[0] + gw[1] * s.w[1];
    const A gl[2] = {s.w[0] * (gw[0] - dot), s.w[1] * (gw[1] - dot)};
    for (int i = 0; i < 2; ++i) {
      g.rb2[i] += gl[i];
      for (int64_t j = 0; j < R; ++j) g.r2[i * R + j] += gl[i] * relu_of(s.q[j]);
    }
    for (int64_t j = 0; j < R; ++j) {
      const A dr = gl[0] * p.r2[j] + gl[1] * p.r2[R + j];
      const A gq = s.q[j] <= 0 ? A(0) : dr;  // NaN passes, as in aten
      g.rb1[j] += gq;
      A* gr = g.r1.data() + j * 2 * C;
      const A* w = p.r1 + j * 2 * C;
      for (int64_t k = 0; k < C; ++k) {
        gr[k] += gq * avg[k];
        gr[C + k] += gq * mx[k];
        d_avg[k] += gq * w[k];
        d_mx[k] += gq * w[C + k];
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const A* w = p.w2 + c * H;
    A* gw2 = g.w2.data() + c * H;
    g.b2[c] += g_out[c] + g_out[C + c];
    for (int64_t h = 0; h < H; ++h) {
      d_hid[h] += g_out[c] * w[h];
      d_hid[H + h] += g_out[C + c] * w[h];
      gw2[h] += g_out[c] * s.hid[h] + g_out[C + c] * s.hid[H + h];
    }
  }
  for (int64_t k = 0; k < 2 * H; ++k) {
    const A pre = s.pre[k];
    if (p.silu) {
      const A sig = sigmoid_of(pre);
      g_pre[k] = d_hid[k] * sig * (1 + pre * (1 - sig));
    } else {
      g_pre[k] = pre <= 0 ? A(0) : d_hid[k];
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    const A* w = p.w1 + h * C;
    A* gw1 = g.w1.data() + h * C;
    const A ga = g_pre[h], gm = g_pre[H + h];
    g.b1[h] += ga + gm;
    for (int64_t c = 0; c < C; ++c) {
      d_avg[c] += ga * w[c];
      d_mx[c] += gm * w[c];
      gw1[c] += ga * avg[c] + gm * mx[c];
    }
  }
}

// Problems up to this many multiply-adds per layer (B * C * max(H, R)) take the loops, larger ones the
// batched path (small.h). scripts/small_path_rule.py (1 thread, block step): the loops win at 1x64x7x7
// (127 vs 156 µs) and 32x16x40 (206 vs 222), the batched path at 32x64x16 (297 vs 442), which is 32768
// multiply-adds.
inline int64_t g_direct_max = int64_t(1) << 14;  // settable for measurements (set_direct_max)

// Whether the loops take this call: every weight already in the compute type and contiguous, and small.
inline bool direct_ok(const Params& p, at::ScalarType dtype, int64_t batch, bool softmax) {
  auto fits = [&](const OptTensor& t) { return !t.has_value() || (t->scalar_type() == dtype && t->is_contiguous()); };
  if (!fits(p.fc1_w) || !fits(p.fc1_b) || !fits(p.fc2_w) || !fits(p.fc2_b)) return false;
  if (softmax && (!p.r1_w.has_value() || !p.r2_w.has_value() || !fits(p.r1_w) || !fits(p.r1_b) ||
                  !fits(p.r2_w) || !fits(p.r2_b)))
    return false;
  const int64_t C = p.fc2_w.size(0), H = p.fc1_w.size(0), R = softmax ? p.r1_w->size(0) : 0;
  return batch * C * std::max(H, R) <= g_direct_max;
}

template <typename A>
const A* ptr_or_null(const OptTensor& t) {
  return t.has_value() ? t->data_ptr<A>() : nullptr;
}

template <typename A>
Direct<A> direct_of(const Params& p, bool softmax, bool hard, bool silu) {
  const Tensor t = cast(p.temperature, c10::CppTypeToScalarType<A>::value);
  Direct<A> d{p.fc1_w.data_ptr<A>(),
              ptr_or_null<A>(p.fc1_b),
              p.fc2_w.data_ptr<A>(),
              ptr_or_null<A>(p.fc2_b),
              softmax ? ptr_or_null<A>(p.r1_w) : nullptr,
              softmax ? ptr_or_null<A>(p.r1_b) : nullptr,
              softmax ? ptr_or_null<A>(p.r2_w) : nullptr,
              softmax ? ptr_or_null<A>(p.r2_b) : nullptr,
              p.fc2_w.size(0),
              p.fc1_w.size(0),
              softmax ? p.r1_w->size(0) : 0,
              *t.data_ptr<A>(),
              softmax,
              hard,
              silu};
  return d;
}

// (ca (B, C), fusion weights (B, 2) or undefined), both in the compute type of avg/mx.
inline std::pair<Tensor, Tensor> direct_forward(const Tensor& avg, const Tensor& mx, const Params& p, bool softmax,
                                                bool hard, bool silu) {
  const int64_t B = avg.size(0), C = avg.size(1);
  Tensor ca = at::empty({B, C}, avg.options());
  Tensor w = softmax ? at::empty({B, 2}, avg.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(avg.scalar_type(), "cafusion_direct_forward", [&] {
    const Direct<scalar_t> d = direct_of<scalar_t>(p, softmax, hard, silu);
    Sample<scalar_t> s(d.C, d.H, d.R);
    const scalar_t* pa = avg.data_ptr<scalar_t>();
    const scalar_t* pm = mx.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      direct_sample_forward(d, pa + b * C, pm + b * C, s);
      std::copy(s.ca.begin(), s.ca.end(), ca.data_ptr<scalar_t>() + b * C);
      if (softmax) std::copy(s.w, s.w + 2, w.data_ptr<scalar_t>() + b * 2);
    }
  });
  return {ca, w};
}

template <typename A>
Tensor from_vector(const std::vector<A>& v, const Tensor& like) {
  Tensor t = at::empty(like.sizes(), like.options());
  std::copy(v.begin(), v.end(), t.data_ptr<A>());
  return t;
}

// As small_backward (small.h): (g_avg / avg_count, g_max, d fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature), plus
// the recomputed ca (B, C) last. g_ca is (B, C) in the compute type, g_w (B, 2) or none.
inline std::vector<Tensor> direct_backward(const Tensor& avg, const Tensor& mx, const Params& p, const Tensor& g_ca,
                                           const OptTensor& g_w, bool softmax, bool hard, bool silu,
                                           int64_t avg_count) {
  const int64_t B = avg.size(0), C = avg.size(1);
  const auto dtype = avg.scalar_type();
  Tensor g_avg = at::empty({B, C}, avg.options()), g_mx = at::empty({B, C}, avg.options());
  Tensor ca = at::empty({B, C}, avg.options());
  std::vector<Tensor> out(12);
  AT_DISPATCH_FLOATING_TYPES(dtype, "cafusion_direct_backward", [&] {
    using A = scalar_t;
    const Direct<A> d = direct_of<A>(p, softmax, hard, silu);
    Sample<A> s(d.C, d.H, d.R);
    DirectGrads<A> g(d.C, d.H, d.R);
    const Tensor gc = g_ca.contiguous();
    const Tensor gw = (softmax && g_w.has_value()) ? cast(*g_w, dtype).contiguous() : Tensor();
    const A *pa = avg.data_ptr<A>(), *pm = mx.data_ptr<A>();
    for (int64_t b = 0; b < B; ++b) {
      direct_sample_forward(d, pa + b * C, pm + b * C, s);
      std::copy(s.ca.begin(), s.ca.end(), ca.data_ptr<A>() + b * C);
      direct_sample_backward(d, pa + b * C, pm + b * C, s, gc.data_ptr<A>() + b * C,
                             gw.defined() ? gw.data_ptr<A>() + b * 2 : nullptr, g_avg.data_ptr<A>() + b * C,
                             g_mx.data_ptr<A>() + b * C, g);
    }
    if (avg_count != 1) g_avg.div_(avg_count);  // as small_backward: g_avg divided by the positions pooled
    out[0] = g_avg;
    out[1] = g_mx;
    out[2] = from_vector(g.w1, p.fc1_w);
    if (p.fc1_b.has_value()) out[3] = from_vector(g.b1, *p.fc1_b);
    out[4] = from_vector(g.w2, p.fc2_w);
    if (p.fc2_b.has_value()) out[5] = from_vector(g.b2, *p.fc2_b);
    if (softmax) {
      out[6] = from_vector(g.r1, *p.r1_w);
      if (p.r1_b.has_value()) out[7] = from_vector(g.rb1, *p.r1_b);
      out[8] = from_vector(g.r2, *p.r2_w);
      if (p.r2_b.has_value()) out[9] = from_vector(g.rb2, *p.r2_b);
    }
    const A t_grad = -static_cast<A>(g.t) / d.t;
    out[10] = at::full(p.temperature.sizes(), t_grad, p.temperature.options().dtype(dtype))
                  .to(p.temperature.scalar_type());
  });
  out[11] = ca;
  return out;
}

}  // namespace cafusion
