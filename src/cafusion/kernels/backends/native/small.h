// The small (B, C) path: cafusion/functional/composite.py's attend on the pooled statistics, forward and
// backward, for the whole batch at once.
//
// Why written out: as ATen ops the forward is ~15 calls and the backward ~40, each a dispatch and an
// allocation, and at the shapes most users run (100x25 statistics) those cost more than the arithmetic.
// Here every intermediate lives in one buffer, the weights are read in place, and each matrix product
// runs as vectorisable loops up to g_loop_macs multiply-adds, through ATen's matmul (MKL) above, where the
// call's fixed cost is small next to the product. Same formulas and NaN behaviour as the composite;
// tested against it by tests/test_backends.py and tests/test_native.py.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "cache.h"
#include "common.h"

namespace cafusion {

// Up to this many multiply-adds a product runs as loops here, above it as ATen's matmul: the matmul call
// (three tensor wrappers, a dispatch, MKL's set-up) costs a few µs, which the loops beat on small
// products. Measured by scripts/small_path_rule.py; settable for that measurement (set_loop_macs).
inline int64_t g_loop_macs = int64_t(1) << 14;

// From this many elements a gate or activation runs as ATen's vectorised op (a scalar exp costs ~4 ns,
// 65536 of them at 256x256 more than the whole rest of the forward), below it as a loop.
constexpr int64_t kVectorFrom = 2048;

// a . b with 16 independent partial sums: a single running sum is a chain of dependent adds, and the
// compiler may not reorder float additions by itself.
template <typename A>
inline A dot(const A* __restrict a, const A* __restrict b, int64_t n) {
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

// The three shapes of product the path needs, all on row-major buffers, c (m, n) overwritten:
// NT: a (m, k) . b (n, k)^T;  NN: a (m, k) . b (k, n);  TN: a (k, m)^T . b (k, n).
enum class Form { NT, NN, TN };

template <typename A>
void product(Form form, const A* a, const A* b, A* __restrict c, int64_t m, int64_t n, int64_t k) {
  if (m * n * k > g_loop_macs) {
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
    auto wrap = [&](const A* p, int64_t rows, int64_t cols) { return at::from_blob(const_cast<A*>(p), {rows, cols}, opts); };
    const Tensor ta = form == Form::TN ? wrap(a, k, m).t() : wrap(a, m, k);
    const Tensor tb = form == Form::NT ? wrap(b, n, k).t() : wrap(b, k, n);
    Tensor tc = wrap(c, m, n);
    at::mm_out(tc, ta, tb);
    return;
  }
  if (form == Form::NT) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * n + j] = dot(a + i * k, b + j * k, k);
    return;
  }
  std::fill(c, c + m * n, A(0));
  for (int64_t i = 0; i < (form == Form::NN ? m : k); ++i)  // NN: output rows; TN: the summed rows
    for (int64_t l = 0; l < (form == Form::NN ? k : m); ++l) {
      const A coef = form == Form::NN ? a[i * k + l] : a[i * m + l];
      const A* __restrict row = b + (form == Form::NN ? l : i) * n;
      A* __restrict out = c + (form == Form::NN ? i : l) * n;
      for (int64_t j = 0; j < n; ++j) out[j] += coef * row[j];
    }
}

// out[i] = sigmoid(in[i]) (hard: hardsigmoid) for i < count.
template <typename A>
void gate_into(const A* in, A* out, int64_t count, bool hard) {
  if (count >= kVectorFrom) {
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
    const Tensor ti = at::from_blob(const_cast<A*>(in), {count}, opts);
    Tensor to = at::from_blob(out, {count}, opts);
    hard ? at::hardsigmoid_out(to, ti) : at::sigmoid_out(to, ti);
    return;
  }
  for (int64_t i = 0; i < count; ++i) out[i] = hard ? hardsigmoid_of(in[i]) : sigmoid_of(in[i]);
}

// Whether the three products with fc2's weight (C, H) run as loops: they all take 2B*C*H multiply-adds,
// and as loops they read its transposed copy (H, C), so that each inner loop runs along C.
inline bool w2_as_loops(int64_t B, int64_t C, int64_t H) { return 2 * B * C * H <= g_loop_macs; }

