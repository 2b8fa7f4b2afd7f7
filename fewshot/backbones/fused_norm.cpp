// Fused CPU kernels for batch norm in training: statistics, then normalisation, an optional second normalised
// input added, an optional 2x2 max-pool and a (leaky) ReLU, in few passes over channels-last memory.
//
// PyTorch's CPU kernels run [batch norm, (add), max-pool, ReLU] as separate passes, each reading and writing the
// full activation, with an int64 index per pooled value; at a few-shot episode's first block these activations
// are tens of megabytes and the passes, not the convolutions, take most of a training step. Here the forward
// reads each input twice (statistics, then the pooled output) and the backward reads it once and writes its
// gradient once. The values are those of the separate operations: each normalised value is rounded to the
// tensor's type before the add, the pool and the activation, as the separate kernels' outputs are.
//
// Every tensor is channels-last memory viewed as [rows, channels] or [N, H, W, C]. Reductions run over fixed
// chunks of rows whose partial sums are added in chunk order, so the results do not depend on the thread count.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kChunkRows = 256;

// Sixteen float lanes (GCC / Clang vector extensions; AVX-512 registers with -march=native where the CPU has
// them). Every loop below is written once over a lane type V: VF for blocks of 16 channels, float for the rest.
typedef float VF __attribute__((vector_size(64)));
typedef int32_t VI __attribute__((vector_size(64)));
typedef uint32_t VU __attribute__((vector_size(64)));
typedef uint16_t VH __attribute__((vector_size(32)));
typedef uint8_t VB __attribute__((vector_size(16)));

// Storage types: float, or bfloat16 held as its 16 bits (rounded to nearest even, NaN kept, as c10::BFloat16).
inline float load(const float* p, float) { return *p; }
inline float load(const uint16_t* p, float) {
  const uint32_t bits = static_cast<uint32_t>(*p) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
inline VF load(const float* p, VF) { VF v; std::memcpy(&v, p, sizeof(v)); return v; }
inline VF load(const uint16_t* p, VF) {
  VH h;
  std::memcpy(&h, p, sizeof(h));
  return (VF)(__builtin_convertvector(h, VU) << 16);
}
inline float load_tap(const uint8_t* p, float) { return *p; }
inline VF load_tap(const uint8_t* p, VF) { VB b; std::memcpy(&b, p, sizeof(b)); return __builtin_convertvector(b, VF); }

inline uint32_t bf16_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return v != v ? 0x7FC00000u : ((bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u);
}
inline VU bf16_bits(VF v) {
  const VU bits = (VU)v;
  const VU rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
  return (v != v) ? (VU{} + 0x7FC00000u) : rounded;
}
inline void store(float* p, float v) { *p = v; }
inline void store(uint16_t* p, float v) { *p = static_cast<uint16_t>(bf16_bits(v) >> 16); }
inline void store(float* p, VF v) { std::memcpy(p, &v, sizeof(v)); }
inline void store(uint16_t* p, VF v) {
  const VH h = __builtin_convertvector(bf16_bits(v) >> 16, VH);
  std::memcpy(p, &h, sizeof(h));
}
inline void store_tap(uint8_t* p, float v) { *p = static_cast<uint8_t>(v); }
inline void store_tap(uint8_t* p, VF v) { const VB b = __builtin_convertvector(v, VB); std::memcpy(p, &b, sizeof(b)); }

// A value as the storage type T holds it: rounded to bfloat16 where T is.
template <typename T> inline float round_to(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  const uint32_t bits = bf16_bits(v);
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
template <typename T> inline VF round_to(VF v) {
  if constexpr (std::is_same_v<T, float>) return v;
  return (VF)bf16_bits(v);
}

inline float select(bool m, float a, float b) { return m ? a : b; }
inline VF select(VI m, VF a, VF b) { return m ? a : b; }
template <typename V> inline V splat(float x) {
  if constexpr (std::is_same_v<V, float>) return x;
  else return VF{} + x;
}

// sum[c..] += term, compensated (Kahan): the float sums of a chunk then lose no more than a few units in the last
// place, even where the terms cancel (a batch-norm input's gradient sums to about zero).
template <typename V> inline void add_compensated(float* sum, float* compensation, V term) {
  const V y = term - load(compensation, V{});
  const V s = load(sum, V{});
  const V t = s + y;
  store(compensation, (t - s) - y);
  store(sum, t);
}

// Calls f(c, V{}) over the channels: blocks of 16 as VF, the remainder one by one as float.
template <typename F> inline void over_channels(int64_t C, F f) {
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) f(c, VF{});
  for (; c < C; ++c) f(c, 0.f);
}

template <typename T> T* data(torch::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }
template <typename T> const T* data(const torch::Tensor& t) { return reinterpret_cast<const T*>(t.data_ptr()); }
template <typename T> const T* data_or_null(const c10::optional<torch::Tensor>& t) {
  return t.has_value() ? reinterpret_cast<const T*>(t->data_ptr()) : nullptr;
}
const float* floats_or_null(const c10::optional<torch::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

// Calls f with the storage type of a float32 or bfloat16 tensor.
template <typename F> void dispatch(const torch::Tensor& t, F f) {
  if (t.scalar_type() == torch::kFloat32) f(float{});
  else if (t.scalar_type() == torch::kBFloat16) f(uint16_t{});
  else TORCH_CHECK(false, "fused batch norm needs float32 or bfloat16 tensors, got ", t.scalar_type());
}

// Sums over `rows` rows of `width` values each: add_row(r, sum, compensation) adds row r's values with
// add_compensated. Rows are summed in fixed chunks (float, compensated) whose totals are added in chunk order in
// double, so the result does not depend on the thread count.
template <typename F> std::vector<double> ordered_sums(int64_t rows, int64_t width, F add_row) {
  const int64_t chunks = (rows + kChunkRows - 1) / kChunkRows;
  std::vector<double> partial(static_cast<size_t>(chunks) * width, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(width), compensation(width);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(compensation.begin(), compensation.end(), 0.f);
      const int64_t stop = std::min(rows, (chunk + 1) * kChunkRows);
      for (int64_t r = chunk * kChunkRows; r < stop; ++r) add_row(r, acc.data(), compensation.data());
      double* out = partial.data() + chunk * width;
      for (int64_t i = 0; i < width; ++i) out[i] = acc[i];
    }
  });
  std::vector<double> total(width, 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t i = 0; i < width; ++i) total[i] += partial[chunk * width + i];
  return total;
}

