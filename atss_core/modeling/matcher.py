"""Threshold-based matching of predictions (anchors) to ground truth by a quality matrix (IoU)."""
import torch


class Matcher:
    """Assigns every prediction to at most one ground-truth element.

    Given an (M, N) match-quality matrix between M ground-truth elements and N predictions
    (typically box IoU), each prediction takes the ground truth it matches best (ties: lowest
    index), unless that quality is below ``high_threshold``:

    * quality < ``low_threshold`` -> ``BELOW_LOW_THRESHOLD`` (-1, background);
    * ``low_threshold`` <= quality < ``high_threshold`` -> ``BETWEEN_THRESHOLDS`` (-2, ignored).

    With ``allow_low_quality_matches``, every prediction that reaches the highest quality some
    ground truth has with any prediction (ties included) keeps its best match whatever its
    quality, so that every ground truth gets at least one match. Note that such a prediction is
    matched to *its* best ground truth, which need not be the one whose maximum it reached.

    Args:
        high_threshold (float): quality >= this is a match.
        low_threshold (float): quality < this is background.
        allow_low_quality_matches (bool): see above.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold, low_threshold, allow_low_quality_matches=False):
        if low_threshold > high_threshold:
            raise ValueError(f"Matcher low_threshold {low_threshold} exceeds high_threshold "
                             f"{high_threshold}; pass low <= high")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix):
        """Match predictions to ground truth.

        Args:
            match_quality_matrix: Tensor (M, N), quality of every (ground truth, prediction) pair.

        Returns:
            Tensor (N,) int64: the matched ground-truth index in [0, M - 1], or
            ``BELOW_LOW_THRESHOLD`` / ``BETWEEN_THRESHOLDS``. With M = 0 every prediction is
            ``BELOW_LOW_THRESHOLD`` (the original raised instead).
        """
        num_gt, num_preds = match_quality_matrix.shape
        if num_gt == 0 or num_preds == 0:
            return torch.full((num_preds,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64,
                              device=match_quality_matrix.device)
        # torch.max over a dim returns the first index among ties: lowest ground-truth index.
        best_quality, best_gt = match_quality_matrix.max(dim=0)
        matches = best_gt.clone()
        matches[best_quality < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        between = (best_quality >= self.low_threshold) & (best_quality < self.high_threshold)
        matches[between] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            highest_per_gt = match_quality_matrix.max(dim=1).values
            reaches_a_gt_maximum = (match_quality_matrix == highest_per_gt[:, None]).any(dim=0)
            matches[reaches_a_gt_maximum] = best_gt[reaches_a_gt_maximum]
        return matches
