// CUDA NMS: a kernel marks, for every box, which lower-scored boxes it would
// suppress (one bit per box, 64 per word); the greedy pass over that bitmask
// then runs on the host. Same semantics as the CPU version.
#include <vector>

#include "../nms_math.h"
#include "../ops.h"
#include "cuda_helpers.cuh"

namespace atss {
namespace {

constexpr int kBoxesPerWord = 64;

// Block (row_block, col_block) compares 64 "row" boxes with 64 "column" boxes;
// bit j of mask[i][col_block] is set when box i suppresses box col_block*64+j.
//   sorted_boxes (n, 4), sorted_labels (n,) or nullptr, mask (n, words)
template <typename T>
__global__ void nms_mask_kernel(int64_t n, int64_t words, T threshold, const T* sorted_boxes,
                                const int64_t* sorted_labels, unsigned long long* mask) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (row_block > col_block) {
    return;  // a box only suppresses boxes ranked after it
  }
  const int64_t rows_left = n - row_block * kBoxesPerWord;
  const int64_t cols_left = n - col_block * kBoxesPerWord;
  const int row_size = static_cast<int>(rows_left < kBoxesPerWord ? rows_left : kBoxesPerWord);
  const int col_size = static_cast<int>(cols_left < kBoxesPerWord ? cols_left : kBoxesPerWord);

  __shared__ T col_boxes[kBoxesPerWord * 4];
  __shared__ int64_t col_labels[kBoxesPerWord];
  if (threadIdx.x < col_size) {
    const int64_t j = col_block * kBoxesPerWord + threadIdx.x;
    for (int c = 0; c < 4; ++c) {
      col_boxes[threadIdx.x * 4 + c] = sorted_boxes[j * 4 + c];
    }
    col_labels[threadIdx.x] = sorted_labels != nullptr ? sorted_labels[j] : 0;
  }
  __syncthreads();

  if (threadIdx.x < row_size) {
    const int64_t i = row_block * kBoxesPerWord + threadIdx.x;
    const T* box = sorted_boxes + i * 4;
    const int64_t label = sorted_labels != nullptr ? sorted_labels[i] : 0;
    unsigned long long bits = 0;
    for (int j = row_block == col_block ? threadIdx.x + 1 : 0; j < col_size; ++j) {
      if (col_labels[j] == label && box_iou_plus_one(box, col_boxes + j * 4) > threshold) {
        bits |= 1ULL << j;
      }
    }
    mask[i * words + col_block] = bits;
  }
}

}  // namespace

at::Tensor nms_cuda(const at::Tensor& sorted_boxes, const at::Tensor& sorted_labels,
                    double threshold) {
  c10::cuda::CUDAGuard device_guard(sorted_boxes.device());
  const int64_t n = sorted_boxes.size(0);

  const int64_t words = (n + kBoxesPerWord - 1) / kBoxesPerWord;
  at::Tensor mask = at::zeros({n, words}, sorted_boxes.options().dtype(at::kLong));
  const dim3 grid(words, words);
  AT_DISPATCH_FLOATING_TYPES(sorted_boxes.scalar_type(), "nms_cuda", [&] {
    nms_mask_kernel<scalar_t><<<grid, kBoxesPerWord, 0, at::cuda::getCurrentCUDAStream()>>>(
        n, words, static_cast<scalar_t>(threshold), sorted_boxes.data_ptr<scalar_t>(),
        optional_data_ptr<int64_t>(sorted_labels),
        reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Greedy pass in score order: keep a box unless a kept box suppressed it.
  const at::Tensor mask_host = mask.cpu();
  const auto* rows = reinterpret_cast<const unsigned long long*>(mask_host.data_ptr<int64_t>());
  std::vector<unsigned long long> removed(words, 0);
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t word = i / kBoxesPerWord;
    if ((removed[word] >> (i % kBoxesPerWord)) & 1ULL) {
      continue;
    }
    kept.push_back(i);
    for (int64_t w = word; w < words; ++w) {
      removed[w] |= rows[i * words + w];
    }
  }
  return at::tensor(kept, at::TensorOptions().dtype(at::kLong)).to(sorted_boxes.device());
}

}  // namespace atss
