// The four big-tensor passes of the block on (B, C, N) views: one loop over memory each.
//
// Each works on a view whose spatial (contiguous maps) or channel (channels_last) stride is 1; per-lane
// accumulators let the compiler vectorise the reductions, and float partial sums are flushed into a
// double every kBlock elements so that long rows keep float64-like accuracy.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cache.h"
#include "common.h"

namespace cafusion {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

constexpr int64_t kLanes = 16;    // independent accumulators per row: one AVX-512 register of floats
constexpr int64_t kBlock = 1024;  // float partial sums are flushed into a double this often (accuracy)
constexpr int64_t kChunk = 256;   // channels per task for channels_last maps (stack-sized accumulators)
constexpr int64_t kShortRow = 64;   // rows shorter than this skip the 16-lane machinery (pool_rows_short)
constexpr int64_t kGrain = 1 << 15;  // elements per parallel task: below this, one thread does it all

struct View {
  int64_t b, c, n;  // strides of a (B, C, N) tensor, in elements
};

inline View view_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// True when the (B, C, N) tensor's rows along N are unit-stride (contiguous maps), false when its
// channels are (channels_last). The Python side only sends tensors of one of the two kinds.
inline bool rows_layout(const Tensor& t) {
  if (t.stride(2) == 1 || t.size(2) == 1) return true;
  TORCH_CHECK(t.stride(1) == 1 || t.size(1) == 1, "cafusion native: (B, C, N) needs a unit stride along C or N");
  return false;
}

inline void check_same_layout(const Tensor& a, const Tensor& b) {
  TORCH_CHECK(rows_layout(a) == rows_layout(b), "cafusion native: tensors of different layouts");
}

// The running (max, first index) of one lane: a NaN wins over every number and stays; among equal
// maxima the earliest position stays (strict >), which is where AdaptiveMaxPool sends the gradient.
template <typename A>
inline bool takes_over(A v, A m) {
  return v > m || (v != v && m == m);
}

// The row's (max, first index) from the lanes' (max, first index): a NaN anywhere wins (its earliest
// position), else the largest value at its earliest position. Two flat passes over the lanes (cheap
// next to a merge with branches, which cost as much as the whole row at 14x14 maps).
template <typename A>
inline void reduce_lanes(const A* m, const int32_t* ix, A* best_out, int64_t* at_out) {
  A best = m[0];
  bool nan = false;
  for (int64_t l = 0; l < kLanes; ++l) {
    nan |= m[l] != m[l];
    best = m[l] > best ? m[l] : best;
  }
  int32_t at = std::numeric_limits<int32_t>::max();
  for (int64_t l = 0; l < kLanes; ++l) {
    const bool hit = nan ? m[l] != m[l] : m[l] == best;
    at = (hit && ix[l] < at) ? ix[l] : at;
  }
  *best_out = nan ? std::numeric_limits<A>::quiet_NaN() : best;
  *at_out = at;
}

// Sum of the lanes by halving (vectorises; a chain of 16 dependent adds does not).
template <typename A>
inline A sum_lanes(A* s) {
  for (int64_t w = kLanes / 2; w >= 1; w /= 2)
    for (int64_t l = 0; l < w; ++l) s[l] += s[l + w];
  const A total = s[0];
  for (int64_t l = 0; l < kLanes; ++l) s[l] = 0;
  return total;
}

// ---------------------------------------------------------------------------------------------------
// pool_stats: per (b, c) the mean, the max over N and its first position.

template <typename T>
void pool_row(const T* p, int64_t n, acc_t<T>* avg, acc_t<T>* mx, int64_t* idx) {
  using A = acc_t<T>;
  A s[kLanes], m[kLanes];
  int32_t ix[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) {
    s[l] = 0;
    m[l] = -std::numeric_limits<A>::infinity();
    ix[l] = static_cast<int32_t>(l);
  }
  double total = 0;
  int64_t k = 0;
  const int64_t full = n - n % kLanes;
  while (k < full) {
    const int64_t stop = std::min(full, k + kBlock);
    for (; k < stop; k += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) {
        const A v = static_cast<A>(p[k + l]);
        s[l] += v;
        const bool take = takes_over(v, m[l]);
        m[l] = take ? v : m[l];
        ix[l] = take ? static_cast<int32_t>(k + l) : ix[l];
      }
    }
    total += sum_lanes(s);
  }
  for (int64_t l = 0; k < n; ++k, ++l) {  // the tail, in the first lanes
    const A v = static_cast<A>(p[k]);
    total += v;
    if (takes_over(v, m[l])) {
      m[l] = v;
      ix[l] = static_cast<int32_t>(k);
    }
  }
  // a lane that saw only -inf (or nothing) keeps its own lane number; for an all -inf row that gives
  // position 0, as torch does, and otherwise such a lane never wins.
  A best;
  int64_t at;
  reduce_lanes<A>(m, ix, &best, &at);
  *avg = static_cast<A>(total / static_cast<double>(n));
  *mx = best;
  *idx = at;
}

