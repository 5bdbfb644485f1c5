// cafusion's native CPU backend: the kernels of cafusion::caft_forward / caft_backward for the CPU key,
// and the op's autograd formula for the AutogradCPU key, both registered with the dispatcher when this
// library loads (the schema itself is defined once, in cafusion/kernels/op.py).
//
// Why C++: eager PyTorch has no fused mean+max(+argmax) reduction, its max-with-index on contiguous
// rows is an unvectorised loop, and at small shapes the Python-level dispatch of a custom op's
// autograd costs more than the block's arithmetic (docs/performance.md has the measurements).
//
//   passes.h        the four big-tensor passes (pool_stats, scale, grad_ca, grad_input)
//   cache.h         reuse of freed y/dx buffers
//   small.h         the small (B, C) path for the whole batch, in one buffer
//
// Tested against the reference composite by tests/test_backends.py, like every backend.

#include <torch/extension.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

#include <string>
#include <tuple>
#include <vector>

#include "cache.h"
#include "common.h"
#include "passes.h"
#include "small.h"

namespace cafusion {

using Out6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Out10 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

inline Config config_of(c10::string_view fusion, c10::string_view gate, c10::string_view act) {
  return {fusion == "softmax", gate == "hardsigmoid", act == "silu"};
}

// The kernels take (B, C, N) views with unit stride along N (contiguous maps) or dense channels_last;
// anything else (a sliced or permuted map) is copied into a contiguous tensor first.
inline bool layout_ok(const Tensor& t) {
  const Tensor t3 = t.flatten(2);
  const int64_t B = t3.size(0), C = t3.size(1), N = t3.size(2);
  if (N > (int64_t(1) << 31) - 1) return false;  // lane indices are int32
  if (!spatial_flattens(t)) return false;
  if (t3.stride(2) == 1 || N == 1) return true;
  return t3.stride(1) == 1 && t3.stride(2) == C && (B == 1 || t3.stride(0) == C * N);
}

inline Tensor usable(const Tensor& t) { return layout_ok(t) ? t : t.contiguous(); }

// dy in a layout the kernels take together with x. Autograd may hand over any strides: an expanded
// scalar for y.sum().backward(), a contiguous gradient for a channels_last y.
inline Tensor like_x(const Tensor& dy, const Tensor& x) {
  if (dy.strides() == x.strides()) return dy;
  if (layout_ok(dy) && rows_layout(dy.flatten(2)) == rows_layout(x.flatten(2))) return dy;
  return at::empty_like(x).copy_(dy);
}

inline Params params_from(const Tensor& fc1_w, const OptTensor& fc1_b, const Tensor& fc2_w, const OptTensor& fc2_b,
                          const OptTensor& r1_w, const OptTensor& r1_b, const OptTensor& r2_w, const OptTensor& r2_b,
                          const Tensor& temperature) {
  return {fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature};
}

inline Tensor nothing(const Tensor& like, at::ScalarType dtype) { return at::empty({0}, like.options().dtype(dtype)); }

// ca's shape as the op returns it, (B, C, 1, ...): broadcastable against x, so that no caller reshapes it.
inline std::vector<int64_t> gate_shape(const Tensor& x) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = x.size(0);
  shape[1] = x.size(1);
  return shape;
}

// The op's CPU forward: (y, ca (B, C, 1, ...) in x's dtype, fusion_w (B, 2) or (B, 0), avg, max, argmax or empty).
Out6 forward_cpu(const Tensor& x_in, const OptTensor& valid, const Tensor& fc1_w, const OptTensor& fc1_b, const Tensor& fc2_w,
                 const OptTensor& fc2_b, const OptTensor& r1_w, const OptTensor& r1_b, const OptTensor& r2_w,
                 const OptTensor& r2_b, const Tensor& temperature, c10::string_view fusion, c10::string_view gate,
                 c10::string_view act, bool need_index) {
  const Config cfg = config_of(fusion, gate, act);
  const Params p = params_from(fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature);
  if (is_lengths(valid)) {  // lengths are checked here, before any work (the Python side only checks types)
    TORCH_CHECK_VALUE(x_in.dim() == 3, "lengths need x of shape (B, C, L), got ", x_in.dim(), " dims; pass a mask");
    checked_lengths(*valid, x_in.size(0), x_in.size(2));
  }
  const Tensor x = usable(x_in);
  const Tensor x3 = x.flatten(2);
  std::vector<Tensor> stats = pool_stats(x3, need_index, valid);
  const auto dtype = compute_dtype(stats[0].scalar_type(), p.fc1_w.scalar_type());
  const Tensor avg = cast(stats[0], dtype), mx = cast(stats[1], dtype);
  auto [ca, w] = small_forward(avg, mx, p, cfg);
  if (!w.defined()) w = at::empty({x.size(0), 0}, avg.options());
  const Tensor ca_x = cast(ca, x3.scalar_type());
  const Tensor idx = stats[2].defined() ? stats[2] : nothing(x, at::kLong);
  return {scale(x, ca_x), ca_x.view(gate_shape(x_in)), w, stats[0], stats[1], idx};
}