// Per-channel sums of x and x*x over the rows of x [rows, C]: [sum(x) (C values), sum(x*x) (C values)].
template <typename T> std::vector<double> channel_sums(const T* x, int64_t rows, int64_t C) {
  return ordered_sums(rows, 2 * C, [&](int64_t r, float* s, float* k) {
    const T* row = x + r * C;
    over_channels(C, [&](int64_t c, auto lane) {
      using V = decltype(lane);
      const V v = load(row + c, V{});
      add_compensated(s + c, k + c, v);
      add_compensated(s + C + c, k + C + c, v * v);
    });
  });
}

// y = act(round(round(a1 x1 + b1) [+ round(a2 x2 + b2)])), pooled 2x2 when `Pool` (the first maximum in scan
// order, a NaN winning, as PyTorch's max-pool); the tap of each maximum and the raw inputs there are kept.
template <typename T, bool Two, bool Pool>
void forward_kernel(const T* x1, const T* x2, const float* a1, const float* b1, const float* a2, const float* b2,
                    float slope, int64_t N, int64_t H, int64_t W, int64_t C, T* out, uint8_t* index, T* raw1,
                    T* raw2) {
  const int64_t Ho = Pool ? H / 2 : H, Wo = Pool ? W / 2 : W;
  at::parallel_for(0, N * Ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / Ho, ho = row % Ho;
      for (int64_t wo = 0; wo < Wo; ++wo) {
        const int64_t o = ((n * Ho + ho) * Wo + wo) * C;
        over_channels(C, [&](int64_t c, auto lane) {
          using V = decltype(lane);
          const V s1 = load(a1 + c, V{}), t1 = load(b1 + c, V{});
          const V s2 = Two ? load(a2 + c, V{}) : V{}, t2 = Two ? load(b2 + c, V{}) : V{};
          V best{}, tap{}, r1{}, r2{};
          constexpr int taps = Pool ? 4 : 1;
          for (int k = 0; k < taps; ++k) {
            const int64_t h = Pool ? 2 * ho + (k >> 1) : ho, w = Pool ? 2 * wo + (k & 1) : wo;
            const int64_t at = ((n * H + h) * W + w) * C + c;
            const V u1 = load(x1 + at, V{});
            V v = round_to<T>(u1 * s1 + t1);
            V u2{};
            if constexpr (Two) {
              u2 = load(x2 + at, V{});
              v = round_to<T>(v + round_to<T>(u2 * s2 + t2));
            }
            if (k == 0) {
              best = v; tap = splat<V>(0.f); r1 = u1; r2 = u2;
            } else {  // as PyTorch's max-pool: the first maximum in scan order, and a NaN wins
              const auto take = (v > best) | (v != v);
              best = select(take, v, best);
              tap = select(take, splat<V>(static_cast<float>(k)), tap);
              r1 = select(take, u1, r1);
              if constexpr (Two) r2 = select(take, u2, r2);
            }
          }
          const auto keep = (best > splat<V>(0.f)) | (best != best);
          store(out + o + c, select(keep, best, slope == 0.f ? splat<V>(0.f) : best * slope));
          if constexpr (Pool) {
            store_tap(index + o + c, tap);
            store(raw1 + o + c, r1);
            if constexpr (Two) store(raw2 + o + c, r2);
          }
        });
      }
    }
  });
}

