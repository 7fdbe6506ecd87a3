"""Build the input pipeline of the config: resize, flip (training only), tensor, normalise."""
from . import transforms as T


def build_transforms(cfg, is_train=True):
    """``Compose([Resize, RandomHorizontalFlip, ToTensor, Normalize])`` for training or test.

    Training resizes the shorter side to a random choice of INPUT.MIN_SIZE_TRAIN, or to a random
    integer in INPUT.MIN_SIZE_RANGE_TRAIN (inclusive) when that is set, and flips with p = 0.5;
    test uses INPUT.MIN_SIZE_TEST and never flips. The flip is always ``transforms[1]``.
    """
    if is_train:
        low, high = cfg.INPUT.MIN_SIZE_RANGE_TRAIN
        if low == -1:
            min_size = cfg.INPUT.MIN_SIZE_TRAIN
        else:
            if not 0 < low <= high:
                raise ValueError(f"INPUT.MIN_SIZE_RANGE_TRAIN {(low, high)} must be (low, high) with "
                                 "0 < low <= high, or (-1, -1) to use INPUT.MIN_SIZE_TRAIN")
            min_size = range(low, high + 1)
        max_size = cfg.INPUT.MAX_SIZE_TRAIN
        flip_prob = 0.5
    else:
        min_size = cfg.INPUT.MIN_SIZE_TEST
        max_size = cfg.INPUT.MAX_SIZE_TEST
        flip_prob = 0.0
    return T.Compose([
        T.Resize(min_size, max_size),
        T.RandomHorizontalFlip(flip_prob),
        T.ToTensor(),
        T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD, to_bgr255=cfg.INPUT.TO_BGR255),
    ])
