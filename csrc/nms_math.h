// IoU used by NMS, shared by the CPU and CUDA kernels.
#pragma once

#include "common.h"

namespace atss {

// IoU of two xyxy boxes with the legacy "+1" pixel convention: a box spanning
// x1..x2 covers x2 - x1 + 1 pixels, in its area and in the intersection.
// Both pointers address 4 contiguous coordinates.
template <typename T>
ATSS_HOST_DEVICE T box_iou_plus_one(const T* a, const T* b) {
  const T left = a[0] > b[0] ? a[0] : b[0];
  const T top = a[1] > b[1] ? a[1] : b[1];
  const T right = a[2] < b[2] ? a[2] : b[2];
  const T bottom = a[3] < b[3] ? a[3] : b[3];
  const T inter_w = right - left + T(1) > T(0) ? right - left + T(1) : T(0);
  const T inter_h = bottom - top + T(1) > T(0) ? bottom - top + T(1) : T(0);
  const T inter = inter_w * inter_h;
  const T area_a = (a[2] - a[0] + T(1)) * (a[3] - a[1] + T(1));
  const T area_b = (b[2] - b[0] + T(1)) * (b[3] - b[1] + T(1));
  return inter / (area_a + area_b - inter);
}

}  // namespace atss