// The gradient at the activation's input, rounded as the separate backward kernels round it.
template <typename T, typename V>
inline V activation_grad(const T* grad, const T* out, float slope) {
  const V g = load(grad, V{});
  return round_to<T>(select(load(out, V{}) > splat<V>(0.f), g, slope == 0.f ? splat<V>(0.f) : g * slope));
}

template <typename T, bool Two, bool Pool>
void backward_kernel(const T* grad, const T* out, const uint8_t* index, const T* x1, const T* x2, const T* raw1,
                     const T* raw2, const float* mean1, const float* invstd1, const float* weight1,
                     const float* mean2, const float* invstd2, const float* weight2, float slope,
                     int64_t N, int64_t H, int64_t W, int64_t C, T* dx1, T* dx2,
                     float* dweight1, float* dbias1, float* dweight2, float* dbias2) {
  const int64_t Ho = Pool ? H / 2 : H, Wo = Pool ? W / 2 : W;
  const int64_t pooled_rows = N * Ho * Wo, rows = N * H * W;
  // Where the activation's gradient dz lands: the pooled maxima (their raw inputs were kept), or every position.
  const T* at1 = Pool ? raw1 : x1;
  const T* at2 = Pool ? raw2 : x2;
  // Pass A: sum(dz) and sum(dz * xhat) per channel (and per input).
  const int64_t width = Two ? 3 * C : 2 * C;
  const std::vector<double> total = ordered_sums(pooled_rows, width, [&](int64_t p, float* s, float* k) {
    const int64_t o = p * C;
    over_channels(C, [&](int64_t c, auto lane) {
      using V = decltype(lane);
      const V dz = activation_grad<T, V>(grad + o + c, out + o + c, slope);
      add_compensated(s + c, k + c, dz);
      const V xhat1 = (load(at1 + o + c, V{}) - load(mean1 + c, V{})) * load(invstd1 + c, V{});
      add_compensated(s + C + c, k + C + c, dz * xhat1);
      if constexpr (Two) {
        const V xhat2 = (load(at2 + o + c, V{}) - load(mean2 + c, V{})) * load(invstd2 + c, V{});
        add_compensated(s + 2 * C + c, k + 2 * C + c, dz * xhat2);
      }
    });
  });
  // dx = a (dz - mean(dz) - xhat mean(dz xhat)) = a dz + k1 x + k0, with a = weight * invstd.
  std::vector<float> a1(C), k1a(C), k0a(C), a2(C), k1b(C), k0b(C);
  for (int64_t c = 0; c < C; ++c) {
    dbias1[c] = static_cast<float>(total[c]);
    dweight1[c] = static_cast<float>(total[C + c]);
    a1[c] = weight1[c] * invstd1[c];
    k1a[c] = static_cast<float>(-a1[c] * invstd1[c] * total[C + c] / rows);
    k0a[c] = static_cast<float>(-a1[c] * total[c] / rows) - k1a[c] * mean1[c];
    if (Two) {
      dbias2[c] = static_cast<float>(total[c]);
      dweight2[c] = static_cast<float>(total[2 * C + c]);
      a2[c] = weight2[c] * invstd2[c];
      k1b[c] = static_cast<float>(-a2[c] * invstd2[c] * total[2 * C + c] / rows);
      k0b[c] = static_cast<float>(-a2[c] * total[c] / rows) - k1b[c] * mean2[c];
    }
  }
  // Pass B, over the full input: every position gets the statistics' terms, the pooled maxima also a dz.
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, h = row % H;
      for (int64_t w = 0; w < W; ++w) {
        const int64_t base = ((n * H + h) * W + w) * C;
        const bool pooled = !Pool || (h / 2 < Ho && w / 2 < Wo);
        const int64_t p = Pool ? ((n * Ho + h / 2) * Wo + w / 2) * C : base;
        const float tap = static_cast<float>(((h & 1) << 1) | (w & 1));
        over_channels(C, [&](int64_t c, auto lane) {
          using V = decltype(lane);
          V dz{};
          if (pooled) {
            dz = activation_grad<T, V>(grad + p + c, out + p + c, slope);
            if constexpr (Pool) dz = select(load_tap(index + p + c, V{}) == splat<V>(tap), dz, splat<V>(0.f));
          }
          store(dx1 + base + c, load(a1.data() + c, V{}) * dz + load(k1a.data() + c, V{}) * load(x1 + base + c, V{})
                                    + load(k0a.data() + c, V{}));
          if constexpr (Two)
            store(dx2 + base + c, load(a2.data() + c, V{}) * dz + load(k1b.data() + c, V{}) * load(x2 + base + c, V{})
                                      + load(k0b.data() + c, V{}));
        });
      }
    }
  });
}

