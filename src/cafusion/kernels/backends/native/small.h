// The small (B, C) path: cafusion/functional/composite.py's attend on the pooled statistics, forward and
// backward, for the whole batch at once.
//
// The matrix products go to ATen's matmul (MKL; a few dispatches per call), everything elementwise runs
// as one loop over raw pointers: written as ATen ops, the ~15 elementwise calls of the forward and ~40
// of the backward (each a dispatch and an allocation) cost more than the arithmetic at the shapes most
// users run. Products too small for a matmul call to pay (m*n*k <= kLoopMacs) run as loops too. Same
// formulas and NaN behaviour as the composite; tested against it by tests/test_backends.py.
#pragma once

#include <torch/extension.h>

#include <cmath>
#include <vector>

#include "common.h"

namespace cafusion {


// Up to this many multiply-adds a product runs as loops here, above it as ATen's matmul (MKL): a matmul
// call costs ~3 µs of dispatch and set-up, more than the loops take for a few thousand multiply-adds.
constexpr int64_t kLoopMacs = 4096;

// a (m, k) @ b (k, n) for 2-D views of any strides (transposes included), as a new contiguous (m, n).
inline Tensor product(const Tensor& a, const Tensor& b) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  if (m * n * k > kLoopMacs) return at::mm(a, b);
  Tensor out = at::empty({m, n}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "cafusion_small_product", [&] {
    const scalar_t *pa = a.data_ptr<scalar_t>(), *pb = b.data_ptr<scalar_t>();
    const int64_t sa0 = a.stride(0), sa1 = a.stride(1), sb0 = b.stride(0), sb1 = b.stride(1);
    scalar_t* po = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        scalar_t acc = 0;
        for (int64_t l = 0; l < k; ++l) acc += pa[i * sa0 + l * sa1] * pb[l * sb0 + j * sb1];
        po[i * n + j] = acc;
      }
  });
  return out;
}

// From this many elements a gate or activation runs as ATen's vectorised op (a scalar exp costs ~4 ns,
// 65536 of them at 256x256 more than the whole rest of the forward), below it as a loop.
constexpr int64_t kVectorFrom = 2048;

// out = sigmoid(in) (hard: hardsigmoid) for same-shaped contiguous tensors.
template <typename A>
void gate_into(const Tensor& in, Tensor& out, bool hard) {
  const int64_t n = in.numel();
  if (n >= kVectorFrom) {
    hard ? at::hardsigmoid_out(out, in) : at::sigmoid_out(out, in);
    return;
  }
  const A* pi = in.data_ptr<A>();
  A* po = out.data_ptr<A>();
  for (int64_t i = 0; i < n; ++i) po[i] = hard ? hardsigmoid_of(pi[i]) : sigmoid_of(pi[i]);
}

// The weights as 2-D (rows = outputs) contiguous matrices in the compute type; absent ones undefined.
struct Net {
  Tensor w1, b1, w2, b2, r1, rb1, r2, rb2;
  double t;
  int64_t C, H, R;
  bool softmax, hard, silu;
};

inline Tensor as_matrix(const OptTensor& w, at::ScalarType dtype) {
  if (!w.has_value()) return Tensor();
  return cast(w->flatten(1), dtype).contiguous();
}
inline Tensor as_vector(const OptTensor& b, at::ScalarType dtype) {
  if (!b.has_value()) return Tensor();
  return cast(*b, dtype).contiguous();
}

inline Net net_of(const Params& p, at::ScalarType dtype, bool softmax, bool hard, bool silu) {
  Net n;
  n.w1 = as_matrix(p.fc1_w, dtype);
  n.b1 = as_vector(p.fc1_b, dtype);
  n.w2 = as_matrix(p.fc2_w, dtype);
  n.b2 = as_vector(p.fc2_b, dtype);
  if (softmax) {
    n.r1 = as_matrix(p.r1_w, dtype);
    n.rb1 = as_vector(p.r1_b, dtype);
    n.r2 = as_matrix(p.r2_w, dtype);
    n.rb2 = as_vector(p.r2_b, dtype);
  }
  n.t = cast(p.temperature, dtype).reshape({}).item<double>();
  n.C = n.w2.size(0);
  n.H = n.w1.size(0);
  n.R = softmax ? n.r1.size(0) : 0;
  n.softmax = softmax;
  n.hard = hard;
  n.silu = silu;
  return n;
}

template <typename A>
const A* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<A>() : nullptr;
}

// The forward's intermediates, recomputed by the backward from the saved statistics.
struct Forward {
  Tensor s;    // (2B, C): the avg rows, then the max rows
  Tensor pre;  // (2B, H) before the activation; hid after it
  Tensor hid;
  Tensor out;  // (2B, C): the MLP of avg (a), then of max (m)
  Tensor cat;  // (B, 2C): the router's input, avg | max (softmax fusion only, as q and w)
  Tensor q;    // (B, R): the router's hidden layer before its ReLU
  Tensor w;    // (B, 2): the fusion weights
  Tensor u;    // (B, C): z / T
  Tensor ca;   // (B, C): the gate
};

