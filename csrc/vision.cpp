// Python bindings of atss_core._C. Each function checks its arguments and
// dispatches to the CPU or CUDA implementation by the tensors' device.
#include <torch/extension.h>

#include <array>

#include "deform_conv.h"
#include "ops.h"

namespace atss {
namespace {

void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4,
              "nms: boxes must be (N, 4) xyxy, got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0),
              "nms: scores must be (N,) with N = ", boxes.size(0), ", got ", scores.sizes());
  ATSS_CHECK_FLOATING(boxes, "nms: boxes");
  ATSS_CHECK_SAME_DEVICE(boxes, scores, "nms: boxes", "scores");
}

at::Tensor greedy_nms_positions(const at::Tensor& sorted_boxes, const at::Tensor& sorted_labels,
                                double threshold) {
  ATSS_DISPATCH_DEVICE(sorted_boxes, "nms", nms, sorted_boxes, sorted_labels, threshold);
}

// Sorts once here for both devices, so the kernels only run the greedy pass.
at::Tensor nms_dispatch(const at::Tensor& boxes, const at::Tensor& scores,
                        const at::Tensor& labels, double threshold) {
  if (boxes.size(0) == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  // Stable sort: among equal scores the lower index is visited first.
  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();
  const at::Tensor sorted_labels =
      labels.defined() ? labels.index_select(0, order).contiguous() : at::Tensor();
  return order.index_select(0, greedy_nms_positions(sorted_boxes, sorted_labels, threshold));
}

at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double threshold) {
  check_nms_args(boxes, scores);
  return nms_dispatch(boxes.contiguous(), scores.contiguous(), at::Tensor(), threshold);
}

at::Tensor ml_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& labels,
                  double threshold) {
  check_nms_args(boxes, scores);
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == boxes.size(0),
              "ml_nms: labels must be (N,) with N = ", boxes.size(0), ", got ", labels.sizes());
  ATSS_CHECK_SAME_DEVICE(boxes, labels, "ml_nms: boxes", "labels");
  // Labels may arrive as float (the original passed labels.float()).
  return nms_dispatch(boxes.contiguous(), scores.contiguous(),
                      labels.to(at::kLong).contiguous(), threshold);
}

at::Tensor focal_loss_dispatch(const at::Tensor& logits, const at::Tensor& targets,
                               const at::Tensor& grad_losses, double gamma, double alpha) {
  TORCH_CHECK(logits.dim() == 2, "sigmoid_focal_loss: logits must be (N, C), got ",
              logits.sizes());
  ATSS_CHECK_FLOATING(logits, "sigmoid_focal_loss: logits");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0),
              "sigmoid_focal_loss: targets must be (N,) with N = ", logits.size(0),
              ", got ", targets.sizes());
  TORCH_CHECK(!targets.is_floating_point() && !targets.is_complex(),
              "sigmoid_focal_loss: targets must be an integer tensor, got ",
              targets.scalar_type());
  ATSS_CHECK_SAME_DEVICE(logits, targets, "sigmoid_focal_loss: logits", "targets");
  const at::Tensor logits_c = logits.contiguous();
  const at::Tensor targets_c = targets.to(at::kLong).contiguous();
  at::Tensor grad_c;
  if (grad_losses.defined()) {
    TORCH_CHECK(grad_losses.sizes() == logits.sizes(),
                "sigmoid_focal_loss: grad must match logits ", logits.sizes());
    grad_c = grad_losses.to(logits.scalar_type()).contiguous();
  }
  ATSS_DISPATCH_DEVICE(logits, "sigmoid_focal_loss", sigmoid_focal_loss, logits_c, targets_c,
                       grad_c, gamma, alpha);
}

at::Tensor focal_loss_forward(const at::Tensor& logits, const at::Tensor& targets,
                              double gamma, double alpha) {
  return focal_loss_dispatch(logits, targets, at::Tensor(), gamma, alpha);
}

at::Tensor focal_loss_backward(const at::Tensor& logits, const at::Tensor& targets,
                               const at::Tensor& grad_losses, double gamma, double alpha) {
  return focal_loss_dispatch(logits, targets, grad_losses, gamma, alpha);
}

using Pair = std::array<int64_t, 2>;

DeformParams make_params(Pair stride, Pair padding, Pair dilation, int64_t groups,
                         int64_t deformable_groups) {
  return {stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
          groups, deformable_groups};
}

at::Tensor deform_forward(const at::Tensor& input, const at::Tensor& weight,
                          const at::Tensor& offset, const std::optional<at::Tensor>& mask,
                          const std::optional<at::Tensor>& bias, Pair stride, Pair padding,
                          Pair dilation, int64_t groups, int64_t deformable_groups) {
  return deform_conv_forward(input, weight, offset, mask, bias,
                             make_params(stride, padding, dilation, groups, deformable_groups));
}

std::vector<at::Tensor> deform_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& weight, const at::Tensor& offset,
                                        const std::optional<at::Tensor>& mask, bool with_bias,
                                        Pair stride, Pair padding, Pair dilation,
                                        int64_t groups, int64_t deformable_groups) {
  return deform_conv_backward(
      grad_output, input, weight, offset, mask, with_bias,
      make_params(stride, padding, dilation, groups, deformable_groups));
}

bool compiled_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace atss

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "Compiled ops of atss_core: NMS, sigmoid focal loss, deformable convolution.";
  m.def("nms", &atss::nms, "Greedy NMS ('+1' areas, IoU > threshold); kept indices by score.",
        py::arg("boxes"), py::arg("scores"), py::arg("threshold"));
  m.def("ml_nms", &atss::ml_nms, "Class-aware NMS: only boxes of the same label suppress.",
        py::arg("boxes"), py::arg("scores"), py::arg("labels"), py::arg("threshold"));
  m.def("sigmoid_focal_loss_forward", &atss::focal_loss_forward,
        "Element-wise sigmoid focal loss (N, C).", py::arg("logits"), py::arg("targets"),
        py::arg("gamma"), py::arg("alpha"));
  m.def("sigmoid_focal_loss_backward", &atss::focal_loss_backward,
        "Gradient of sum(grad_losses * loss) w.r.t. logits.", py::arg("logits"),
        py::arg("targets"), py::arg("grad_losses"), py::arg("gamma"), py::arg("alpha"));
  m.def("deform_conv_forward", &atss::deform_forward,
        "Deformable convolution (v2 when mask is given).", py::arg("input"),
        py::arg("weight"), py::arg("offset"), py::arg("mask"), py::arg("bias"),
        py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"),
        py::arg("deformable_groups"));
  m.def("deform_conv_backward", &atss::deform_backward,
        "Gradients (input, offset, mask, weight, bias) of a deformable convolution.",
        py::arg("grad_output"), py::arg("input"), py::arg("weight"), py::arg("offset"),
        py::arg("mask"), py::arg("with_bias"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("groups"), py::arg("deformable_groups"));
  m.def("compiled_with_cuda", &atss::compiled_with_cuda,
        "Whether this build contains the CUDA kernels.");
}