template <typename F> void with_flags(bool two, bool pool, F f) {
  if (two && pool) f(std::true_type{}, std::true_type{});
  else if (two) f(std::true_type{}, std::false_type{});
  else if (pool) f(std::false_type{}, std::true_type{});
  else f(std::false_type{}, std::false_type{});
}

}  // namespace

// Mean and biased variance per channel of x (channels-last [N, C, H, W]), as float32 [C] tensors.
std::vector<torch::Tensor> batch_stats(torch::Tensor x) {
  const int64_t C = x.size(1), rows = x.numel() / C;
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "batch_stats needs a channels-last tensor");
  std::vector<double> sums;
  dispatch(x, [&](auto tag) { sums = channel_sums(data<decltype(tag)>(x), rows, C); });
  auto mean = torch::empty({C}, torch::kFloat32), var = torch::empty({C}, torch::kFloat32);
  float* m = mean.data_ptr<float>();
  float* v = var.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    const double average = sums[c] / rows;
    m[c] = static_cast<float>(average);
    v[c] = static_cast<float>(std::max(0.0, sums[C + c] / rows - average * average));
  }
  return {mean, var};
}

// x1 (and x2): channels-last [N, C, H, W]; a, b: float32 [C]. Returns the output (channels-last) and, when
// pooling, the tap of each maximum (uint8) and the raw inputs there (for the backward pass).
std::vector<torch::Tensor> norm_act_forward(torch::Tensor x1, torch::Tensor a1, torch::Tensor b1,
                                            c10::optional<torch::Tensor> x2, c10::optional<torch::Tensor> a2,
                                            c10::optional<torch::Tensor> b2, double slope, bool pool) {
  TORCH_CHECK(x1.is_contiguous(at::MemoryFormat::ChannelsLast), "norm_act_forward needs channels-last input");
  const int64_t N = x1.size(0), C = x1.size(1), H = x1.size(2), W = x1.size(3);
  const int64_t Ho = pool ? H / 2 : H, Wo = pool ? W / 2 : W;
  const bool two = x2.has_value();
  auto options = x1.options();
  auto out = torch::empty({N, Ho, Wo, C}, options);
  const int64_t kept = pool ? N : 0;
  auto index = torch::empty({kept, Ho, Wo, C}, options.dtype(torch::kUInt8));
  auto raw1 = torch::empty({kept, Ho, Wo, C}, options);
  auto raw2 = torch::empty({two ? kept : 0, Ho, Wo, C}, options);
  dispatch(x1, [&](auto tag) {
    using T = decltype(tag);
    with_flags(two, pool, [&](auto two_tag, auto pool_tag) {
      forward_kernel<T, decltype(two_tag)::value, decltype(pool_tag)::value>(
          data<T>(x1), data_or_null<T>(x2), a1.data_ptr<float>(), b1.data_ptr<float>(), floats_or_null(a2),
          floats_or_null(b2), static_cast<float>(slope), N, H, W, C, data<T>(out),
          pool ? index.data_ptr<uint8_t>() : nullptr, pool ? data<T>(raw1) : nullptr,
          pool && two ? data<T>(raw2) : nullptr);
    });
  });
  return {out.permute({0, 3, 1, 2}), index, raw1, raw2};
}