#if defined(__AVX512F__)
// Short float32 rows (7x7, 14x14 maps, N <= kBlock): per-row lane bookkeeping (init, merge, tail)
// costs ~50 ns, more than such a row's data. Here one AVX-512 lane is one row: 16 rows walk N together
// through gathered loads (16 rows x 64-byte lines stay in L1), and no lanes are merged. Each row's sum
// is added in exactly the order of the row kernels (pool_rows_short below kShortRow, else pool_row's
// 16 float lanes, halving tree, double tail), so both variants give the same bits.
inline void pool_rows16_f32(const float* base, const int32_t* offsets, int64_t width, int64_t n, float* avg,
                            float* mx, int64_t* idx) {
  const __m512i off = _mm512_loadu_si512(offsets);
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512i ix = _mm512_setzero_si512();
  auto see = [&](const __m512 v, int64_t k) {
    const __mmask16 take = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) |
                           (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) & _mm512_cmp_ps_mask(m, m, _CMP_ORD_Q));
    m = _mm512_mask_blend_ps(take, m, v);
    ix = _mm512_mask_blend_epi32(take, ix, _mm512_set1_epi32(static_cast<int32_t>(k)));
  };
  alignas(64) double s[16];
  alignas(64) float sf[16];
  if (n < kShortRow) {  // pool_rows_short: one float sum per row, divided in float
    __m512 acc = _mm512_setzero_ps();
    for (int64_t k = 0; k < n; ++k) {
      const __m512 v = _mm512_i32gather_ps(off, base + k, 4);
      acc = _mm512_add_ps(acc, v);
      see(v, k);
    }
    _mm512_store_ps(sf, acc);
    for (int64_t l = 0; l < width; ++l) sf[l] = sf[l] / static_cast<float>(n);
  } else {  // pool_row: lane l of a row sums its positions k = l mod 16, the lanes by halving, the tail in double
    __m512 acc[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) acc[l] = _mm512_setzero_ps();
    const int64_t full = n - n % kLanes;
    for (int64_t k = 0; k < full; k += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) {
        const __m512 v = _mm512_i32gather_ps(off, base + k + l, 4);
        acc[l] = _mm512_add_ps(acc[l], v);
        see(v, k + l);
      }
    }
    for (int64_t w = kLanes / 2; w >= 1; w /= 2)
      for (int64_t l = 0; l < w; ++l) acc[l] = _mm512_add_ps(acc[l], acc[l + w]);
    __m512d s_lo = _mm512_cvtps_pd(_mm512_castps512_ps256(acc[0]));
    __m512d s_hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[0]), 1)));
    for (int64_t k = full; k < n; ++k) {
      const __m512 v = _mm512_i32gather_ps(off, base + k, 4);
      s_lo = _mm512_add_pd(s_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
      s_hi = _mm512_add_pd(s_hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
      see(v, k);
    }
    _mm512_store_pd(s, s_lo);
    _mm512_store_pd(s + 8, s_hi);
    for (int64_t l = 0; l < width; ++l) sf[l] = static_cast<float>(s[l] / static_cast<double>(n));
  }
  alignas(64) float mm[16];
  alignas(64) int32_t ii[16];
  _mm512_store_ps(mm, m);
  _mm512_store_si512(ii, ix);
  for (int64_t l = 0; l < width; ++l) {
    avg[l] = sf[l];
    mx[l] = mm[l];
    idx[l] = ii[l];
  }
}

#endif

// Whether short float32 rows are pooled 16 at a time through AVX-512 gathers. Which is faster depends on
// the CPU (1.7x faster on the machine it was written on, 4x slower on a Zen 4); the results are the same
// bits either way (same order of additions, same first max), so this is only a speed switch: off unless
// CAFUSION_POOL_GATHERS=1 (cafusion/kernels/backends/native/__init__.py). Nothing measures it at load time.
inline bool g_gather_rows = false;
inline int64_t g_gather_max_n = 0;  // the longest rows that go through the gathers

// Short rows go through the gathers when chosen and every row offset fits their int32 indices. (Only
// pooling: for grad_ca's two inputs the per-row dot product measured faster everywhere it was tried.)
inline bool gather_rows(const Tensor& t) {
  if (!g_gather_rows || t.size(2) > g_gather_max_n) return false;
  const int64_t span = (t.size(0) - 1) * t.stride(0) + (t.size(1) - 1) * t.stride(1);
  return rows_layout(t) && t.size(2) <= kBlock && span < (int64_t(1) << 31) - t.size(2);
}

// Offsets of rows r0 .. r0 + kLanes - 1 of a (B, C, N) view from the first of them (a short last group
// repeats its last row); returns the first row's offset.
inline int64_t group_offsets(View v, int64_t C, int64_t r0, int64_t width, int32_t* off) {
  const int64_t first = (r0 / C) * v.b + (r0 % C) * v.c;
  for (int64_t l = 0; l < kLanes; ++l) {
    const int64_t r = r0 + std::min(l, width - 1);
    off[l] = static_cast<int32_t>((r / C) * v.b + (r % C) * v.c - first);
  }
  return first;
}