// The op's CPU backward: (dx or empty, d fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature),
// absent parameters' gradients empty. The small path is recomputed from the saved statistics.
Out10 backward_cpu(const Tensor& dy_in, const OptTensor& g_ca, const OptTensor& g_w, const Tensor& x_in,
                   const OptTensor& valid, const Tensor& avg_in, const Tensor& mx_in, const Tensor& idx, const Tensor& fc1_w,
                   const OptTensor& fc1_b, const Tensor& fc2_w, const OptTensor& fc2_b, const OptTensor& r1_w,
                   const OptTensor& r1_b, const OptTensor& r2_w, const OptTensor& r2_b, const Tensor& temperature,
                   c10::string_view fusion, c10::string_view gate, c10::string_view act, bool need_x) {
  const Config cfg = config_of(fusion, gate, act);
  const Params p = params_from(fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature);
  const Tensor x = usable(x_in);
  const Tensor dy = like_x(dy_in, x);
  const Tensor x3 = x.flatten(2), dy3 = dy.flatten(2);
  const auto dtype = compute_dtype(avg_in.scalar_type(), p.fc1_w.scalar_type());
  const Tensor avg = cast(avg_in, dtype), mx = cast(mx_in, dtype);
  Tensor d_ca = cast(grad_ca(dy3, x3), dtype);
  if (g_ca.has_value() && g_ca->defined()) d_ca = d_ca + cast(g_ca->reshape(d_ca.sizes()), dtype);
  const OptTensor gw = (cfg.softmax && g_w.has_value() && g_w->defined()) ? g_w : c10::nullopt;
  // the mean's gradient spreads over the real positions: 1 / N per sample without a mask (divided inside
  // the small path), 1 / count with one (below)
  const int64_t avg_count = valid.has_value() ? 1 : x3.size(2);
  std::vector<Tensor> g = small_backward(avg, mx, p, cfg, d_ca, gw, avg_count);
  const Tensor ca = g.back();
  Tensor dx = nothing(x, x.scalar_type());
  if (need_x) {
    TORCH_CHECK(idx.numel() == avg.numel(), "cafusion: the forward ran without the argmax but x needs a gradient");
    const auto stat = avg_in.scalar_type();
    const Tensor count = !valid.has_value() ? Tensor()
                         : is_lengths(valid)  ? valid->to(g[0].scalar_type()).unsqueeze(1)
                                              : valid->sum(1, true).to(g[0].scalar_type());
    const Tensor g_avg = count.defined() ? g[0] / count : g[0];
    dx = grad_input(dy, cast(ca, x3.scalar_type()), cast(g_avg, stat), cast(g[1], stat), idx, valid);
  }
  auto grad = [&](size_t i) { return g[i].defined() ? g[i] : nothing(x, x.scalar_type()); };
  return {dx, grad(2), grad(3), grad(4), grad(5), grad(6), grad(7), grad(8), grad(9), grad(10)};
}

// ---------------------------------------------------------------------------------------------------
// Autograd for CPU tensors. The same formula as cafusion/kernels/op.py's (which serves every other
// device): save x, the statistics and the argmax, call caft_backward. A gradient that must itself be
// differentiable (create_graph=True) comes from the Python side, which differentiates the composite.

py::object* g_double_backward = nullptr;  // set once from Python; never destroyed (no teardown at exit)