// Adds bias b (n) to every row of x (rows, n) in place.
template <typename A>
void add_rows(A* x, const A* b, int64_t rows, int64_t n) {
  if (b == nullptr) return;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < n; ++j) x[i * n + j] += b[j];
}

inline Forward small_forward(const Tensor& avg, const Tensor& mx, const Net& n) {
  const int64_t B = avg.size(0), C = n.C, H = n.H, R = n.R;
  Forward f;
  f.s = at::cat({avg, mx}, 0);
  f.pre = product(f.s, n.w1.t());
  f.hid = at::empty_like(f.pre);
  f.u = at::empty({B, C}, avg.options());
  f.ca = at::empty({B, C}, avg.options());
  AT_DISPATCH_FLOATING_TYPES(avg.scalar_type(), "cafusion_small_forward", [&] {
    using A = scalar_t;
    A *pre = f.pre.data_ptr<A>(), *hid = f.hid.data_ptr<A>();
    add_rows(pre, ptr<A>(n.b1), 2 * B, H);
    if (n.silu && 2 * B * H >= kVectorFrom) {
      at::silu_out(f.hid, f.pre);
    } else {
      for (int64_t i = 0; i < 2 * B * H; ++i) hid[i] = n.silu ? pre[i] * sigmoid_of(pre[i]) : relu_of(pre[i]);
    }
    f.out = product(f.hid, n.w2.t());
    add_rows(f.out.data_ptr<A>(), ptr<A>(n.b2), 2 * B, C);
    const A* a = f.out.data_ptr<A>();
    const A* m = a + B * C;
    const A* w = nullptr;
    if (n.softmax) {
      f.cat = at::cat({avg, mx}, 1);
      f.q = product(f.cat, n.r1.t());
      A* q = f.q.data_ptr<A>();
      add_rows(q, ptr<A>(n.rb1), B, R);
      f.w = at::empty({B, 2}, avg.options());
      A* pw = f.w.data_ptr<A>();
      const A *r2 = n.r2.data_ptr<A>(), *rb2 = ptr<A>(n.rb2);
      for (int64_t b = 0; b < B; ++b) {
        A logit[2];
        for (int i = 0; i < 2; ++i) {
          A acc = 0;
          for (int64_t j = 0; j < R; ++j) acc += relu_of(q[b * R + j]) * r2[i * R + j];
          logit[i] = rb2 ? acc + rb2[i] : acc;
        }
        const A top = logit[0] > logit[1] ? logit[0] : logit[1];
        const A e0 = std::exp(logit[0] - top), e1 = std::exp(logit[1] - top);
        pw[b * 2] = e0 / (e0 + e1);
        pw[b * 2 + 1] = e1 / (e0 + e1);
      }
      w = pw;
    }
    const A t = static_cast<A>(n.t);
    A* u = f.u.data_ptr<A>();
    if (w) {
      for (int64_t b = 0; b < B; ++b) {
        const A w0 = w[b * 2], w1 = w[b * 2 + 1];
        for (int64_t i = b * C; i < (b + 1) * C; ++i) u[i] = (w0 * a[i] + w1 * m[i]) / t;
      }
    } else {
      for (int64_t i = 0; i < B * C; ++i) u[i] = (a[i] + m[i]) / t;
    }
    gate_into<A>(f.u, f.ca, n.hard);
  });
  return f;
}

// Column sums of x (rows, n) as a new (n) tensor: a bias's gradient.
template <typename A>
Tensor col_sums(const Tensor& x) {
  const int64_t rows = x.size(0), n = x.size(1);
  Tensor out = at::zeros({n}, x.options());
  const A* px = x.data_ptr<A>();
  A* po = out.data_ptr<A>();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < n; ++j) po[j] += px[i * n + j];
  return out;
}

// A weight's gradient shaped and typed like the weight (conv weights are (out, in, 1, 1)).
inline Tensor like(const Tensor& g, const OptTensor& weight) {
  if (!weight.has_value()) return Tensor();
  return cast(g.reshape(weight->sizes()), weight->scalar_type());
}

