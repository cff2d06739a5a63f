// A network's first layer on one-channel images, fused: stride-1 convolution, bias, ReLU
// and 2x2 max-pool (stride 2, odd sizes floored), with its gradients, as XLA FFI custom
// calls on the CPU. digits_jax/models/native.py compiles this file with im2col.cc and
// digits_jax/models/ops.py calls it (ops.conv_relu_pool).
//
// With one input channel the convolution has only kh * kw multiply-adds per output
// value, so im2col's matrix product is bound by memory, not arithmetic: the unfused layer
// writes and reads the whole pre-pool activation (batch x 26 x 26 x 32 floats for a 3x3
// conv on 28x28) several times. Here the forward pass writes only the pooled values and,
// per pooled value, which corner of its window won (int8). The backward passes read only
// those: a window passes its gradient to its first maximum (row-major, as XLA's
// select-and-scatter does) if that maximum is positive (ReLU's gradient at 0 is 0).
//
// Layouts: image (..., H, W, 1), kernel (kh, kw, 1, C), bias (C), pooled and corner
// (..., Hp, Wp, C); every leading dimension before the last three is batch. Zero padding
// pad_top / pad_left (the bottom / right padding follow from the output's size).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using digits_jax::ParallelFor;

namespace {

constexpr int8_t kNoGradient = -1;  // the window's maximum is <= 0: ReLU passes nothing back
constexpr int64_t kChunk = 8;       // images per partial sum of the parameter gradients
constexpr int64_t kMaxChannels = 512;  // output channels (ops.conv_relu_pool checks it)

struct Layer {
  int64_t batch, h, w, kh, kw, c, hp, wp, pad_top, pad_left, hpad, wpad;
  int64_t taps() const { return kh * kw; }
  // Top-left input pixel (in the padded image) of corner q of pooled window (pi, pj).
  int64_t corner(int64_t pi, int64_t pj, int q) const {
    return (2 * pi + q / 2) * wpad + 2 * pj + q % 2;
  }
};

ffi::Error MakeLayer(ffi::Span<const int64_t> image, ffi::Span<const int64_t> pooled,
                     ffi::Span<const int64_t> kernel, int64_t pad_top, int64_t pad_left,
                     Layer* l) {
  size_t rank = image.size();
  if (rank < 4 || pooled.size() != rank || kernel.size() != 4) {
    return ffi::Error::InvalidArgument("conv_relu_pool: expected (..., H, W, 1) arrays");
  }
  l->batch = 1;
  for (size_t i = 0; i + 3 < rank; ++i) {
    if (image[i] != pooled[i]) {
      return ffi::Error::InvalidArgument("conv_relu_pool: batch dims differ");
    }
    l->batch *= image[i];
  }
  l->h = image[rank - 3], l->w = image[rank - 2];
  l->kh = kernel[0], l->kw = kernel[1], l->c = kernel[3];
  l->hp = pooled[rank - 3], l->wp = pooled[rank - 2];
  l->pad_top = pad_top, l->pad_left = pad_left;
  // The padded image must hold every window the pooled output reads.
  l->hpad = std::max(l->h + pad_top, 2 * l->hp + l->kh - 1);
  l->wpad = std::max(l->w + pad_left, 2 * l->wp + l->kw - 1);
  if (image[rank - 1] != 1 || kernel[2] != 1 || pooled[rank - 1] != l->c || pad_top < 0 ||
      pad_left < 0 || l->c > kMaxChannels) {
    return ffi::Error::InvalidArgument(
        "conv_relu_pool: one input channel, kernel (kh, kw, 1, C <= 512), output (..., Hp, Wp, C)");
  }
  return ffi::Error::Success();
}

// Copies image b into a zeroed (hpad, wpad) buffer at (pad_top, pad_left).
void Pad(const Layer& l, const float* image, float* padded) {
  std::fill(padded, padded + l.hpad * l.wpad, 0.0f);
  for (int64_t y = 0; y < l.h; ++y) {
    std::memcpy(padded + (y + l.pad_top) * l.wpad + l.pad_left, image + y * l.w,
                l.w * sizeof(float));
  }
}

// Eight floats, for GCC and Clang's portable vector extension: the hot loops below keep
// a pixel's channels in registers (AVX2 on x86, two NEON registers on ARM).
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t i8x32 __attribute__((vector_size(32)));

inline v8 Load(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }

// The forward pass of one image. kC (a multiple of 8) fixes the channel count at compile
// time; kC = 0 reads it from l and runs scalar loops.
template <int64_t kC>
void ForwardImage(const Layer& l, const float* __restrict padded, const float* __restrict kernel,
                  const float* __restrict bias, float* __restrict pooled,
                  int8_t* __restrict corner) {
  if constexpr (kC > 0) {
    constexpr int64_t V = kC / 8;
    v8 b[V];
    for (int64_t v = 0; v < V; ++v) b[v] = Load(bias + 8 * v);
    for (int64_t pi = 0; pi < l.hp; ++pi) {
      for (int64_t pj = 0; pj < l.wp; ++pj) {
        v8 best[V], which[V];
        for (int q = 0; q < 4; ++q) {
          const float* src = padded + l.corner(pi, pj, q);
          v8 y[V] = {};
          for (int64_t di = 0; di < l.kh; ++di) {
            for (int64_t dj = 0; dj < l.kw; ++dj) {
              const float x = src[di * l.wpad + dj];
              const float* k = kernel + (di * l.kw + dj) * kC;
              for (int64_t v = 0; v < V; ++v) y[v] += x * Load(k + 8 * v);
            }
          }
          for (int64_t v = 0; v < V; ++v) {
            const v8 z = y[v] + b[v];
            if (q == 0) {
              best[v] = z, which[v] = v8{} + 0.0f;
            } else {  // a later corner wins only when strictly greater
              const i8x32 wins = z > best[v];
              best[v] = wins ? z : best[v];
              which[v] = wins ? v8{} + static_cast<float>(q) : which[v];
            }
          }
        }
        const int64_t at = (pi * l.wp + pj) * kC;
        for (int64_t v = 0; v < V; ++v) {
          const i8x32 positive = best[v] > 0.0f;
          Store(pooled + at + 8 * v, positive ? best[v] : v8{});
          const v8 code = positive ? which[v] : v8{} + static_cast<float>(kNoGradient);
          for (int64_t e = 0; e < 8; ++e) corner[at + 8 * v + e] = static_cast<int8_t>(code[e]);
        }
      }
    }
  } else {
    const int64_t C = l.c;
    float best[kMaxChannels], y[kMaxChannels];
    int8_t which[kMaxChannels];
    for (int64_t pi = 0; pi < l.hp; ++pi) {
      for (int64_t pj = 0; pj < l.wp; ++pj) {
        for (int q = 0; q < 4; ++q) {
          const float* src = padded + l.corner(pi, pj, q);
          for (int64_t c = 0; c < C; ++c) y[c] = 0.0f;
          for (int64_t di = 0; di < l.kh; ++di) {
            for (int64_t dj = 0; dj < l.kw; ++dj) {
              const float x = src[di * l.wpad + dj];
              const float* k = kernel + (di * l.kw + dj) * C;
              for (int64_t c = 0; c < C; ++c) y[c] += x * k[c];
            }
          }
          for (int64_t c = 0; c < C; ++c) {
            const float z = y[c] + bias[c];
            if (q == 0 || z > best[c]) {  // a later corner wins only when strictly greater
              best[c] = z;
              which[c] = static_cast<int8_t>(q);
            }
          }
        }
        const int64_t at = (pi * l.wp + pj) * C;
        for (int64_t c = 0; c < C; ++c) {
          const bool positive = best[c] > 0.0f;
          pooled[at + c] = positive ? best[c] : 0.0f;
          corner[at + c] = positive ? which[c] : kNoGradient;
        }
      }
    }
  }
}

// Adds one image's kernel and bias gradients to d_kernel and d_bias.
template <int64_t kC>
void ParamGradImage(const Layer& l, const float* __restrict padded,
                    const int8_t* __restrict corner, const float* __restrict g,
                    float* __restrict d_kernel, float* __restrict d_bias) {
  if constexpr (kC > 0) {
    constexpr int64_t V = kC / 8;
    for (int64_t pi = 0; pi < l.hp; ++pi) {
      for (int64_t pj = 0; pj < l.wp; ++pj) {
        const int64_t at = (pi * l.wp + pj) * kC;
        v8 code[V], gq[4][V];
        for (int64_t v = 0; v < V; ++v) {
          for (int64_t e = 0; e < 8; ++e) code[v][e] = corner[at + 8 * v + e];
          const v8 gv = Load(g + at + 8 * v);
          Store(d_bias + 8 * v, Load(d_bias + 8 * v) + (code[v] >= 0.0f ? gv : v8{}));
          for (int q = 0; q < 4; ++q) gq[q][v] = code[v] == static_cast<float>(q) ? gv : v8{};
        }
        const float* src = padded + l.corner(pi, pj, 0);
        for (int64_t di = 0; di < l.kh; ++di) {
          for (int64_t dj = 0; dj < l.kw; ++dj) {
            const float* s = src + di * l.wpad + dj;
            const float x0 = s[0], x1 = s[1], x2 = s[l.wpad], x3 = s[l.wpad + 1];
            float* dk = d_kernel + (di * l.kw + dj) * kC;
            for (int64_t v = 0; v < V; ++v) {
              Store(dk + 8 * v, Load(dk + 8 * v) + x0 * gq[0][v] + x1 * gq[1][v] +
                                    x2 * gq[2][v] + x3 * gq[3][v]);
            }
          }
        }
      }
    }
  } else {
    const int64_t C = l.c;
    float gq[kMaxChannels];
    for (int64_t pi = 0; pi < l.hp; ++pi) {
      for (int64_t pj = 0; pj < l.wp; ++pj) {
        const int64_t at = (pi * l.wp + pj) * C;
        for (int64_t c = 0; c < C; ++c) {
          d_bias[c] += corner[at + c] != kNoGradient ? g[at + c] : 0.0f;
        }
        for (int q = 0; q < 4; ++q) {
          for (int64_t c = 0; c < C; ++c) gq[c] = corner[at + c] == q ? g[at + c] : 0.0f;
          const float* src = padded + l.corner(pi, pj, q);
          for (int64_t di = 0; di < l.kh; ++di) {
            for (int64_t dj = 0; dj < l.kw; ++dj) {
              const float x = src[di * l.wpad + dj];
              float* dk = d_kernel + (di * l.kw + dj) * C;
              for (int64_t c = 0; c < C; ++c) dk[c] += x * gq[c];
            }
          }
        }
      }
    }
  }
}

// One image's input gradient. kernel_t is the kernel transposed to (C, taps), each row
// zero-padded to `stride` (a multiple of 8) floats. Per pooled value, the channels whose
// window passes a gradient add g * their kernel row to the tap sums of their winning corner
// (eight taps per vector operation); each corner's tap sums are then added into its window.
// The same sums, in the same channel order, as sum_c kernel[tap, c] * g[c] over the
// channels that corner won.
template <int64_t kC>
void InputGradImage(const Layer& l, const float* __restrict kernel_t, int64_t stride,
                    const int8_t* __restrict corner, const float* __restrict g,
                    float* __restrict sums, float* __restrict d_padded) {
  const int64_t C = kC > 0 ? kC : l.c;
  std::fill(d_padded, d_padded + l.hpad * l.wpad, 0.0f);
  for (int64_t pi = 0; pi < l.hp; ++pi) {
    for (int64_t pj = 0; pj < l.wp; ++pj) {
      const int64_t at = (pi * l.wp + pj) * C;
      bool won[4] = {};
      std::fill(sums, sums + 4 * stride, 0.0f);
      for (int64_t c = 0; c < C; ++c) {
        const int q = corner[at + c];
        if (q == kNoGradient) continue;
        won[q] = true;
        const float gc = g[at + c];
        const float* k = kernel_t + c * stride;
        float* s = sums + q * stride;
        for (int64_t t = 0; t < stride; t += 8) Store(s + t, Load(s + t) + gc * Load(k + t));
      }
      for (int q = 0; q < 4; ++q) {
        if (!won[q]) continue;
        const float* s = sums + q * stride;
        float* dst = d_padded + l.corner(pi, pj, q);
        for (int64_t di = 0; di < l.kh; ++di) {
          for (int64_t dj = 0; dj < l.kw; ++dj) dst[di * l.wpad + dj] += s[di * l.kw + dj];
        }
      }
    }
  }
}

// Calls f.template operator()<kC>() with kC the layer's channel count when it is one of
// the compiled-in widths, else kC = 0 (any width, slower loops).
template <typename F>
void WithChannels(int64_t c, F f) {
  switch (c) {
    case 16: return f.template operator()<16>();
    case 24: return f.template operator()<24>();
    case 32: return f.template operator()<32>();
    case 64: return f.template operator()<64>();
    default: return f.template operator()<0>();
  }
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> image,
                       ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> bias,
                       ffi::ResultBuffer<ffi::F32> pooled, ffi::ResultBuffer<ffi::S8> corner,
                       int64_t pad_top, int64_t pad_left) {
  Layer l;
  if (auto e = MakeLayer(image.dimensions(), pooled->dimensions(), kernel.dimensions(), pad_top,
                         pad_left, &l);
      e.failure()) {
    return e;
  }
  const float* x = image.typed_data();
  const float* k = kernel.typed_data();
  const float* b = bias.typed_data();
  float* out = pooled->typed_data();
  int8_t* win = corner->typed_data();
  WithChannels(l.c, [&]<int64_t kC>() {
    ParallelFor(pool, l.batch, [&](int64_t i) {
      std::vector<float> padded(l.hpad * l.wpad);
      Pad(l, x + i * l.h * l.w, padded.data());
      const int64_t at = i * l.hp * l.wp * l.c;
      ForwardImage<kC>(l, padded.data(), k, b, out + at, win + at);
    });
  });
  return ffi::Error::Success();
}

// d_kernel and d_bias summed over fixed chunks of kChunk images, then over the chunks in
// order: the same numbers whatever the number of threads.
ffi::Error ParamGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> image,
                         ffi::Buffer<ffi::S8> corner, ffi::Buffer<ffi::F32> g,
                         ffi::ResultBuffer<ffi::F32> d_kernel,
                         ffi::ResultBuffer<ffi::F32> d_bias, int64_t pad_top,
                         int64_t pad_left) {
  Layer l;
  if (auto e = MakeLayer(image.dimensions(), g.dimensions(), d_kernel->dimensions(), pad_top,
                         pad_left, &l);
      e.failure()) {
    return e;
  }
  const int64_t size = l.taps() * l.c + l.c;
  const int64_t chunks = (l.batch + kChunk - 1) / kChunk;
  std::vector<float> partial(chunks * size, 0.0f);
  const float* x = image.typed_data();
  const int8_t* win = corner.typed_data();
  const float* gx = g.typed_data();
  WithChannels(l.c, [&]<int64_t kC>() {
    ParallelFor(pool, chunks, [&](int64_t chunk) {
      std::vector<float> padded(l.hpad * l.wpad);
      float* dk = partial.data() + chunk * size;
      for (int64_t i = chunk * kChunk; i < std::min(l.batch, (chunk + 1) * kChunk); ++i) {
        Pad(l, x + i * l.h * l.w, padded.data());
        const int64_t at = i * l.hp * l.wp * l.c;
        ParamGradImage<kC>(l, padded.data(), win + at, gx + at, dk, dk + l.taps() * l.c);
      }
    });
  });
  float* dk = d_kernel->typed_data();
  float* db = d_bias->typed_data();
  std::fill(dk, dk + l.taps() * l.c, 0.0f);
  std::fill(db, db + l.c, 0.0f);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const float* p = partial.data() + chunk * size;
    for (int64_t t = 0; t < l.taps() * l.c; ++t) dk[t] += p[t];
    for (int64_t c = 0; c < l.c; ++c) db[c] += p[l.taps() * l.c + c];
  }
  return ffi::Error::Success();
}

