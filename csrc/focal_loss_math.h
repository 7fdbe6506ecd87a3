// Element-wise sigmoid focal loss and its derivative, shared by the CPU and
// CUDA kernels. Written with log-sigmoid terms so that large |logit| gives
// finite values (the original CPU python path returned inf/NaN there).
#pragma once

#include <math.h>

#include "common.h"

namespace atss {

// Focal loss of one logit x for one class channel.
//   is_positive: the anchor's target is this class -> -alpha * (1-p)^g * log(p)
//   is_negative: the anchor is background or another class
//                -> -(1-alpha) * p^g * log(1-p)
// Ignored anchors (target -1) are neither and give 0.
// With want_grad, returns d loss / d x instead of the loss.
template <typename T>
ATSS_HOST_DEVICE T focal_loss_term(T x, bool is_positive, bool is_negative,
                                   T gamma, T alpha, bool want_grad) {
  if (!is_positive && !is_negative) {
    return T(0);
  }
  // e = exp(-|x|) never overflows; p = sigmoid(x), q = 1 - p = sigmoid(-x).
  const T e = ::exp(-::fabs(x));
  const T p = x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
  const T q = x >= T(0) ? e / (T(1) + e) : T(1) / (T(1) + e);
  const T log1p_e = ::log1p(e);
  if (is_positive) {
    const T log_p = (x < T(0) ? x : T(0)) - log1p_e;  // log(sigmoid(x))
    const T q_pow = ::pow(q, gamma);
    return want_grad ? -alpha * q_pow * (q - gamma * p * log_p)
                     : -alpha * q_pow * log_p;
  }
  const T log_q = -(x > T(0) ? x : T(0)) - log1p_e;  // log(1 - sigmoid(x))
  const T p_pow = ::pow(p, gamma);
  return want_grad ? -(T(1) - alpha) * p_pow * (gamma * q * log_q - p)
                   : -(T(1) - alpha) * p_pow * log_q;
}

}  // namespace atss
