// CPU sigmoid focal loss, forward (element-wise loss) and backward.
#include <ATen/Parallel.h>

#include "../focal_loss_math.h"
#include "../ops.h"

namespace atss {

at::Tensor sigmoid_focal_loss_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                  const at::Tensor& grad_losses, double gamma,
                                  double alpha) {
  const int64_t num_classes = logits.size(1);
  const bool want_grad = grad_losses.defined();
  at::Tensor result = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "sigmoid_focal_loss_cpu", [&] {
    const scalar_t* x = logits.data_ptr<scalar_t>();
    const int64_t* target = targets.data_ptr<int64_t>();
    const scalar_t* upstream = want_grad ? grad_losses.data_ptr<scalar_t>() : nullptr;
    scalar_t* out = result.data_ptr<scalar_t>();
    const scalar_t g = static_cast<scalar_t>(gamma);
    const scalar_t a = static_cast<scalar_t>(alpha);
    at::parallel_for(0, logits.numel(), 2048, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t t = target[i / num_classes];
        const bool positive = t == i % num_classes + 1;  // channel c is class c + 1
        const bool negative = t >= 0 && !positive;
        const scalar_t value = focal_loss_term(x[i], positive, negative, g, a, want_grad);
        out[i] = want_grad ? value * upstream[i] : value;
      }
    });
  });
  return result;
}

}  // namespace atss