// The weights as row-major pointers in the compute type A, read in place when they already are (the usual
// case), else from a converted copy; biases and the router null where absent.
template <typename A>
struct Net {
  const A *w1, *b1, *w2, *b2, *r1, *rb1, *r2, *rb2;
  int64_t C, H, R;
  A t;
  Config cfg;
  std::vector<Tensor> copies;  // keeps the converted weights alive

  Net(const Params& p, const Config& c) : cfg(c) {
    TORCH_CHECK(!c.softmax || (p.r1_w.has_value() && p.r2_w.has_value()), "cafusion: softmax fusion needs the router");
    w1 = raw(p.fc1_w), b1 = raw(p.fc1_b), w2 = raw(p.fc2_w), b2 = raw(p.fc2_b);
    r1 = c.softmax ? raw(p.r1_w) : nullptr, rb1 = c.softmax ? raw(p.r1_b) : nullptr;
    r2 = c.softmax ? raw(p.r2_w) : nullptr, rb2 = c.softmax ? raw(p.r2_b) : nullptr;
    C = p.fc2_w.size(0), H = p.fc1_w.size(0), R = c.softmax ? p.r1_w->size(0) : 0;
    t = *raw(p.temperature);
  }
  Net(const Net&) = delete;

 private:
  const A* raw(const OptTensor& w) {
    if (!w.has_value()) return nullptr;
    constexpr auto dtype = c10::CppTypeToScalarType<A>::value;
    if (w->scalar_type() == dtype && w->is_contiguous()) return w->data_ptr<A>();
    copies.push_back(w->to(dtype).contiguous());
    return copies.back().data_ptr<A>();
  }
};

// A call's scratch memory: a big one from the kernels' buffer cache (cache.h), whose pages stay mapped
// between training steps, a small one from the heap.
template <typename A>
class Scratch {
 public:
  explicit Scratch(int64_t count) : bytes_(static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(A)) {
    cached_ = bytes_ >= static_cast<size_t>(kCacheMin) && bytes_ <= BufferCache::get().limit();
    data_ = cached_ ? static_cast<A*>(BufferCache::get().take(bytes_)) : new A[bytes_ / sizeof(A)];
  }
  ~Scratch() { cached_ ? BufferCache::get().give(data_, bytes_) : delete[] data_; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  A* get() const { return data_; }

 private:
  size_t bytes_;
  bool cached_;
  A* data_;
};

// Every intermediate of one call in one allocation. Rows 0..B-1 of the (2B, .) buffers belong to the
// mean, rows B..2B-1 to the max.
template <typename A>
struct Work {
  A *s, *pre, *hid, *out, *w2t, *cat, *q, *u;  // forward: s (2B, C), pre/hid (2B, H), out (2B, C), w2t (H, C)
                                                // (w2_as_loops only), cat (B, 2C), q (B, R), u (B, C) = z / T
  A *g_out, *d_hid, *d_s, *d_w2t, *sig, *d_cat, *g_q, *gw, *gl;  // backward: same shapes; gw, gl (B, 2)
  std::unique_ptr<Scratch<A>> buffer;

  Work(const Net<A>& n, int64_t B, bool backward) {
    const int64_t C = n.C, H = n.H, R = n.R;
    const bool sm = n.cfg.softmax, bw = backward;
    const int64_t t2 = w2_as_loops(B, C, H) ? H * C : 0;
    const int64_t sizes[] = {2 * B * C, 2 * B * H, 2 * B * H, 2 * B * C, t2, sm ? 2 * B * C : 0,
                             sm ? B * R : 0, B * C,
                             bw ? 2 * B * C : 0, bw ? 2 * B * H : 0, bw ? 2 * B * C : 0, bw ? t2 : 0,
                             bw && n.cfg.silu ? 2 * B * H : 0, bw && sm ? 2 * B * C : 0, bw && sm ? B * R : 0,
                             bw && sm ? 2 * B : 0, bw && sm ? 2 * B : 0};
    A** slots[] = {&s, &pre, &hid, &out, &w2t, &cat, &q, &u, &g_out, &d_hid, &d_s, &d_w2t, &sig, &d_cat, &g_q, &gw, &gl};
    int64_t total = 0;
    for (const int64_t size : sizes) total += size;
    buffer = std::make_unique<Scratch<A>>(total);
    A* next = buffer->get();
    for (size_t i = 0; i < std::size(slots); ++i) *slots[i] = next, next += sizes[i];
  }
};

// Adds bias b (n) to every row of x (rows, n) in place.
template <typename A>
void add_rows(A* x, const A* b, int64_t rows, int64_t n) {
  if (b == nullptr) return;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < n; ++j) x[i * n + j] += b[j];
}

