// cafusion's fast path on the CPU: the whole block in one call per direction.
//
// Why C++: eager PyTorch has no fused mean+max(+argmax) reduction, its max-with-index on contiguous
// rows is an unvectorised loop, fresh full-size outputs pay page faults, and at small shapes the ~15
// (forward) / ~40 (backward) Python-level ops of the small path cost more than the arithmetic.
//
//   passes.h        the four big-tensor passes (pool_stats, scale, grad_ca, grad_input)
//   cache.h         reuse of freed y/dx buffers
//   small_direct.h  the small (B, C) path as loops, for small problems
//   small_aten.h    the small path as ATen calls, for large B*C*H
//
// The math is that of cafusion/kernels/small.py and cafusion/kernels/cpu.py; the tests compare all of
// it with the reference composite. Built by cafusion.kernels.native (torch.utils.cpp_extension).

#include <torch/extension.h>

#include <vector>

#include "cache.h"
#include "common.h"
#include "passes.h"
#include "small_aten.h"
#include "small_direct.h"

namespace cafusion {

// x is (B, C, *spatial). Returns (y with x's shape and strides, ca (B, C) in x's dtype, fusion_w or
// None, avg, max, argmax or None, *state). state is small.Forward's fields from the ATen small path,
// or empty when the loops ran (the backward recomputes them).
std::vector<Tensor> forward(const Tensor& x, const std::vector<OptTensor>& params, bool softmax, bool hard,
                            bool silu, bool need_index) {
  const Params p = params_of(params);
  const Tensor x3 = x.flatten(2);
  std::vector<Tensor> stats = pool_stats(x3, need_index);
  const auto dtype = compute_dtype(stats[0].scalar_type(), p.fc1_w.scalar_type());
  const Tensor avg = cast(stats[0], dtype), mx = cast(stats[1], dtype);
  std::vector<Tensor> state;
  Tensor ca, w;
  if (direct_ok(p, dtype, x3.size(0), softmax)) {
    std::tie(ca, w) = direct_forward(avg, mx, p, softmax, hard, silu);
  } else {
    state = small_forward(avg, mx, p, softmax, hard, silu);
    ca = state[kCa];
    w = state[kW];
  }
  const Tensor ca_x = cast(ca, x3.scalar_type());
  std::vector<Tensor> out = {scale(x, ca_x), ca_x, w, stats[0], stats[1], stats[2]};
  out.insert(out.end(), state.begin(), state.end());
  return out;
}

// dy and x are (B, C, *spatial) in the same layout. Returns (dx with dy's shape and strides or None,
// g_avg, g_max, d fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature). g_avg/g_mx
// (optional) are upstream gradients of the statistics (the custom op's extra outputs).
std::vector<Tensor> backward(const Tensor& dy, const OptTensor& g_ca, const OptTensor& g_w, const OptTensor& g_avg,
                             const OptTensor& g_mx, const Tensor& x, const Tensor& avg_in, const Tensor& mx_in,
                             const OptTensor& idx, const std::vector<OptTensor>& params,
                             const std::vector<OptTensor>& state_in, bool softmax, bool hard, bool silu, bool need_x) {
  const Params p = params_of(params);
  const Tensor x3 = x.flatten(2), dy3 = dy.flatten(2);
  const auto dtype = compute_dtype(avg_in.scalar_type(), p.fc1_w.scalar_type());
  const Tensor avg = cast(avg_in, dtype), mx = cast(mx_in, dtype);
  Tensor d_ca = cast(grad_ca(dy3, x3), dtype);
  if (g_ca.has_value()) d_ca = d_ca + cast(g_ca->reshape(d_ca.sizes()), dtype);
  const OptTensor gw = softmax ? g_w : c10::nullopt;
  std::vector<Tensor> g;
  Tensor ca;
  if (state_in.empty() && direct_ok(p, dtype, x3.size(0), softmax)) {
    g = direct_backward(avg, mx, p, d_ca, gw, softmax, hard, silu);
    ca = g.back();
    g.pop_back();
  } else {
    std::vector<Tensor> state;
    if (state_in.empty()) {
      state = small_forward(avg, mx, p, softmax, hard, silu);
    } else {
      TORCH_CHECK(state_in.size() == kFwCount, "cafusion native: expected ", int(kFwCount), " state tensors");
      for (const OptTensor& t : state_in) state.push_back(t.has_value() ? *t : Tensor());
    }
    g = small_backward(state, p, d_ca, gw, softmax, hard, silu);
    ca = state[kCa];
  }
  Tensor dx;
  if (need_x) {
    TORCH_CHECK(idx.has_value() && idx->numel() == avg.numel(),
                "cafusion native: the forward ran without the argmax but x needs a gradient");
    const Tensor d_avg = g_avg.has_value() ? g[0] + cast(*g_avg, dtype) : g[0];
    const Tensor d_mx = g_mx.has_value() ? g[1] + cast(*g_mx, dtype) : g[1];
    const auto stat = avg_in.scalar_type();
    dx = grad_input(dy, cast(ca, x3.scalar_type()), cast(d_avg / x3.size(2), stat), cast(d_mx, stat), *idx);
  }
  g.insert(g.begin(), dx);
  return g;
}

}  // namespace cafusion

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace cafusion;
  m.doc() = "cafusion's fused CPU kernels (built on first use by cafusion.kernels.native)";
  m.def("pool_stats", &pool_stats, "(avg, max, first argmax or None) over the last dim of (B, C, N)");
  m.def("scale", &scale, "y = x * ca[:, :, None]");
  m.def("grad_ca", &grad_ca, "sum over N of dy * x");
  m.def("grad_input", &grad_input, "dx = dy * ca + g_avg + g_max at the argmax");
  m.def("forward", &forward, "the whole block forward");
  m.def("backward", &backward, "the whole block backward");
  m.def("cache_set_limit", [](int64_t bytes) { return BufferCache::get().set_limit(static_cast<size_t>(bytes)); },
        "bound the output-buffer cache (0 turns it off); returns the bytes it still holds");
  m.def("cache_held", [] { return BufferCache::get().held(); }, "bytes of freed outputs the cache holds");
  m.def("cache_limit", [] { return BufferCache::get().limit(); }, "the cache's limit in bytes");
}
