// im2col and col2im for stride-1 2-D convolutions on NHWC float32 arrays, as XLA FFI
// custom calls on the CPU. digits_jax/native.py compiles this file on first use and
// digits_jax/ops.py calls it: a convolution becomes one patches matrix (im2col) times the
// kernel, and its input gradient the patches-shaped cotangent summed back (col2im).
// XLA:CPU builds such patches from slices and concatenations several times slower than
// these plain loops do (measured in ops.py's docstring).
//
// Every leading dimension before the last three is a batch dimension, so the same
// kernels serve jax.vmap over models (vmap_method="broadcast_all"). Work is split over
// batch elements on XLA's intra-op thread pool.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using digits_jax::ParallelFor;

namespace {

struct Geometry {
  int64_t batch, h, w, c, ho, wo, kh, kw, pad_top, pad_left;
  int64_t taps() const { return kh * kw * c; }
};

// Checks the shapes XLA hands us against the attributes, so a bad call fails loudly.
ffi::Error MakeGeometry(ffi::Span<const int64_t> image, ffi::Span<const int64_t> patches,
                        int64_t kh, int64_t kw, int64_t pad_top, int64_t pad_left,
                        Geometry* g) {
  size_t rank = image.size();
  if (rank < 4 || patches.size() != rank) {
    return ffi::Error::InvalidArgument("im2col: expected (..., H, W, C) arrays of equal rank");
  }
  g->batch = 1;
  for (size_t i = 0; i + 3 < rank; ++i) {
    if (image[i] != patches[i]) return ffi::Error::InvalidArgument("im2col: batch dims differ");
    g->batch *= image[i];
  }
  g->h = image[rank - 3], g->w = image[rank - 2], g->c = image[rank - 1];
  g->ho = patches[rank - 3], g->wo = patches[rank - 2];
  g->kh = kh, g->kw = kw, g->pad_top = pad_top, g->pad_left = pad_left;
  if (kh < 1 || kw < 1 || patches[rank - 1] != g->taps()) {
    return ffi::Error::InvalidArgument("im2col: patches must have kh * kw * C channels");
  }
  return ffi::Error::Success();
}

// patches[b, i, j, (di * kw + dj) * C + c] = image[b, i + di - pad_top, j + dj - pad_left, c],
// zero outside the image.
ffi::Error Im2colImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> image,
                      ffi::ResultBuffer<ffi::F32> patches, int64_t kh, int64_t kw,
                      int64_t pad_top, int64_t pad_left) {
  Geometry g;
  if (auto e = MakeGeometry(image.dimensions(), patches->dimensions(), kh, kw, pad_top,
                            pad_left, &g);
      e.failure()) {
    return e;
  }
  const float* src = image.typed_data();
  float* dst = patches->typed_data();
  ParallelFor(pool, g.batch, [&g, src, dst](int64_t b) {
    const float* in = src + b * g.h * g.w * g.c;
    float* out = dst + b * g.ho * g.wo * g.taps();
    for (int64_t i = 0; i < g.ho; ++i) {
      for (int64_t j = 0; j < g.wo; ++j) {
        for (int64_t di = 0; di < g.kh; ++di) {
          int64_t y = i + di - g.pad_top;
          for (int64_t dj = 0; dj < g.kw; ++dj, out += g.c) {
            int64_t x = j + dj - g.pad_left;
            if (y < 0 || y >= g.h || x < 0 || x >= g.w) {
              std::fill(out, out + g.c, 0.0f);
            } else if (g.c == 1) {
              *out = in[y * g.w + x];
            } else {
              std::memcpy(out, in + (y * g.w + x) * g.c, g.c * sizeof(float));
            }
          }
        }
      }
    }
  });
  return ffi::Error::Success();
}

// The transpose of Im2col: image[b, y, x, c] = sum of the patches entries that copied it.
ffi::Error Col2imImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> patches,
                      ffi::ResultBuffer<ffi::F32> image, int64_t kh, int64_t kw,
                      int64_t pad_top, int64_t pad_left) {
  Geometry g;
  if (auto e = MakeGeometry(image->dimensions(), patches.dimensions(), kh, kw, pad_top,
                            pad_left, &g);
      e.failure()) {
    return e;
  }
  const float* src = patches.typed_data();
  float* dst = image->typed_data();
  ParallelFor(pool, g.batch, [&g, src, dst](int64_t b) {
    float* out = dst + b * g.h * g.w * g.c;
    const float* in = src + b * g.ho * g.wo * g.taps();
    std::fill(out, out + g.h * g.w * g.c, 0.0f);
    for (int64_t i = 0; i < g.ho; ++i) {
      for (int64_t j = 0; j < g.wo; ++j) {
        for (int64_t di = 0; di < g.kh; ++di) {
          int64_t y = i + di - g.pad_top;
          for (int64_t dj = 0; dj < g.kw; ++dj, in += g.c) {
            int64_t x = j + dj - g.pad_left;
            if (y < 0 || y >= g.h || x < 0 || x >= g.w) continue;
            float* o = out + (y * g.w + x) * g.c;
            for (int64_t c = 0; c < g.c; ++c) o[c] += in[c];
          }
        }
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// Both kernels take one array and the window, and write one array.
static auto PatchesBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("kh")
      .Attr<int64_t>("kw")
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_left");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(DigitsIm2col, Im2colImpl, PatchesBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DigitsCol2im, Col2imImpl, PatchesBinding());