// Column sums of x (rows, n) into out (n): a bias's gradient.
template <typename A>
void col_sums(const A* x, int64_t rows, int64_t n, A* out) {
  if (out == nullptr) return;
  std::fill(out, out + n, A(0));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < n; ++j) out[j] += x[i * n + j];
}

// The forward on avg, mx (B, C): ca (B, C) and, for softmax fusion, the fusion weights w (B, 2).
template <typename A>
void forward_into(const Net<A>& n, const A* avg, const A* mx, int64_t B, Work<A>& k, A* ca, A* w) {
  const int64_t C = n.C, H = n.H, R = n.R;
  std::copy(avg, avg + B * C, k.s);
  std::copy(mx, mx + B * C, k.s + B * C);
  product(Form::NT, k.s, n.w1, k.pre, 2 * B, H, C);
  add_rows(k.pre, n.b1, 2 * B, H);
  if (n.cfg.silu && 2 * B * H >= kVectorFrom) {
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
    Tensor hid = at::from_blob(k.hid, {2 * B * H}, opts);
    at::silu_out(hid, at::from_blob(k.pre, {2 * B * H}, opts));
  } else if (n.cfg.silu) {
    for (int64_t i = 0; i < 2 * B * H; ++i) k.hid[i] = k.pre[i] * sigmoid_of(k.pre[i]);
  } else {
    for (int64_t i = 0; i < 2 * B * H; ++i) k.hid[i] = relu_of(k.pre[i]);
  }
  if (w2_as_loops(B, C, H)) {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h) k.w2t[h * C + c] = n.w2[c * H + h];
    product(Form::NN, k.hid, k.w2t, k.out, 2 * B, C, H);
  } else {
    product(Form::NT, k.hid, n.w2, k.out, 2 * B, C, H);
  }
  add_rows(k.out, n.b2, 2 * B, C);
  const A* a = k.out;
  const A* m = a + B * C;
  if (n.cfg.softmax) {
    for (int64_t b = 0; b < B; ++b) {
      std::copy(avg + b * C, avg + (b + 1) * C, k.cat + b * 2 * C);
      std::copy(mx + b * C, mx + (b + 1) * C, k.cat + b * 2 * C + C);
    }
    product(Form::NT, k.cat, n.r1, k.q, B, R, 2 * C);
    add_rows(k.q, n.rb1, B, R);
    for (int64_t b = 0; b < B; ++b) {
      A logit[2];
      for (int i = 0; i < 2; ++i) {
        A acc = 0;
        for (int64_t j = 0; j < R; ++j) acc += relu_of(k.q[b * R + j]) * n.r2[i * R + j];
        logit[i] = n.rb2 ? acc + n.rb2[i] : acc;
      }
      const A top = logit[0] > logit[1] ? logit[0] : logit[1];
      const A e0 = std::exp(logit[0] - top), e1 = std::exp(logit[1] - top);
      w[b * 2] = e0 / (e0 + e1);
      w[b * 2 + 1] = e1 / (e0 + e1);
    }
    for (int64_t b = 0; b < B; ++b) {
      const A w0 = w[b * 2], w1 = w[b * 2 + 1];
      for (int64_t i = b * C; i < (b + 1) * C; ++i) k.u[i] = (w0 * a[i] + w1 * m[i]) / n.t;
    }
  } else {
    for (int64_t i = 0; i < B * C; ++i) k.u[i] = (a[i] + m[i]) / n.t;
  }
  gate_into(k.u, ca, B * C, n.cfg.hard);
}