// channels_last: one task owns a sample and a chunk of <= kChunk channels and walks N.
template <typename T>
void pool_chunk(const T* base, View v, int64_t width, int64_t n, acc_t<T>* avg, acc_t<T>* mx, int64_t* idx) {
  using A = acc_t<T>;
  A s[kChunk], m[kChunk];
  double total[kChunk];
  int32_t ix[kChunk];
  for (int64_t c = 0; c < width; ++c) {
    s[c] = 0;
    total[c] = 0;
    m[c] = -std::numeric_limits<A>::infinity();
    ix[c] = 0;
  }
  for (int64_t k = 0; k < n; ++k) {
    const T* row = base + k * v.n;
    const int32_t pos = static_cast<int32_t>(k);
    for (int64_t c = 0; c < width; ++c) {
      const A x = static_cast<A>(row[c]);
      s[c] += x;
      const bool take = takes_over(x, m[c]);
      m[c] = take ? x : m[c];
      ix[c] = take ? pos : ix[c];
    }
    if ((k + 1) % kBlock == 0 || k + 1 == n) {
      for (int64_t c = 0; c < width; ++c) {
        total[c] += s[c];
        s[c] = 0;
      }
    }
  }
  for (int64_t c = 0; c < width; ++c) {
    avg[c] = static_cast<A>(total[c] / static_cast<double>(n));
    mx[c] = m[c];
    idx[c] = ix[c];
  }
}

// Tasks for channels_last passes: (sample, chunk of channels) pairs.
struct Chunks {
  int64_t per_sample, count;
};
inline Chunks chunks_of(int64_t b, int64_t c) {
  const int64_t per = (c + kChunk - 1) / kChunk;
  return {per, b * per};
}

inline int64_t grain_rows(int64_t n) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, n)); }

// Runs f(r0, width) over the rows in groups of kLanes (the last group may be short), in parallel.
template <typename F>
void each_row_group(int64_t rows, int64_t n, const F& f) {
  const int64_t groups = (rows + kLanes - 1) / kLanes;
  at::parallel_for(0, groups, grain_rows(n * kLanes), [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; ++g) f(g * kLanes, std::min(kLanes, rows - g * kLanes));
  });
}

// Rows shorter than this skip the 16-lane machinery (its init, tail and merge cost more than the row):
// kRowsAtOnce rows walk N together as independent scalar chains, which the core overlaps.
constexpr int64_t kRowsAtOnce = 8;

template <typename T>
void pool_rows_short(const T* const* rows, int64_t width, int64_t n, acc_t<T>* avg, acc_t<T>* mx, int64_t* idx) {
  using A = acc_t<T>;
  A s[kRowsAtOnce], m[kRowsAtOnce];
  int64_t at[kRowsAtOnce];
  for (int64_t j = 0; j < kRowsAtOnce; ++j) {
    s[j] = 0;
    m[j] = -std::numeric_limits<A>::infinity();
    at[j] = 0;  // an all -inf row: position 0, as torch
  }
  for (int64_t k = 0; k < n; ++k) {
    for (int64_t j = 0; j < kRowsAtOnce; ++j) {
      const A val = static_cast<A>(rows[j][k]);
      s[j] += val;  // n < kShortRow terms: float (double for double) keeps the mean's error at a few ulps
      const bool take = takes_over(val, m[j]);
      m[j] = take ? val : m[j];
      at[j] = take ? k : at[j];
    }
  }
  for (int64_t j = 0; j < width; ++j) {
    avg[j] = s[j] / static_cast<A>(n);
    mx[j] = m[j];
    idx[j] = at[j];
  }
}

// Runs f(r0, width) over the rows in blocks of kRowsAtOnce (the last may be short), in parallel.
template <typename F>
void each_row_block(int64_t rows, int64_t n, const F& f) {
  const int64_t blocks = (rows + kRowsAtOnce - 1) / kRowsAtOnce;
  at::parallel_for(0, blocks, grain_rows(n * kRowsAtOnce), [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; ++g) f(g * kRowsAtOnce, std::min(kRowsAtOnce, rows - g * kRowsAtOnce));
  });
}

// Rows shorter than kTinyRow (a 1D map of 5 or 10 positions) in a (B, C, N) tensor stored as B * C rows
// one after another: scale, grad_ca and grad_input run their row loops at a length fixed at compile
// time (with_fixed_n), as a loop of unknown length costs more in setup and tail than such a row's work.
// Per training step at 100x25x10 (callgrind, instructions): scale 151K -> 66K, grad_ca 341K -> 118K,
// grad_input 256K -> 104K. The same arithmetic in the same order, so the same numbers.
constexpr int64_t kTinyRow = 16;