ffi::Error InputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> kernel,
                         ffi::Buffer<ffi::S8> corner, ffi::Buffer<ffi::F32> g,
                         ffi::ResultBuffer<ffi::F32> d_image, int64_t pad_top,
                         int64_t pad_left) {
  Layer l;
  if (auto e = MakeLayer(d_image->dimensions(), g.dimensions(), kernel.dimensions(), pad_top,
                         pad_left, &l);
      e.failure()) {
    return e;
  }
  const float* k = kernel.typed_data();
  const int8_t* win = corner.typed_data();
  const float* gx = g.typed_data();
  float* dx = d_image->typed_data();
  const int64_t stride = (l.taps() + 7) / 8 * 8;
  std::vector<float> kernel_t(l.c * stride, 0.0f);
  for (int64_t t = 0; t < l.taps(); ++t) {
    for (int64_t c = 0; c < l.c; ++c) kernel_t[c * stride + t] = k[t * l.c + c];
  }
  WithChannels(l.c, [&]<int64_t kC>() {
    ParallelFor(pool, l.batch, [&](int64_t i) {
      std::vector<float> d_padded(l.hpad * l.wpad), sums(4 * stride);
      const int64_t at = i * l.hp * l.wp * l.c;
      InputGradImage<kC>(l, kernel_t.data(), stride, win + at, gx + at, sums.data(),
                         d_padded.data());
      for (int64_t y = 0; y < l.h; ++y) {
        std::memcpy(dx + (i * l.h + y) * l.w,
                    d_padded.data() + (y + l.pad_top) * l.wpad + l.pad_left,
                    l.w * sizeof(float));
      }
    });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DigitsConvReluPool, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // image
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // pooled
                                  .Ret<ffi::Buffer<ffi::S8>>()   // winning corner
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(DigitsConvReluPoolParamGrad, ParamGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // image
                                  .Arg<ffi::Buffer<ffi::S8>>()   // winning corner
                                  .Arg<ffi::Buffer<ffi::F32>>()  // pooled cotangent
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d kernel
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d bias
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(DigitsConvReluPoolInputGrad, InputGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Arg<ffi::Buffer<ffi::S8>>()   // winning corner
                                  .Arg<ffi::Buffer<ffi::F32>>()  // pooled cotangent
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d image
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
