// Per-element math of deformable convolution (bilinear sampling, im2col entry,
// its scatter-back and the offset/mask gradient), shared by the CPU and CUDA
// kernels so both compute exactly the same thing. A sampling point (h, w)
// reads the four surrounding pixels of one (height, width) plane; pixels
// outside the plane count as 0, and points with h <= -1, h >= height,
// w <= -1 or w >= width read nothing at all (as in the original DCN kernels).
#pragma once

#include <math.h>

#include "common.h"

namespace atss {

// Geometry of one deformable convolution, in the units of its input.
struct DeformGeometry {
  int64_t channels, height, width;        // input plane
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t out_h, out_w;                   // output plane
  int64_t deformable_groups;
};

template <typename T>
ATSS_HOST_DEVICE bool inside_sampling_range(T h, T w, int64_t height, int64_t width) {
  return h > T(-1) && w > T(-1) && h < T(height) && w < T(width);
}

// The four neighbours of (h, w), their bilinear weights and the weights'
// derivatives; a neighbour outside the plane is marked invalid (weight 0).
template <typename T>
struct BilinearCorners {
  bool valid[4];
  int64_t index[4];
  T weight[4];
  // d weight / d h and d weight / d w for each corner.
  T weight_dh[4];
  T weight_dw[4];
};

template <typename T>
ATSS_HOST_DEVICE BilinearCorners<T> bilinear_corners(T h, T w, int64_t height,
                                                   int64_t width) {
  BilinearCorners<T> c;
  const int64_t h_low = static_cast<int64_t>(::floor(h));
  const int64_t w_low = static_cast<int64_t>(::floor(w));
  const T lh = h - T(h_low), lw = w - T(w_low);
  const T hh = T(1) - lh, hw = T(1) - lw;
  // Order: (low, low), (low, high), (high, low), (high, high).
  const int64_t ys[4] = {h_low, h_low, h_low + 1, h_low + 1};
  const int64_t xs[4] = {w_low, w_low + 1, w_low, w_low + 1};
  const T wy[4] = {hh, hh, lh, lh};
  const T wx[4] = {hw, lw, hw, lw};
  const T dwy[4] = {T(-1), T(-1), T(1), T(1)};
  const T dwx[4] = {T(-1), T(1), T(-1), T(1)};
  for (int i = 0; i < 4; ++i) {
    const bool valid = ys[i] >= 0 && ys[i] < height && xs[i] >= 0 && xs[i] < width;
    c.valid[i] = valid;
    c.index[i] = valid ? ys[i] * width + xs[i] : 0;
    c.weight[i] = valid ? wy[i] * wx[i] : T(0);
    c.weight_dh[i] = valid ? dwy[i] * wx[i] : T(0);
    c.weight_dw[i] = valid ? wy[i] * dwx[i] : T(0);
  }
  return c;
}

// Value of `plane` (height x width) at (h, w), 0 outside the sampling range.
template <typename T>
ATSS_HOST_DEVICE T bilinear_sample(const T* plane, T h, T w, int64_t height,
                                   int64_t width) {
  if (!inside_sampling_range(h, w, height, width)) {
    return T(0);
  }
  const BilinearCorners<T> c = bilinear_corners(h, w, height, width);
  T value = T(0);
  for (int i = 0; i < 4; ++i) {
    if (c.valid[i]) {
      value += c.weight[i] * plane[c.index[i]];
    }
  }
  return value;
}

// Where kernel tap k of output pixel l of deformable group dg samples the
// input: base grid position plus the learned offset, and the tap's modulation
// (1 without a mask).
//   offset: (deformable_groups * 2 * K, L), rows (dg*K + k)*2 + {0: dy, 1: dx}
//   mask:   (deformable_groups * K, L) or nullptr
// with K = kernel_h * kernel_w and L = out_h * out_w.
template <typename T>
struct SamplingPoint {
  T h, w, modulation;
};

template <typename T>
ATSS_HOST_DEVICE SamplingPoint<T> sampling_point(const DeformGeometry& g, const T* offset,
                                                 const T* mask, int64_t dg, int64_t k,
                                                 int64_t l) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t pixels = g.out_h * g.out_w;
  const int64_t tap_row = dg * taps + k;
  const T* tap_offset = offset + tap_row * 2 * pixels;
  const int64_t oy = l / g.out_w, ox = l % g.out_w;
  const int64_t ky = k / g.kernel_w, kx = k % g.kernel_w;
  SamplingPoint<T> s;
  s.h = T(oy * g.stride_h - g.pad_h + ky * g.dilation_h) + tap_offset[l];
  s.w = T(ox * g.stride_w - g.pad_w + kx * g.dilation_w) + tap_offset[pixels + l];
  s.modulation = mask != nullptr ? mask[tap_row * pixels + l] : T(1);
  return s;
}