inline bool dense_rows(const Tensor& t) {
  const int64_t B = t.size(0), C = t.size(1), N = t.size(2);
  return (t.stride(2) == 1 || N == 1) && (t.stride(1) == N || C == 1) && (t.stride(0) == C * N || B == 1);
}

// f(std::integral_constant<int64_t, n>{}) for 1 <= n < kTinyRow: row loops of a length the compiler
// knows, which it unrolls into straight vector code.
template <int64_t K = 1, typename F>
void with_fixed_n(int64_t n, const F& f) {
  if constexpr (K < kTinyRow) {
    if (n == K) return f(std::integral_constant<int64_t, K>{});
    with_fixed_n<K + 1>(n, f);
  }
}

template <typename T>
void pool_impl(const Tensor& x3, Tensor& avg, Tensor& mx, Tensor& idx) {
  using A = acc_t<T>;
  const int64_t B = x3.size(0), C = x3.size(1), N = x3.size(2);
  const View v = view_of(x3);
  const T* x = x3.data_ptr<T>();
  A* pa = avg.data_ptr<A>();
  A* pm = mx.data_ptr<A>();
  int64_t* pi = idx.data_ptr<int64_t>();
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (gather_rows(x3)) {
      each_row_group(B * C, N, [&](int64_t r0, int64_t width) {
        alignas(64) int32_t off[kLanes];
        const int64_t first = group_offsets(v, C, r0, width, off);
        pool_rows16_f32(x + first, off, width, N, pa + r0, pm + r0, pi + r0);
      });
      return;
    }
  }
#endif
  if (rows_layout(x3) && N < kShortRow) {  // short rows: kRowsAtOnce rows per loop, no lane bookkeeping
    each_row_block(B * C, N, [&](int64_t r0, int64_t width) {
      const T* rows[kRowsAtOnce];
      for (int64_t j = 0; j < kRowsAtOnce; ++j) {
        const int64_t r = r0 + std::min(j, width - 1);
        rows[j] = x + (r / C) * v.b + (r % C) * v.c;
      }
      pool_rows_short<T>(rows, width, N, pa + r0, pm + r0, pi + r0);
    });
    return;
  }
  if (rows_layout(x3)) {
    at::parallel_for(0, B * C, grain_rows(N), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t b = r / C, c = r % C;
        pool_row<T>(x + b * v.b + c * v.c, N, pa + r, pm + r, pi + r);
      }
    });
    return;
  }
  const Chunks ch = chunks_of(B, C);
  at::parallel_for(0, ch.count, grain_rows(N * std::min(C, kChunk)), [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t b = t / ch.per_sample, c0 = (t % ch.per_sample) * kChunk;
      const int64_t o = b * C + c0;
      pool_chunk<T>(x + b * v.b + c0 * v.c, v, std::min(kChunk, C - c0), N, pa + o, pm + o, pi + o);
    }
  });
}

// Padded batches. The op's ``valid`` is either (B,) integer lengths along the last dim of a (B, C, L)
// map (the real positions of a sample are the prefix [0, len) of each of its rows), or a (B, N) bool
// mask of real positions (2D/3D maps, padding anywhere).

inline bool is_lengths(const OptTensor& valid) { return valid.has_value() && valid->scalar_type() != at::kBool; }

// The lengths as int64, checked before any work: one per sample, each in [1, N]. Same messages as
// cafusion.masking's Python checks (ValueError in Python).
inline Tensor checked_lengths(const Tensor& lengths, int64_t B, int64_t N) {
  TORCH_CHECK_VALUE(lengths.dim() == 1 && lengths.size(0) == B, "lengths must have shape (", B,
                    ",) (one length per sample), got ", lengths.sizes());
  TORCH_CHECK_VALUE(at::isIntegralType(lengths.scalar_type(), false), "lengths must hold integer lengths, got ",
                    lengths.scalar_type());
  const Tensor len = lengths.to(at::kLong).contiguous();
  const int64_t* p = len.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK_VALUE(p[b] >= 1 && p[b] <= N, "lengths must lie in [1, ", N, "] (the last dim of x), got ", p[b]);
  return len;
}

template <typename T>
constexpr int64_t kLineElems = 64 / static_cast<int64_t>(sizeof(T));  // elements per 64-byte cache line

