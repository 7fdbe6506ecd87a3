// CPU greedy NMS (class-agnostic and class-aware).
#include <vector>

#include "../nms_math.h"
#include "../ops.h"

namespace atss {
namespace {

// Greedy pass over boxes already sorted by descending score; returns the kept
// positions in that order.
//   sorted_boxes (n, 4), sorted_labels (n,) or nullptr
template <typename T>
std::vector<int64_t> greedy_nms(const T* sorted_boxes, const int64_t* sorted_labels,
                                int64_t n, T threshold) {
  std::vector<uint8_t> suppressed(n, 0);
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < n; ++i) {
    if (suppressed[i]) {
      continue;
    }
    kept.push_back(i);
    const T* box_i = sorted_boxes + 4 * i;
    for (int64_t j = i + 1; j < n; ++j) {
      if (suppressed[j] || (sorted_labels != nullptr && sorted_labels[j] != sorted_labels[i])) {
        continue;
      }
      if (box_iou_plus_one(box_i, sorted_boxes + 4 * j) > threshold) {
        suppressed[j] = 1;
      }
    }
  }
  return kept;
}

}  // namespace

at::Tensor nms_cpu(const at::Tensor& sorted_boxes, const at::Tensor& sorted_labels,
                   double threshold) {
  std::vector<int64_t> kept;
  AT_DISPATCH_FLOATING_TYPES(sorted_boxes.scalar_type(), "nms_cpu", [&] {
    kept = greedy_nms<scalar_t>(
        sorted_boxes.data_ptr<scalar_t>(),
        sorted_labels.defined() ? sorted_labels.data_ptr<int64_t>() : nullptr,
        sorted_boxes.size(0), static_cast<scalar_t>(threshold));
  });
  return at::tensor(kept, at::TensorOptions().dtype(at::kLong));
}

}  // namespace atss