// (ca (B, C), fusion weights (B, 2) or undefined) from avg, mx (B, C) in the compute type.
inline std::pair<Tensor, Tensor> small_forward(const Tensor& avg, const Tensor& mx, const Params& p, const Config& cfg) {
  const int64_t B = avg.size(0), C = avg.size(1);
  Tensor ca = at::empty({B, C}, avg.options());
  Tensor w = cfg.softmax ? at::empty({B, 2}, avg.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(avg.scalar_type(), "cafusion_small_forward", [&] {
    using A = scalar_t;
    const Net<A> n(p, cfg);
    Work<A> k(n, B, false);
    forward_into(n, avg.data_ptr<A>(), mx.data_ptr<A>(), B, k, ca.data_ptr<A>(), cfg.softmax ? w.data_ptr<A>() : nullptr);
  });
  return {ca, w};
}

// The gradient through the gate, the temperature and the fusion: g_out (2B, C) and, with softmax fusion,
// gw (B, 2) into k; returns sum(g_u * u), of which the temperature's gradient is -1/T.
template <typename A>
double gate_grads(const Net<A>& n, int64_t B, Work<A>& k, const A* ca, const A* gc, const A* pw) {
  const int64_t C = n.C;
  const A *u = k.u, *a = k.out, *m = k.out + B * C;
  A* go = k.g_out;
  const bool hard = n.cfg.hard;
  double g_t = 0;
  for (int64_t b = 0; b < B; ++b) {
    const A w0 = pw ? pw[b * 2] : A(1), w1 = pw ? pw[b * 2 + 1] : A(1);
    A row_t = 0, g0 = 0, g1 = 0;  // per sample in A (so the loop vectorises), over the batch in double
#pragma omp simd reduction(+ : row_t, g0, g1)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = b * C + c;
      const A gu = hard ? ((u[i] > -3 && u[i] < 3) ? gc[i] * A(kOneSixth) : A(0)) : gc[i] * ca[i] * (1 - ca[i]);
      row_t += gu * u[i];
      const A gz = gu / n.t;
      go[i] = gz * w0;
      go[B * C + i] = gz * w1;
      g0 += gz * a[i];
      g1 += gz * m[i];
    }
    g_t += static_cast<double>(row_t);
    if (pw) k.gw[b * 2] = g0, k.gw[b * 2 + 1] = g1;
  }
  return g_t;
}

// A weight's gradient: a new tensor of the weight's shape in the compute type (undefined where absent).
inline Tensor grad_like(const OptTensor& weight, const at::TensorOptions& compute) {
  return weight.has_value() ? at::empty(weight->sizes(), compute) : Tensor();
}

template <typename A>
A* data_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<A>() : nullptr;
}