using ForwardSig = Out6(const Tensor&, const OptTensor&, const Tensor&, const OptTensor&, const Tensor&,
                         const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                         const Tensor&, c10::string_view, c10::string_view, c10::string_view, bool);
using BackwardSig = Out10(const Tensor&, const OptTensor&, const OptTensor&, const Tensor&, const OptTensor&,
                          const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
                          const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                          const Tensor&, c10::string_view, c10::string_view, c10::string_view, bool);

const c10::TypedOperatorHandle<ForwardSig>& forward_op() {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("cafusion::caft_forward", "").typed<ForwardSig>();
  return op;
}

const c10::TypedOperatorHandle<BackwardSig>& backward_op() {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("cafusion::caft_backward", "").typed<BackwardSig>();
  return op;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Whether autograd records this call: grad mode on, and x or a parameter requiring a gradient.
inline bool needs_graph(const Tensor& x, std::initializer_list<OptTensor> params) {
  if (!at::GradMode::is_enabled()) return false;
  if (x.requires_grad()) return true;
  for (const auto& t : params)
    if (t.has_value() && t->requires_grad()) return true;
  return false;
}

inline OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

struct CaftFunction : public torch::autograd::Function<CaftFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const OptTensor& valid, const Tensor& fc1_w,
                               const OptTensor& fc1_b,
                               const Tensor& fc2_w, const OptTensor& fc2_b, const OptTensor& r1_w,
                               const OptTensor& r1_b, const OptTensor& r2_w, const OptTensor& r2_b,
                               const Tensor& temperature, const std::string& fusion, const std::string& gate,
                               const std::string& act, bool need_index) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, ca, w, avg, mx, idx] = forward_op().call(x, valid, fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b,
                                                      temperature, fusion, gate, act, need_index);
    auto val = [](const OptTensor& t) { return t.has_value() ? *t : Tensor(); };
    ctx->save_for_backward({x, avg, mx, idx, fc1_w, val(fc1_b), fc2_w, val(fc2_b), val(r1_w), val(r1_b), val(r2_w),
                            val(r2_b), temperature, val(valid)});
    ctx->saved_data["fusion"] = fusion;
    ctx->saved_data["gate"] = gate;
    ctx->saved_data["act"] = act;
    ctx->mark_non_differentiable({avg, mx, idx});
    ctx->set_materialize_grads(false);
    return {y, ca, w, avg, mx, idx};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const std::string fusion = ctx->saved_data["fusion"].toStringRef();
    const std::string gate = ctx->saved_data["gate"].toStringRef();
    const std::string act = ctx->saved_data["act"].toStringRef();
    const Tensor &x = s[0], &avg = s[1], &mx = s[2], &idx = s[3];
    const Tensor dy = grads[0].defined() ? grads[0] : at::zeros_like(x);
    const bool need_x = ctx->needs_input_grad(0);
    variable_list out(15);  // one per forward input: x, valid, the nine parameters, the configuration
    if (at::GradMode::is_enabled()) {  // create_graph=True: a differentiable gradient, from Python
      TORCH_CHECK(g_double_backward != nullptr, "cafusion: double backward is not set up");
      py::gil_scoped_acquire gil;
      const auto res = (*g_double_backward)(x, opt(s[13]), opt(s[4]), opt(s[5]), opt(s[6]), opt(s[7]), opt(s[8]),
                                            opt(s[9]), opt(s[10]), opt(s[11]), opt(s[12]), fusion, gate, act,
                                            opt(grads[0]), opt(grads[1]), opt(grads[2]))
                           .cast<std::vector<OptTensor>>();  // gradients of x and the nine parameters
      for (size_t i = 0; i < res.size() && i < 10; ++i) out[i == 0 ? 0 : i + 1] = res[i].has_value() ? *res[i] : Tensor();
      return out;
    }
    auto g = backward_op().call(dy, opt(grads[1]), opt(grads[2]), x, opt(s[13]), avg, mx, idx, s[4], opt(s[5]), s[6],
                                opt(s[7]), opt(s[8]), opt(s[9]), opt(s[10]), opt(s[11]), s[12], fusion, gate, act,
                                need_x);
    const Tensor gs[10] = {std::get<0>(g), std::get<1>(g), std::get<2>(g), std::get<3>(g), std::get<4>(g),
                           std::get<5>(g), std::get<6>(g), std::get<7>(g), std::get<8>(g), std::get<9>(g)};
    out[0] = need_x ? gs[0] : Tensor();
    for (int i = 1; i < 10; ++i) out[i + 1] = s[3 + i].defined() ? gs[i] : Tensor();
    return out;
  }
};