// Position of im2col entry `index` = (c*K + k)*L + l in the matrix (C*K, L):
// input channel c, kernel tap k, output pixel l, and c's deformable group.
struct ColumnEntry {
  int64_t channel, tap, pixel, group;
};

ATSS_HOST_DEVICE ColumnEntry column_entry(const DeformGeometry& g, int64_t index) {
  const int64_t pixels = g.out_h * g.out_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  ColumnEntry e;
  e.pixel = index % pixels;
  e.tap = (index / pixels) % taps;
  e.channel = index / (pixels * taps);
  e.group = e.channel / (g.channels / g.deformable_groups);
  return e;
}

// Value of im2col entry `index` (layout above).
//   input: (C, H, W) of one image
template <typename T>
ATSS_HOST_DEVICE T deform_column_value(const DeformGeometry& g, const T* input,
                                       const T* offset, const T* mask, int64_t index) {
  const ColumnEntry e = column_entry(g, index);
  const SamplingPoint<T> s = sampling_point(g, offset, mask, e.group, e.tap, e.pixel);
  const T* plane = input + e.channel * g.height * g.width;
  return s.modulation * bilinear_sample(plane, s.h, s.w, g.height, g.width);
}

// Scatters the gradient of im2col entry `index` (same layout as above) into
// grad_input (C, H, W) through add(pointer, value), which is a plain += on
// the CPU and an atomic add on the GPU.
template <typename T, typename AddFn>
ATSS_HOST_DEVICE void deform_scatter_column_grad(const DeformGeometry& g, T column_grad,
                                                 const T* offset, const T* mask,
                                                 int64_t index, T* grad_input,
                                                 AddFn add) {
  const ColumnEntry e = column_entry(g, index);
  const SamplingPoint<T> s = sampling_point(g, offset, mask, e.group, e.tap, e.pixel);
  if (!inside_sampling_range(s.h, s.w, g.height, g.width)) {
    return;
  }
  const BilinearCorners<T> corners = bilinear_corners(s.h, s.w, g.height, g.width);
  const T top_grad = column_grad * s.modulation;
  T* plane_grad = grad_input + e.channel * g.height * g.width;
  for (int i = 0; i < 4; ++i) {
    if (corners.valid[i]) {
      add(plane_grad + corners.index[i], corners.weight[i] * top_grad);
    }
  }
}

// Gradient w.r.t. the offset pair and the mask of tap k, pixel l, group dg:
// index = (dg*K + k)*L + l. Sums over the channels of the deformable group.
//   grad_columns: (C*K, L); grad_offset: like offset; grad_mask: like mask or nullptr
template <typename T>
ATSS_HOST_DEVICE void deform_offset_mask_grad_at(const DeformGeometry& g, const T* grad_columns,
                                                 const T* input, const T* offset,
                                                 const T* mask, int64_t index,
                                                 T* grad_offset, T* grad_mask) {
  const int64_t pixels = g.out_h * g.out_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t l = index % pixels;
  const int64_t k = (index / pixels) % taps;
  const int64_t dg = index / (pixels * taps);
  const int64_t group_channels = g.channels / g.deformable_groups;
  const int64_t plane_size = g.height * g.width;
  const SamplingPoint<T> s = sampling_point(g, offset, mask, dg, k, l);
  T grad_h = T(0), grad_w = T(0), grad_m = T(0);
  if (inside_sampling_range(s.h, s.w, g.height, g.width)) {
    const BilinearCorners<T> corners = bilinear_corners(s.h, s.w, g.height, g.width);
    for (int64_t c = dg * group_channels; c < (dg + 1) * group_channels; ++c) {
      const T* plane = input + c * plane_size;
      const T column_grad = grad_columns[(c * taps + k) * pixels + l];
      T value = T(0), value_dh = T(0), value_dw = T(0);
      for (int i = 0; i < 4; ++i) {
        if (corners.valid[i]) {
          const T v = plane[corners.index[i]];
          value += corners.weight[i] * v;
          value_dh += corners.weight_dh[i] * v;
          value_dw += corners.weight_dw[i] * v;
        }
      }
      grad_h += column_grad * s.modulation * value_dh;
      grad_w += column_grad * s.modulation * value_dw;
      grad_m += column_grad * value;
    }
  }
  const int64_t tap_row = dg * taps + k;
  grad_offset[tap_row * 2 * pixels + l] = grad_h;
  grad_offset[(tap_row * 2 + 1) * pixels + l] = grad_w;
  if (grad_mask != nullptr) {
    grad_mask[tap_row * pixels + l] = grad_m;
  }
}

}  // namespace atss
