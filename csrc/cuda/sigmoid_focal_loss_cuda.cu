// CUDA sigmoid focal loss, forward (element-wise loss) and backward.
#include "../focal_loss_math.h"
#include "../ops.h"
#include "cuda_helpers.cuh"

namespace atss {
namespace {

//   logits (N, C), targets (N,), upstream (N, C) or nullptr, out (N, C)
template <typename T>
__global__ void sigmoid_focal_loss_kernel(int64_t count, int64_t num_classes, const T* logits,
                                          const int64_t* targets, const T* upstream, T gamma,
                                          T alpha, T* out) {
  ATSS_CUDA_KERNEL_LOOP(i, count) {
    const int64_t t = targets[i / num_classes];
    const bool positive = t == i % num_classes + 1;  // channel c is class c + 1
    const bool negative = t >= 0 && !positive;
    const T value = focal_loss_term(logits[i], positive, negative, gamma, alpha, upstream != nullptr);
    out[i] = upstream != nullptr ? value * upstream[i] : value;
  }
}

}  // namespace

at::Tensor sigmoid_focal_loss_cuda(const at::Tensor& logits, const at::Tensor& targets,
                                   const at::Tensor& grad_losses, double gamma, double alpha) {
  c10::cuda::CUDAGuard device_guard(logits.device());
  at::Tensor result = at::empty_like(logits);
  const int64_t count = logits.numel();
  if (count == 0) {
    return result;
  }
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "sigmoid_focal_loss_cuda", [&] {
    sigmoid_focal_loss_kernel<scalar_t>
        <<<blocks_for(count), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            count, logits.size(1), logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(),
            optional_data_ptr<scalar_t>(grad_losses), static_cast<scalar_t>(gamma),
            static_cast<scalar_t>(alpha), result.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return result;
}

}  // namespace atss