Out6 forward_autograd(const Tensor& x, const OptTensor& valid, const Tensor& fc1_w, const OptTensor& fc1_b, const Tensor& fc2_w,
                      const OptTensor& fc2_b, const OptTensor& r1_w, const OptTensor& r1_b, const OptTensor& r2_w,
                      const OptTensor& r2_b, const Tensor& temperature, c10::string_view fusion, c10::string_view gate,
                      c10::string_view act, bool need_index) {
  if (!needs_graph(x, {fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature})) {
    // Nothing to differentiate (inference, or frozen weights and x): the kernel alone, without the
    // custom Function's bookkeeping (a sixth of a small block's forward in instructions).
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_op().call(x, valid, fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature, fusion, gate,
                             act, need_index);
  }
  const variable_list out =
      CaftFunction::apply(x, valid, fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature, std::string(fusion),
                          std::string(gate), std::string(act), need_index);
  return {out[0], out[1], out[2], out[3], out[4], out[5]};
}

}  // namespace cafusion

TORCH_LIBRARY_IMPL(cafusion, CPU, m) {
  m.impl("caft_forward", TORCH_FN(cafusion::forward_cpu));
  m.impl("caft_backward", TORCH_FN(cafusion::backward_cpu));
}

TORCH_LIBRARY_IMPL(cafusion, AutogradCPU, m) { m.impl("caft_forward", TORCH_FN(cafusion::forward_autograd)); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace cafusion;
  m.doc() = "cafusion's native CPU backend (built on first use by cafusion.kernels.backends.native)";
  m.def("forward", &forward_cpu, "the op's CPU forward, called directly (tests, profiling)");
  m.def("backward", &backward_cpu, "the op's CPU backward, called directly (tests, profiling)");
  m.def("pool_stats", &pool_stats, "(avg, max, first argmax or None) over the last dim of (B, C, N)",
        py::arg("x3"), py::arg("need_index"), py::arg("valid") = py::none());
  m.def("scale", &scale, "y = x * ca[:, :, None]");
  m.def("grad_ca", &grad_ca, "sum over N of dy * x");
  m.def("grad_input", &grad_input, "dx = dy * ca + g_avg (at real positions) + g_max at the argmax", py::arg("dy"),
        py::arg("ca"), py::arg("g_avg"), py::arg("g_max"), py::arg("idx"), py::arg("valid") = py::none());
  m.def("set_double_backward", [](py::object fn) { g_double_backward = new py::object(std::move(fn)); },
        "the Python function that returns differentiable gradients (create_graph=True)");
  m.def("set_gather_rows", [](bool on) { g_gather_rows = on; }, "pool short float32 rows 16 at a time (AVX-512)");
  m.def("gather_rows", [] { return g_gather_rows; }, "whether short rows are pooled through gathers");
  m.def("set_gather_max_n", [](int64_t n) { g_gather_max_n = std::min<int64_t>(n, kBlock); },
        "the longest rows (<= 1024) pooled through the gathers");
  m.def("gather_max_n", [] { return g_gather_max_n; }, "the longest rows pooled through the gathers");
  m.def("set_loop_macs", [](int64_t v) { g_loop_macs = v; }, "largest small-path product (multiply-adds) run as loops");
  m.def("loop_macs", [] { return g_loop_macs; }, "largest small-path product (multiply-adds) run as loops");
  m.def("cache_set_limit", [](int64_t bytes) { return BufferCache::get().set_limit(static_cast<size_t>(bytes)); },
        "bound the output-buffer cache (0 turns it off); returns the bytes it still holds");
  m.def("cache_held", [] { return BufferCache::get().held(); }, "bytes of freed outputs the cache holds");
  m.def("cache_limit", [] { return BufferCache::get().limit(); }, "the cache's limit in bytes");
}