// Per (b, c) statistics of the prefix [0, len[b]) of each row: the kernel the unmasked pass uses at that
// row length, in tasks of up to kLanes rows of one sample (so a task's rows share their length).
template <typename T>
void pool_prefix_impl(const Tensor& x3, const int64_t* len, Tensor& avg, Tensor& mx, Tensor& idx) {
  using A = acc_t<T>;
  const int64_t B = x3.size(0), C = x3.size(1), N = x3.size(2);
  const View v = view_of(x3);
  const T* x = x3.data_ptr<T>();
  A* pa = avg.data_ptr<A>();
  A* pm = mx.data_ptr<A>();
  int64_t* pi = idx.data_ptr<int64_t>();
  if (!rows_layout(x3)) {  // channels_last: the chunk walks its sample's real positions only
    const Chunks ch = chunks_of(B, C);
    at::parallel_for(0, ch.count, grain_rows(N * std::min(C, kChunk)), [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t) {
        const int64_t b = t / ch.per_sample, c0 = (t % ch.per_sample) * kChunk;
        const int64_t o = b * C + c0;
        pool_chunk<T>(x + b * v.b + c0 * v.c, v, std::min(kChunk, C - c0), len[b], pa + o, pm + o, pi + o);
      }
    });
    return;
  }
  const int64_t per = (C + kLanes - 1) / kLanes;
  at::parallel_for(0, B * per, grain_rows(N * kLanes), [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t b = t / per, c0 = (t % per) * kLanes, width = std::min(kLanes, C - c0), n = len[b];
      const int64_t r0 = b * C + c0;
      const T* first = x + b * v.b + c0 * v.c;
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>) {
        if (g_gather_rows && n <= g_gather_max_n && (kLanes - 1) * v.c + n < (int64_t(1) << 31)) {
          alignas(64) int32_t off[kLanes];
          group_offsets(v, C, r0, width, off);  // rows of one sample: multiples of v.c from `first`
          pool_rows16_f32(first, off, width, n, pa + r0, pm + r0, pi + r0);
          continue;
        }
      }
#endif
      if (n < kShortRow) {
        for (int64_t j0 = 0; j0 < width; j0 += kRowsAtOnce) {
          const int64_t w = std::min(kRowsAtOnce, width - j0);
          const T* rows[kRowsAtOnce];
          for (int64_t j = 0; j < kRowsAtOnce; ++j) rows[j] = first + (j0 + std::min(j, w - 1)) * v.c;
          pool_rows_short<T>(rows, w, n, pa + r0 + j0, pm + r0 + j0, pi + r0 + j0);
        }
        continue;
      }
      for (int64_t j = 0; j < width; ++j) {
        const T* row = first + j * v.c;
        pool_row<T>(row, n, pa + r0 + j, pm + r0 + j, pi + r0 + j);
        // A row read only in part breaks the hardware prefetcher's stream at every row end, and the next
        // row starts with a stall: touching the padding's lines keeps the stream going (100x256x1000
        // float32, lengths 750, one thread: 11.5 ms without, 6.2 with, 7.9 unpadded; profile_padding.py).
        for (int64_t k = n; k < N; k += kLineElems<T>) __builtin_prefetch(row + k);
      }
    }
  });
}

// A (B, N) mask: a sample whose real positions happen to be a prefix pools like lengths; any other
// sample goes position by position.
inline std::vector<int64_t> prefix_lengths(const Tensor& valid) {  // -1 where a sample's mask is no prefix
  const int64_t B = valid.size(0), N = valid.size(1);
  const bool* v = valid.data_ptr<bool>();
  std::vector<int64_t> out(B);
  for (int64_t b = 0; b < B; ++b) {
    const bool* row = v + b * N;
    int64_t len = 0;
    while (len < N && row[len]) ++len;
    int64_t k = len;
    while (k < N && !row[k]) ++k;
    out[b] = k == N ? len : -1;
  }
  return out;
}

inline bool all_prefixes(const std::vector<int64_t>& prefix) {
  return std::all_of(prefix.begin(), prefix.end(), [](int64_t n) { return n > 0; });
}