// (g_avg, g_max, d fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature). g_ca is (B, C) in the
// compute type, g_w (B, 2) or absent; g_avg comes divided by avg_count (the positions each mean covered:
// N without a mask, 1 to leave it to the caller).
inline std::vector<Tensor> small_backward(const Forward& f, const Net& n, const Params& p, const Tensor& g_ca_in,
                                          const OptTensor& g_w, int64_t avg_count) {
  const int64_t B = f.u.size(0), C = n.C, H = n.H, R = n.R;
  const auto dtype = f.u.scalar_type();
  const Tensor g_ca = g_ca_in.contiguous();
  std::vector<Tensor> out(11);
  AT_DISPATCH_FLOATING_TYPES(dtype, "cafusion_small_backward", [&] {
    using A = scalar_t;
    const A t = static_cast<A>(n.t);
    const A *u = f.u.data_ptr<A>(), *ca = f.ca.data_ptr<A>(), *gc = g_ca.data_ptr<A>();
    const A* a = f.out.data_ptr<A>();
    const A* m = a + B * C;
    const A* w = n.softmax ? f.w.data_ptr<A>() : nullptr;
    Tensor g_out = at::empty({2 * B, C}, f.u.options());
    A* go = g_out.data_ptr<A>();
    std::vector<A> gw(2 * B, A(0));
    double g_t = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t i = b * C + c;
        const A gu = n.hard ? ((u[i] > -3 && u[i] < 3) ? gc[i] * A(kOneSixth) : A(0)) : gc[i] * ca[i] * (1 - ca[i]);
        g_t += static_cast<double>(gu * u[i]);
        const A gz = gu / t;
        if (w) {
          go[i] = gz * w[b * 2];
          go[B * C + i] = gz * w[b * 2 + 1];
          gw[b * 2] += gz * a[i];
          gw[b * 2 + 1] += gz * m[i];
        } else {
          go[i] = go[B * C + i] = gz;
        }
      }
    Tensor d_cat;
    if (n.softmax) {
      const Tensor gwt = g_w.has_value() ? cast(*g_w, dtype).contiguous() : Tensor();
      const A* extra = ptr<A>(gwt);
      Tensor g_logits = at::empty({B, 2}, f.u.options());
      A* gl = g_logits.data_ptr<A>();
      for (int64_t b = 0; b < B; ++b) {
        const A g0 = gw[b * 2] + (extra ? extra[b * 2] : A(0)), g1 = gw[b * 2 + 1] + (extra ? extra[b * 2 + 1] : A(0));
        const A dot = g0 * w[b * 2] + g1 * w[b * 2 + 1];
        gl[b * 2] = w[b * 2] * (g0 - dot);
        gl[b * 2 + 1] = w[b * 2 + 1] * (g1 - dot);
      }
      const A *q = f.q.data_ptr<A>(), *r2 = n.r2.data_ptr<A>();
      Tensor d_r2 = at::zeros({2, R}, f.u.options()), g_q = at::empty({B, R}, f.u.options());
      A *dr2 = d_r2.data_ptr<A>(), *gq = g_q.data_ptr<A>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < R; ++j) {
          const A qj = q[b * R + j];
          dr2[j] += gl[b * 2] * relu_of(qj);
          dr2[R + j] += gl[b * 2 + 1] * relu_of(qj);
          const A dr = gl[b * 2] * r2[j] + gl[b * 2 + 1] * r2[R + j];
          gq[b * R + j] = qj <= 0 ? A(0) : dr;  // NaN passes, as in aten
        }
      out[6] = like(product(g_q.t(), f.cat), p.r1_w);
      out[7] = like(col_sums<A>(g_q), p.r1_b);
      out[8] = like(d_r2, p.r2_w);
      out[9] = like(col_sums<A>(g_logits), p.r2_b);
      d_cat = product(g_q, n.r1);
    }
    Tensor d_hid = product(g_out, n.w2);
    out[4] = like(product(g_out.t(), f.hid), p.fc2_w);
    out[5] = like(col_sums<A>(g_out), p.fc2_b);
    A* dh = d_hid.data_ptr<A>();
    const A* pre = f.pre.data_ptr<A>();
    if (n.silu) {
      Tensor sigmoid = at::empty_like(f.pre);
      gate_into<A>(f.pre, sigmoid, false);
      const A* sig = sigmoid.data_ptr<A>();
      for (int64_t i = 0; i < 2 * B * H; ++i) dh[i] = dh[i] * sig[i] * (1 + pre[i] * (1 - sig[i]));
    } else {
      for (int64_t i = 0; i < 2 * B * H; ++i) dh[i] = pre[i] <= 0 ? A(0) : dh[i];
    }
    out[2] = like(product(d_hid.t(), f.s), p.fc1_w);
    out[3] = like(col_sums<A>(d_hid), p.fc1_b);
    const Tensor d_s = product(d_hid, n.w1);
    Tensor g_avg = at::empty({B, C}, f.u.options()), g_mx = at::empty({B, C}, f.u.options());
    const A* ds = d_s.data_ptr<A>();
    const A* dc = d_cat.defined() ? d_cat.data_ptr<A>() : nullptr;
    A *ga = g_avg.data_ptr<A>(), *gm = g_mx.data_ptr<A>();
    const A count = static_cast<A>(avg_count);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) {
        ga[b * C + c] = (ds[b * C + c] + (dc ? dc[b * 2 * C + c] : A(0))) / count;
        gm[b * C + c] = ds[(B + b) * C + c] + (dc ? dc[b * 2 * C + C + c] : A(0));
      }
    out[0] = g_avg;
    out[1] = g_mx;
    const A t_grad = -static_cast<A>(g_t) / t;
    out[10] = at::full(p.temperature.sizes(), t_grad, p.temperature.options().dtype(dtype))
                  .to(p.temperature.scalar_type());
  });
  return out;
}

}  // namespace cafusion