// (g_avg, g_max, d fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature, ca): the forward runs
// again from avg, mx (B, C) in the compute type, then its gradients from g_ca (B, C) and g_w (B, 2) or
// none. Weight gradients come in their weights' shapes and dtypes; g_avg divided by avg_count (the
// positions each mean covered: N without a mask, 1 to leave it to the caller); ca, the recomputed gate,
// in the compute type.
inline std::vector<Tensor> small_backward(const Tensor& avg, const Tensor& mx, const Params& p, const Config& cfg,
                                          const Tensor& g_ca_in, const OptTensor& g_w, int64_t avg_count) {
  const int64_t B = avg.size(0), C = avg.size(1);
  const auto dtype = avg.scalar_type();
  const auto opts = avg.options();
  const Tensor g_ca = cast(g_ca_in, dtype).contiguous();
  const Tensor g_w_in = cfg.softmax && g_w.has_value() ? cast(*g_w, dtype).contiguous() : Tensor();
  Tensor ca = at::empty({B, C}, opts), w = cfg.softmax ? at::empty({B, 2}, opts) : Tensor();
  std::vector<Tensor> out = {at::empty({B, C}, opts), at::empty({B, C}, opts), grad_like(p.fc1_w, opts),
                             grad_like(p.fc1_b, opts), grad_like(p.fc2_w, opts), grad_like(p.fc2_b, opts),
                             Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  if (cfg.softmax) {
    out[6] = grad_like(p.r1_w, opts), out[7] = grad_like(p.r1_b, opts);
    out[8] = grad_like(p.r2_w, opts), out[9] = grad_like(p.r2_b, opts);
  }
  AT_DISPATCH_FLOATING_TYPES(dtype, "cafusion_small_backward", [&] {
    using A = scalar_t;
    const Net<A> n(p, cfg);
    const int64_t H = n.H, R = n.R;
    Work<A> k(n, B, true);
    A* pw = data_or_null<A>(w);
    forward_into(n, avg.data_ptr<A>(), mx.data_ptr<A>(), B, k, ca.data_ptr<A>(), pw);
    const A* go = k.g_out;
    const double g_t = gate_grads(n, B, k, ca.data_ptr<A>(), g_ca.data_ptr<A>(), pw);
    if (cfg.softmax) {
      const A* extra = data_or_null<A>(g_w_in);
      for (int64_t b = 0; b < B; ++b) {
        const A g0 = k.gw[b * 2] + (extra ? extra[b * 2] : A(0)), g1 = k.gw[b * 2 + 1] + (extra ? extra[b * 2 + 1] : A(0));
        const A dot_w = g0 * pw[b * 2] + g1 * pw[b * 2 + 1];
        k.gl[b * 2] = pw[b * 2] * (g0 - dot_w);
        k.gl[b * 2 + 1] = pw[b * 2 + 1] * (g1 - dot_w);
      }
      A* dr2 = out[8].data_ptr<A>();
      std::fill(dr2, dr2 + 2 * R, A(0));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < R; ++j) {
          const A qj = k.q[b * R + j];
          dr2[j] += k.gl[b * 2] * relu_of(qj);
          dr2[R + j] += k.gl[b * 2 + 1] * relu_of(qj);
          const A dr = k.gl[b * 2] * n.r2[j] + k.gl[b * 2 + 1] * n.r2[R + j];
          k.g_q[b * R + j] = qj <= 0 ? A(0) : dr;  // NaN passes, as in aten
        }
      product(Form::TN, k.g_q, k.cat, out[6].data_ptr<A>(), R, 2 * C, B);
      col_sums(k.g_q, B, R, data_or_null<A>(out[7]));
      col_sums(k.gl, B, 2, data_or_null<A>(out[9]));
      product(Form::NN, k.g_q, n.r1, k.d_cat, B, 2 * C, R);
    }
    A* dw2 = out[4].data_ptr<A>();
    if (w2_as_loops(B, C, H)) {
      product(Form::NT, go, k.w2t, k.d_hid, 2 * B, H, C);
      product(Form::TN, k.hid, go, k.d_w2t, H, C, 2 * B);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h) dw2[c * H + h] = k.d_w2t[h * C + c];
    } else {
      product(Form::NN, go, n.w2, k.d_hid, 2 * B, H, C);
      product(Form::TN, go, k.hid, dw2, C, H, 2 * B);
    }
    col_sums(go, 2 * B, C, data_or_null<A>(out[5]));
    A* dh = k.d_hid;
    const A* pre = k.pre;
    if (cfg.silu) {
      gate_into(pre, k.sig, 2 * B * H, false);
      for (int64_t i = 0; i < 2 * B * H; ++i) dh[i] = dh[i] * k.sig[i] * (1 + pre[i] * (1 - k.sig[i]));
    } else {
      for (int64_t i = 0; i < 2 * B * H; ++i) dh[i] = pre[i] <= 0 ? A(0) : dh[i];
    }
    product(Form::TN, dh, k.s, out[2].data_ptr<A>(), H, C, 2 * B);
    col_sums(dh, 2 * B, H, data_or_null<A>(out[3]));
    product(Form::NN, dh, n.w1, k.d_s, 2 * B, C, H);
    A *ga = out[0].data_ptr<A>(), *gm = out[1].data_ptr<A>();
    const A* dc = cfg.softmax ? k.d_cat : nullptr;
    const A count = static_cast<A>(avg_count);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) {
        ga[b * C + c] = (k.d_s[b * C + c] + (dc ? dc[b * 2 * C + c] : A(0))) / count;
        gm[b * C + c] = k.d_s[(B + b) * C + c] + (dc ? dc[b * 2 * C + C + c] : A(0));
      }
    out[10] = at::full(p.temperature.sizes(), -static_cast<A>(g_t) / n.t, p.temperature.options());
  });
  const OptTensor weights[] = {p.fc1_w, p.fc1_b, p.fc2_w, p.fc2_b, p.r1_w, p.r1_b, p.r2_w, p.r2_b};
  for (size_t i = 0; i < std::size(weights); ++i)
    if (out[i + 2].defined()) out[i + 2] = cast(out[i + 2], weights[i]->scalar_type());
  out.push_back(ca);
  return out;
}

}  // namespace cafusion