template <typename T>
void pool_masked_impl(const Tensor& x3, const Tensor& valid, const std::vector<int64_t>& prefix, Tensor& avg,
                      Tensor& mx, Tensor& idx) {
  using A = acc_t<T>;
  const int64_t B = x3.size(0), C = x3.size(1), N = x3.size(2);
  const View v = view_of(x3);
  const T* x = x3.data_ptr<T>();
  const bool* vm = valid.data_ptr<bool>();
  A* pa = avg.data_ptr<A>();
  A* pm = mx.data_ptr<A>();
  int64_t* pi = idx.data_ptr<int64_t>();
  const bool rows = rows_layout(x3);
  at::parallel_for(0, B * C, rows ? grain_rows(N) : kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t b = r / C, c = r % C;
      const T* p = x + b * v.b + c * v.c;
      if (rows && prefix[b] > 0) {
        pool_row<T>(p, prefix[b], pa + r, pm + r, pi + r);
        continue;
      }
      const bool* ok = vm + b * N;
      double total = 0;
      int64_t count = 0, at = 0;
      A best = -std::numeric_limits<A>::infinity();
      bool seen = false;
      for (int64_t k = 0; k < N; ++k) {
        if (!ok[k]) continue;
        const A val = static_cast<A>(p[k * v.n]);
        total += val;
        ++count;
        if (!seen || takes_over(val, best)) {  // the first real position starts the max (all -inf: it wins)
          best = val;
          at = k;
          seen = true;
        }
      }
      pa[r] = static_cast<A>(total / static_cast<double>(count));
      pm[r] = best;
      pi[r] = at;
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// scale: y = x * ca (ca already in x's dtype, so the product rounds exactly as torch.mul's).

template <typename T>
void scale_impl(const Tensor& x3, const Tensor& ca, Tensor& y3) {
  using A = acc_t<T>;
  const int64_t B = x3.size(0), C = x3.size(1), N = x3.size(2);
  const View vx = view_of(x3), vy = view_of(y3);
  const T* x = x3.data_ptr<T>();
  const T* g = ca.data_ptr<T>();
  T* y = y3.data_ptr<T>();
  if (N < kTinyRow && dense_rows(x3) && dense_rows(y3)) {
    with_fixed_n(N, [&](auto n) {
      at::parallel_for(0, B * C, grain_rows(n), [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          const A f = static_cast<A>(g[r]);
          for (int64_t k = 0; k < n; ++k) y[r * n + k] = static_cast<T>(static_cast<A>(x[r * n + k]) * f);
        }
      });
    });
    return;
  }
  if (rows_layout(x3)) {
    at::parallel_for(0, B * C, grain_rows(N), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t b = r / C, c = r % C;
        const T* xr = x + b * vx.b + c * vx.c;
        T* yr = y + b * vy.b + c * vy.c;
        const A f = static_cast<A>(g[r]);
        for (int64_t k = 0; k < N; ++k) yr[k] = static_cast<T>(static_cast<A>(xr[k]) * f);
      }
    });
    return;
  }
  at::parallel_for(0, B * N, grain_rows(C), [&](int64_t lo, int64_t hi) {
    A f[kChunk];
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t b = r / N, k = r % N;
      const T* xr = x + b * vx.b + k * vx.n;
      T* yr = y + b * vy.b + k * vy.n;
      for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
        const int64_t w = std::min(kChunk, C - c0);
        for (int64_t c = 0; c < w; ++c) f[c] = static_cast<A>(g[b * C + c0 + c]);
        for (int64_t c = 0; c < w; ++c) yr[c0 + c] = static_cast<T>(static_cast<A>(xr[c0 + c]) * f[c]);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// grad_ca: per (b, c) the sum over N of dy * x.

template <typename T>
double dot_row(const T* a, const T* b, int64_t n) {
  using A = acc_t<T>;
  A s[kLanes] = {};
  double total = 0;
  int64_t k = 0;
  const int64_t full = n - n % kLanes;
  while (k < full) {
    const int64_t stop = std::min(full, k + kBlock);
    for (; k < stop; k += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) s[l] += static_cast<A>(a[k + l]) * static_cast<A>(b[k + l]);
    total += sum_lanes(s);
  }
  for (; k < n; ++k) total += static_cast<A>(a[k]) * static_cast<A>(b[k]);
  return total;
}

template <typename T>
void grad_ca_impl(const Tensor& dy3, const Tensor& x3, Tensor& out) {
  using A = acc_t<T>;
  const int64_t B = x3.size(0), C = x3.size(1), N = x3.size(2);
  const View vx = view_of(x3), vd = view_of(dy3);
  const T* x = x3.data_ptr<T>();
  const T* d = dy3.data_ptr<T>();
  A* o = out.data_ptr<A>();
  if (N < kTinyRow && dense_rows(x3) && dense_rows(dy3)) {  // the same sums as dot_row's below kLanes
    with_fixed_n(N, [&](auto n) {
      at::parallel_for(0, B * C, grain_rows(n), [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          A p[decltype(n)::value];
          for (int64_t k = 0; k < n; ++k) p[k] = static_cast<A>(d[r * n + k]) * static_cast<A>(x[r * n + k]);
          double total = 0;
          for (int64_t k = 0; k < n; ++k) total += p[k];
          o[r] = static_cast<A>(total);
        }
      });
    });
    return;
  }
  if (rows_layout(x3)) {
    at::parallel_for(0, B * C, grain_rows(N), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t b = r / C, c = r % C;
        o[r] = static_cast<A>(dot_row<T>(d + b * vd.b + c * vd.c, x + b * vx.b + c * vx.c, N));
      }
    });
    return;
  }
  const Chunks ch = chunks_of(B, C);
  at::parallel_for(0, ch.count, grain_rows(N * std::min(C, kChunk)), [&](int64_t lo, int64_t hi) {
    A s[kChunk];
    double total[kChunk];
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t b = t / ch.per_sample, c0 = (t % ch.per_sample) * kChunk;
      const int64_t w = std::min(kChunk, C - c0);
      for (int64_t c = 0; c < w; ++c) s[c] = 0, total[c] = 0;
      for (int64_t k = 0; k < N; ++k) {
        const T* xr = x + b * vx.b + k * vx.n + c0;
        const T* dr = d + b * vd.b + k * vd.n + c0;
        for (int64_t c = 0; c < w; ++c) s[c] += static_cast<A>(dr[c]) * static_cast<A>(xr[c]);
        if ((k + 1) % kBlock == 0 || k + 1 == N)
          for (int64_t c = 0; c < w; ++c) total[c] += s[c], s[c] = 0;
      }
      for (int64_t c = 0; c < w; ++c) o[b * C + c0 + c] = static_cast<A>(total[c]);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// grad_input: dx = dy * ca + g_avg, then + g_max at the argmax; each rounded to T as torch does.

template <typename T>
void grad_input_impl(const Tensor& dy3, const Tensor& ca, const Tensor& g_avg, const Tensor& g_max,
                     const Tensor& idx, const bool* vm, const int64_t* len, Tensor& dx3) {
  using A = acc_t<T>;
  const int64_t B = dy3.size(0), C = dy3.size(1), N = dy3.size(2);
  const View vd = view_of(dy3), vo = view_of(dx3);
  const T* d = dy3.data_ptr<T>();
  const T* pc = ca.data_ptr<T>();
  const T* pa = g_avg.data_ptr<T>();
  const T* pm = g_max.data_ptr<T>();
  const int64_t* pi = idx.data_ptr<int64_t>();
  T* o = dx3.data_ptr<T>();
  auto bump = [&](int64_t b, int64_t c) {
    T& at = o[b * vo.b + c * vo.c + pi[b * C + c] * vo.n];
    at = static_cast<T>(static_cast<A>(at) + static_cast<A>(pm[b * C + c]));
  };
  if (N < kTinyRow && vm == nullptr && len == nullptr && dense_rows(dy3) && dense_rows(dx3)) {
    with_fixed_n(N, [&](auto n) {
      at::parallel_for(0, B * C, grain_rows(n), [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          const A f = static_cast<A>(pc[r]), a = static_cast<A>(pa[r]);
          const T* dr = d + r * n;
          T* out = o + r * n;
          for (int64_t k = 0; k < n; ++k)
            out[k] = static_cast<T>(static_cast<A>(static_cast<T>(static_cast<A>(dr[k]) * f)) + a);
          T& at = out[pi[r]];
          at = static_cast<T>(static_cast<A>(at) + static_cast<A>(pm[r]));
        }
      });
    });
    return;
  }
  if (rows_layout(dy3)) {
    at::parallel_for(0, B * C, grain_rows(N), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t b = r / C, c = r % C;
        const T* dr = d + b * vd.b + c * vd.c;
        T* out = o + b * vo.b + c * vo.c;
        const A f = static_cast<A>(pc[r]), a = static_cast<A>(pa[r]);
        if (vm == nullptr) {  // the mean's gradient reaches the real prefix [0, n) only (all of N without padding)
          const int64_t n = len == nullptr ? N : len[b];
          for (int64_t k = 0; k < n; ++k)
            out[k] = static_cast<T>(static_cast<A>(static_cast<T>(static_cast<A>(dr[k]) * f)) + a);
          for (int64_t k = n; k < N; ++k) out[k] = static_cast<T>(static_cast<A>(dr[k]) * f);
        } else {  // the mean's gradient reaches real positions only
          const bool* ok = vm + b * N;
          for (int64_t k = 0; k < N; ++k)
            out[k] = static_cast<T>(static_cast<A>(static_cast<T>(static_cast<A>(dr[k]) * f)) + (ok[k] ? a : A(0)));
        }
        bump(b, c);
      }
    });
    return;
  }
  at::parallel_for(0, B, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, C * N)), [&](int64_t lo, int64_t hi) {
    A f[kChunk], a[kChunk];
    for (int64_t b = lo; b < hi; ++b) {
      for (int64_t k = 0; k < N; ++k) {
        const T* dr = d + b * vd.b + k * vd.n;
        T* out = o + b * vo.b + k * vo.n;
        // the mean's gradient reaches real positions only
        const bool real = vm != nullptr ? vm[b * N + k] : (len == nullptr || k < len[b]);
        for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
          const int64_t w = std::min(kChunk, C - c0);
          for (int64_t c = 0; c < w; ++c)
            f[c] = static_cast<A>(pc[b * C + c0 + c]), a[c] = real ? static_cast<A>(pa[b * C + c0 + c]) : A(0);
          for (int64_t c = 0; c < w; ++c)
            out[c0 + c] = static_cast<T>(static_cast<A>(static_cast<T>(static_cast<A>(dr[c0 + c]) * f[c])) + a[c]);
        }
      }
      for (int64_t c = 0; c < C; ++c) bump(b, c);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Entry points of the passes: allocate, check, dispatch on the dtype.

inline std::vector<Tensor> pool_stats(const Tensor& x3, bool need_index, const OptTensor& valid = c10::nullopt) {
  const auto acc = compute_dtype(x3.scalar_type(), at::kFloat);
  const auto opts = x3.options().dtype(acc);
  Tensor avg = at::empty({x3.size(0), x3.size(1)}, opts), mx = at::empty_like(avg);
  // The index costs nothing measurable (the lanes' selects are there for the NaN-propagating max
  // anyway), and GCC vectorises the loop with it better than without, so it is always computed.
  Tensor idx = at::empty({x3.size(0), x3.size(1)}, x3.options().dtype(at::kLong));
  if (avg.numel() == 0) return {avg, mx, need_index ? idx : Tensor()};
  // Lengths, or a mask whose samples are all prefixes (a 1D mask is usually lengths in disguise),
  // pool each row's prefix; any other mask goes position by position.
  Tensor len, vm;
  std::vector<int64_t> prefix;
  const int64_t* lengths = nullptr;
  if (is_lengths(valid)) {
    len = checked_lengths(*valid, x3.size(0), x3.size(2));
    lengths = len.data_ptr<int64_t>();
  } else if (valid.has_value()) {
    vm = valid->contiguous();
    prefix = prefix_lengths(vm);
    if (all_prefixes(prefix)) lengths = prefix.data();
  }
  if (lengths != nullptr) {
    CAFUSION_DISPATCH(x3.scalar_type(), "cafusion_pool_prefix",
                      [&] { pool_prefix_impl<scalar_t>(x3, lengths, avg, mx, idx); });
  } else if (vm.defined()) {
    CAFUSION_DISPATCH(x3.scalar_type(), "cafusion_pool_masked",
                      [&] { pool_masked_impl<scalar_t>(x3, vm, prefix, avg, mx, idx); });
  } else {
    CAFUSION_DISPATCH(x3.scalar_type(), "cafusion_pool_stats", [&] { pool_impl<scalar_t>(x3, avg, mx, idx); });
  }
  return {avg, mx, need_index ? idx : Tensor()};
}

// y = x * ca for x of shape (B, C, *spatial) (or its (B, C, N) view); y has x's shape and strides.
inline Tensor scale(const Tensor& x, const Tensor& ca) {
  Tensor y = output_for(x);
  if (y.numel() == 0) return y;
  const Tensor x3 = x.flatten(2);
  Tensor y3 = y.flatten(2);
  check_same_layout(x3, y3);
  const Tensor g = cast(ca, x.scalar_type()).contiguous();
  CAFUSION_DISPATCH(x.scalar_type(), "cafusion_scale", [&] { scale_impl<scalar_t>(x3, g, y3); });
  return y;
}

inline Tensor grad_ca(const Tensor& dy3, const Tensor& x3) {
  const auto acc = compute_dtype(x3.scalar_type(), at::kFloat);
  Tensor out = at::empty({x3.size(0), x3.size(1)}, x3.options().dtype(acc));
  if (out.numel() == 0) return out;
  check_same_layout(x3, dy3);
  TORCH_CHECK(dy3.scalar_type() == x3.scalar_type(), "cafusion native: dy and x of different dtypes");
  CAFUSION_DISPATCH(x3.scalar_type(), "cafusion_grad_ca", [&] { grad_ca_impl<scalar_t>(dy3, x3, out); });
  return out;
}

// dx = dy * ca + g_avg + g_max at the argmax, for dy of shape (B, C, *spatial) (or its (B, C, N) view);
// dx has dy's shape and strides.
inline Tensor grad_input(const Tensor& dy, const Tensor& ca, const Tensor& g_avg, const Tensor& g_max, const Tensor& idx,
                         const OptTensor& valid = c10::nullopt) {
  Tensor dx = output_for(dy);
  if (dx.numel() == 0) return dx;
  const auto t = dy.scalar_type();
  const Tensor c = cast(ca, t).contiguous(), a = cast(g_avg, t).contiguous(), m = cast(g_max, t).contiguous();
  const Tensor i = idx.contiguous();
  const Tensor dy3 = dy.flatten(2);
  Tensor dx3 = dx.flatten(2);
  check_same_layout(dy3, dx3);
  const bool lengths = is_lengths(valid);
  const Tensor vm = valid.has_value() ? (lengths ? valid->to(at::kLong) : *valid).contiguous() : Tensor();
  std::vector<int64_t> prefix;  // a mask whose samples are all prefixes runs as lengths (vectorised rows)
  if (vm.defined() && !lengths) prefix = prefix_lengths(vm);
  const bool as_prefix = !prefix.empty() && all_prefixes(prefix);
  const bool* pv = vm.defined() && !lengths && !as_prefix ? vm.data_ptr<bool>() : nullptr;
  const int64_t* pl = lengths ? vm.data_ptr<int64_t>() : (as_prefix ? prefix.data() : nullptr);
  CAFUSION_DISPATCH(t, "cafusion_grad_input", [&] { grad_input_impl<scalar_t>(dy3, c, a, m, i, pv, pl, dx3); });
  return dx;
}

}  // namespace cafusion