// The gradients of norm_act_forward in training (batch statistics): dx1, dweight1, dbias1 (and dx2, dweight2,
// dbias2 with a second input).
std::vector<torch::Tensor> norm_act_backward(torch::Tensor grad, torch::Tensor out, torch::Tensor index,
                                             torch::Tensor raw1, torch::Tensor raw2,
                                             torch::Tensor x1, torch::Tensor mean1, torch::Tensor invstd1,
                                             torch::Tensor weight1, c10::optional<torch::Tensor> x2,
                                             c10::optional<torch::Tensor> mean2, c10::optional<torch::Tensor> invstd2,
                                             c10::optional<torch::Tensor> weight2, double slope, bool pool) {
  TORCH_CHECK(grad.is_contiguous(at::MemoryFormat::ChannelsLast) && out.is_contiguous(at::MemoryFormat::ChannelsLast)
              && x1.is_contiguous(at::MemoryFormat::ChannelsLast), "norm_act_backward needs channels-last tensors");
  const int64_t N = x1.size(0), C = x1.size(1), H = x1.size(2), W = x1.size(3);
  const bool two = x2.has_value();
  auto dx1 = torch::empty_like(x1, x1.options(), at::MemoryFormat::ChannelsLast);
  auto dx2 = two ? torch::empty_like(*x2, x2->options(), at::MemoryFormat::ChannelsLast) : torch::Tensor();
  auto f = torch::TensorOptions().dtype(torch::kFloat32);
  auto dw1 = torch::empty({C}, f), db1 = torch::empty({C}, f);
  auto dw2 = torch::empty({two ? C : 0}, f), db2 = torch::empty({two ? C : 0}, f);
  dispatch(x1, [&](auto tag) {
    using T = decltype(tag);
    with_flags(two, pool, [&](auto two_tag, auto pool_tag) {
      backward_kernel<T, decltype(two_tag)::value, decltype(pool_tag)::value>(
          data<T>(grad), data<T>(out), pool ? index.data_ptr<uint8_t>() : nullptr, data<T>(x1),
          data_or_null<T>(x2), pool ? data<T>(raw1) : nullptr, pool && two ? data<T>(raw2) : nullptr,
          mean1.data_ptr<float>(), invstd1.data_ptr<float>(), weight1.data_ptr<float>(),
          floats_or_null(mean2), floats_or_null(invstd2), floats_or_null(weight2), static_cast<float>(slope),
          N, H, W, C, data<T>(dx1), two ? data<T>(dx2) : nullptr,
          dw1.data_ptr<float>(), db1.data_ptr<float>(), two ? dw2.data_ptr<float>() : nullptr,
          two ? db2.data_ptr<float>() : nullptr);
    });
  });
  if (two) return {dx1, dw1, db1, dx2, dw2, db2};
  return {dx1, dw1, db1};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("batch_stats", &batch_stats, "per-channel mean and biased variance of a channels-last tensor");
  m.def("norm_act_forward", &norm_act_forward, "batch norm (+ a second batch norm), optional 2x2 max-pool, (leaky) ReLU");
  m.def("norm_act_backward", &norm_act_backward, "the gradients of norm_act_forward with batch statistics");
}
