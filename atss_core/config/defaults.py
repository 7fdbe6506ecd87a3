"""Default configuration of atss_core.

Every key and default value matches the original ATSS ``defaults.py``, so any yaml
file written for the original merges unchanged. Keys of parts that ATSS does not use
(ROI heads, masks, keypoints, FCOS, RetinaNet, FBNet) are kept for that reason only.

Naming convention: an option that exists for both phases carries a ``_TRAIN`` or
``_TEST`` suffix (``MIN_SIZE_TRAIN`` / ``MIN_SIZE_TEST``).

Use ``from atss_core.config import cfg`` and work on ``cfg.clone()``.
"""
import os

import torch
from yacs.config import CfgNode as CN

_C = CN()

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.RPN_ONLY = False
_C.MODEL.MASK_ON = False
_C.MODEL.ATSS_ON = False
_C.MODEL.FCOS_ON = False
_C.MODEL.RETINANET_ON = False
_C.MODEL.KEYPOINT_ON = False
# The original always defaults to "cuda"; we fall back to the CPU on machines without a GPU.
_C.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
_C.MODEL.CLS_AGNOSTIC_BBOX_REG = False
# Initial weights: a file path, a URL, or "catalog://<name>" looked up in ModelCatalog.
_C.MODEL.WEIGHT = ""
_C.MODEL.USE_SYNCBN = False

# ---------------------------------------------------------------------------
# Input images
# ---------------------------------------------------------------------------
_C.INPUT = CN()
# Candidate lengths of the shorter image side in training (one is drawn per image).
_C.INPUT.MIN_SIZE_TRAIN = (800,)
# (low, high): draw the shorter side uniformly from this range instead; (-1, -1) disables it.
_C.INPUT.MIN_SIZE_RANGE_TRAIN = (-1, -1)
# Upper bound on the longer side in training.
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
# Per-channel normalisation, in the channel order the network sees (BGR for Caffe2 weights).
_C.INPUT.PIXEL_MEAN = [102.9801, 115.9465, 122.7717]
_C.INPUT.PIXEL_STD = [1., 1., 1.]
# Feed BGR images in the 0-255 range, as the Caffe2 ImageNet weights expect.
_C.INPUT.TO_BGR255 = True

# ---------------------------------------------------------------------------
# Datasets: names registered in the catalog at PATHS_CATALOG
# (or "coco:IMG_DIR:ANN_FILE" for a COCO-format json, see paths_catalog.py)
# ---------------------------------------------------------------------------
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ()
_C.DATASETS.TEST = ()

# ---------------------------------------------------------------------------
# Data loader
# ---------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
# Pad each batch so that its height and width are multiples of this (0: no rounding).
_C.DATALOADER.SIZE_DIVISIBILITY = 0
# Batch portrait images with portrait images and landscape with landscape.
_C.DATALOADER.ASPECT_RATIO_GROUPING = True

# ---------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------
_C.MODEL.BACKBONE = CN()
# Name of the registered body builder, e.g. "R-50-FPN-RETINANET".
_C.MODEL.BACKBONE.CONV_BODY = "R-50-C4"
# Stages up to and including this one are frozen (1: stem, 2: stem and layer1).
_C.MODEL.BACKBONE.FREEZE_CONV_BODY_AT = 2
_C.MODEL.BACKBONE.USE_GN = False

# ---------------------------------------------------------------------------
# Feature pyramid
# ---------------------------------------------------------------------------
_C.MODEL.FPN = CN()
_C.MODEL.FPN.USE_GN = False
_C.MODEL.FPN.USE_RELU = False

# ---------------------------------------------------------------------------
# GroupNorm (where a module is built with GN)
# ---------------------------------------------------------------------------
_C.MODEL.GROUP_NORM = CN()
# Channels per group; -1 means "use NUM_GROUPS instead".
_C.MODEL.GROUP_NORM.DIM_PER_GP = -1
# Number of groups; -1 means "use DIM_PER_GP instead".
_C.MODEL.GROUP_NORM.NUM_GROUPS = 32
_C.MODEL.GROUP_NORM.EPSILON = 1e-5

# ---------------------------------------------------------------------------
# RPN (unused by ATSS; kept so maskrcnn-benchmark style yaml files merge)
# ---------------------------------------------------------------------------
_C.MODEL.RPN = CN()
_C.MODEL.RPN.USE_FPN = False
_C.MODEL.RPN.ANCHOR_SIZES = (32, 64, 128, 256, 512)
_C.MODEL.RPN.ANCHOR_STRIDE = (16,)
_C.MODEL.RPN.ASPECT_RATIOS = (0.5, 1.0, 2.0)
# Anchors reaching more than this many pixels outside the image are dropped; -1 keeps all.
_C.MODEL.RPN.STRADDLE_THRESH = 0
_C.MODEL.RPN.FG_IOU_THRESHOLD = 0.7
_C.MODEL.RPN.BG_IOU_THRESHOLD = 0.3
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
# Proposals kept before NMS (per level with FPN) and after it.
_C.MODEL.RPN.PRE_NMS_TOP_N_TRAIN = 12000
_C.MODEL.RPN.PRE_NMS_TOP_N_TEST = 6000
_C.MODEL.RPN.POST_NMS_TOP_N_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOP_N_TEST = 1000
_C.MODEL.RPN.NMS_THRESH = 0.7
_C.MODEL.RPN.MIN_SIZE = 0
# Proposals kept after merging the FPN levels.
_C.MODEL.RPN.FPN_POST_NMS_TOP_N_TRAIN = 2000
_C.MODEL.RPN.FPN_POST_NMS_TOP_N_TEST = 2000
_C.MODEL.RPN.RPN_HEAD = "SingleConvRPNHead"

# ---------------------------------------------------------------------------
# ROI heads (unused by ATSS; kept so maskrcnn-benchmark style yaml files merge)
# ---------------------------------------------------------------------------
_C.MODEL.ROI_HEADS = CN()
_C.MODEL.ROI_HEADS.USE_FPN = False
_C.MODEL.ROI_HEADS.FG_IOU_THRESHOLD = 0.5
_C.MODEL.ROI_HEADS.BG_IOU_THRESHOLD = 0.5
_C.MODEL.ROI_HEADS.BBOX_REG_WEIGHTS = (10., 10., 5., 5.)
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
_C.MODEL.ROI_HEADS.SCORE_THRESH = 0.05
_C.MODEL.ROI_HEADS.NMS = 0.5
_C.MODEL.ROI_HEADS.DETECTIONS_PER_IMG = 100

_C.MODEL.ROI_BOX_HEAD = CN()
_C.MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR = "ResNet50Conv5ROIFeatureExtractor"
_C.MODEL.ROI_BOX_HEAD.PREDICTOR = "FastRCNNPredictor"
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_BOX_HEAD.POOLER_SCALES = (1.0 / 16,)
_C.MODEL.ROI_BOX_HEAD.NUM_CLASSES = 81
_C.MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM = 1024
_C.MODEL.ROI_BOX_HEAD.USE_GN = False
_C.MODEL.ROI_BOX_HEAD.DILATION = 1
_C.MODEL.ROI_BOX_HEAD.CONV_HEAD_DIM = 256
_C.MODEL.ROI_BOX_HEAD.NUM_STACKED_CONVS = 4

_C.MODEL.ROI_MASK_HEAD = CN()
_C.MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR = "ResNet50Conv5ROIFeatureExtractor"
_C.MODEL.ROI_MASK_HEAD.PREDICTOR = "MaskRCNNC4Predictor"
_C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_MASK_HEAD.POOLER_SCALES = (1.0 / 16,)
_C.MODEL.ROI_MASK_HEAD.MLP_HEAD_DIM = 1024
_C.MODEL.ROI_MASK_HEAD.CONV_LAYERS = (256, 256, 256, 256)
_C.MODEL.ROI_MASK_HEAD.RESOLUTION = 14
_C.MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR = True
_C.MODEL.ROI_MASK_HEAD.POSTPROCESS_MASKS = False
_C.MODEL.ROI_MASK_HEAD.POSTPROCESS_MASKS_THRESHOLD = 0.5
_C.MODEL.ROI_MASK_HEAD.DILATION = 1
_C.MODEL.ROI_MASK_HEAD.USE_GN = False

_C.MODEL.ROI_KEYPOINT_HEAD = CN()
_C.MODEL.ROI_KEYPOINT_HEAD.FEATURE_EXTRACTOR = "KeypointRCNNFeatureExtractor"
_C.MODEL.ROI_KEYPOINT_HEAD.PREDICTOR = "KeypointRCNNPredictor"
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_SCALES = (1.0 / 16,)
_C.MODEL.ROI_KEYPOINT_HEAD.MLP_HEAD_DIM = 1024
_C.MODEL.ROI_KEYPOINT_HEAD.CONV_LAYERS = (512,) * 8
_C.MODEL.ROI_KEYPOINT_HEAD.RESOLUTION = 14
_C.MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES = 17
_C.MODEL.ROI_KEYPOINT_HEAD.SHARE_BOX_FEATURE_EXTRACTOR = True

# ---------------------------------------------------------------------------
# ResNet / ResNeXt
# ---------------------------------------------------------------------------
_C.MODEL.RESNETS = CN()
# 1 gives ResNet; more than 1 gives ResNeXt with grouped 3x3 convs.
_C.MODEL.RESNETS.NUM_GROUPS = 1
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# Put a block's stride in its first 1x1 conv (MSRA weights) rather than in the 3x3 conv.
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
_C.MODEL.RESNETS.TRANS_FUNC = "BottleneckWithFixedBatchNorm"
_C.MODEL.RESNETS.STEM_FUNC = "StemWithFixedBatchNorm"
_C.MODEL.RESNETS.RES5_DILATION = 1
_C.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 256 * 4
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
# Deformable 3x3 convs, one flag per stage layer1..layer4.
_C.MODEL.RESNETS.STAGE_WITH_DCN = (False, False, False, False)
_C.MODEL.RESNETS.WITH_MODULATED_DCN = False
_C.MODEL.RESNETS.DEFORMABLE_GROUPS = 1

# ---------------------------------------------------------------------------
# ATSS
# ---------------------------------------------------------------------------
_C.MODEL.ATSS = CN()
# Number of classes plus one for the background (the head predicts NUM_CLASSES - 1).
_C.MODEL.ATSS.NUM_CLASSES = 81

# Anchors: one size per pyramid level, ASPECT_RATIOS x SCALES_PER_OCTAVE anchors per location.
_C.MODEL.ATSS.ANCHOR_SIZES = (64, 128, 256, 512, 1024)
_C.MODEL.ATSS.ASPECT_RATIOS = (1.0,)
_C.MODEL.ATSS.ANCHOR_STRIDES = (8, 16, 32, 64, 128)
_C.MODEL.ATSS.STRADDLE_THRESH = 0
_C.MODEL.ATSS.OCTAVE = 2.0
_C.MODEL.ATSS.SCALES_PER_OCTAVE = 1

# Head: conv layers per tower, and a deformable conv as the last tower layer.
_C.MODEL.ATSS.NUM_CONVS = 4
_C.MODEL.ATSS.USE_DCN_IN_TOWER = False

# Sigmoid focal loss.
_C.MODEL.ATSS.LOSS_ALPHA = 0.25
_C.MODEL.ATSS.LOSS_GAMMA = 2.0

# Positive sample selection: 'ATSS' (adaptive), 'SSC' (FCOS-style scale ranges),
# 'IoU' (RetinaNet-style thresholds) or 'TOPK'.
_C.MODEL.ATSS.POSITIVE_TYPE = 'ATSS'

# IoU thresholds of the 'IoU' positive type.
_C.MODEL.ATSS.FG_IOU_THRESHOLD = 0.5
_C.MODEL.ATSS.BG_IOU_THRESHOLD = 0.4

# Candidates per level (ATSS) or per object (TOPK), counted per anchor shape.
_C.MODEL.ATSS.TOPK = 9

# Regress offsets relative to the anchor box ('BOX') or distances from its centre ('POINT').
_C.MODEL.ATSS.REGRESSION_TYPE = 'BOX'

_C.MODEL.ATSS.REG_LOSS_WEIGHT = 2.0

# Initial foreground probability (sets the classification bias) and inference settings.
_C.MODEL.ATSS.PRIOR_PROB = 0.01
_C.MODEL.ATSS.INFERENCE_TH = 0.05
_C.MODEL.ATSS.NMS_TH = 0.6
_C.MODEL.ATSS.PRE_NMS_TOP_N = 1000

# ---------------------------------------------------------------------------
# FCOS (unused by ATSS; kept so the original's yaml files merge)
# ---------------------------------------------------------------------------
_C.MODEL.FCOS = CN()
_C.MODEL.FCOS.NUM_CLASSES = 81
_C.MODEL.FCOS.FPN_STRIDES = [8, 16, 32, 64, 128]
_C.MODEL.FCOS.PRIOR_PROB = 0.01
_C.MODEL.FCOS.INFERENCE_TH = 0.05
_C.MODEL.FCOS.NMS_TH = 0.6
_C.MODEL.FCOS.PRE_NMS_TOP_N = 1000
_C.MODEL.FCOS.LOSS_ALPHA = 0.25
_C.MODEL.FCOS.LOSS_GAMMA = 2.0
_C.MODEL.FCOS.NUM_CONVS = 4
# A radius <= 0 turns centre sampling off.
_C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 0.0
# One of "iou", "linear_iou", "giou".
_C.MODEL.FCOS.IOU_LOSS_TYPE = "iou"
_C.MODEL.FCOS.NORM_REG_TARGETS = False
_C.MODEL.FCOS.CENTERNESS_ON_REG = False
_C.MODEL.FCOS.USE_DCN_IN_TOWER = False

# ---------------------------------------------------------------------------
# RetinaNet (ATSS reads USE_C5 for its P6 input; the rest is kept so yaml files merge)
# ---------------------------------------------------------------------------
_C.MODEL.RETINANET = CN()
_C.MODEL.RETINANET.NUM_CLASSES = 81
_C.MODEL.RETINANET.ANCHOR_SIZES = (32, 64, 128, 256, 512)
_C.MODEL.RETINANET.ASPECT_RATIOS = (0.5, 1.0, 2.0)
_C.MODEL.RETINANET.ANCHOR_STRIDES = (8, 16, 32, 64, 128)
_C.MODEL.RETINANET.STRADDLE_THRESH = 0
_C.MODEL.RETINANET.OCTAVE = 2.0
_C.MODEL.RETINANET.SCALES_PER_OCTAVE = 3
# Compute P6 from C5 (True) or from P5 (False).
_C.MODEL.RETINANET.USE_C5 = True
_C.MODEL.RETINANET.NUM_CONVS = 4
_C.MODEL.RETINANET.BBOX_REG_WEIGHT = 4.0
_C.MODEL.RETINANET.BBOX_REG_BETA = 0.11
_C.MODEL.RETINANET.PRE_NMS_TOP_N = 1000
_C.MODEL.RETINANET.FG_IOU_THRESHOLD = 0.5
_C.MODEL.RETINANET.BG_IOU_THRESHOLD = 0.4
_C.MODEL.RETINANET.LOSS_ALPHA = 0.25
_C.MODEL.RETINANET.LOSS_GAMMA = 2.0
_C.MODEL.RETINANET.PRIOR_PROB = 0.01
_C.MODEL.RETINANET.INFERENCE_TH = 0.05
_C.MODEL.RETINANET.NMS_TH = 0.4

# ---------------------------------------------------------------------------
# FBNet (unused by ATSS; kept so the original's yaml files merge)
# ---------------------------------------------------------------------------
_C.MODEL.FBNET = CN()
_C.MODEL.FBNET.ARCH = "default"
_C.MODEL.FBNET.ARCH_DEF = ""
_C.MODEL.FBNET.BN_TYPE = "bn"
_C.MODEL.FBNET.SCALE_FACTOR = 1.0
_C.MODEL.FBNET.WIDTH_DIVISOR = 1
_C.MODEL.FBNET.DW_CONV_SKIP_BN = True
_C.MODEL.FBNET.DW_CONV_SKIP_RELU = True
# *_LAST_SCALE: > 0 scales, 0 skips, < 0 keeps the dimension; *_STRIDE 0 keeps the arch's stride.
_C.MODEL.FBNET.DET_HEAD_LAST_SCALE = 1.0
_C.MODEL.FBNET.DET_HEAD_BLOCKS = []
_C.MODEL.FBNET.DET_HEAD_STRIDE = 0
_C.MODEL.FBNET.KPTS_HEAD_LAST_SCALE = 0.0
_C.MODEL.FBNET.KPTS_HEAD_BLOCKS = []
_C.MODEL.FBNET.KPTS_HEAD_STRIDE = 0
_C.MODEL.FBNET.MASK_HEAD_LAST_SCALE = 0.0
_C.MODEL.FBNET.MASK_HEAD_BLOCKS = []
_C.MODEL.FBNET.MASK_HEAD_STRIDE = 0
# 0 uses every block of the arch definition.
_C.MODEL.FBNET.RPN_HEAD_BLOCKS = 0
_C.MODEL.FBNET.RPN_BN_TYPE = ""

# ---------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
# Biases train with BASE_LR * BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS.
_C.SOLVER.BIAS_LR_FACTOR = 2
# Learning-rate factor of deformable-conv offset layers.
_C.SOLVER.DCONV_OFFSETS_LR_FACTOR = 1.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.WEIGHT_DECAY = 0.0005
_C.SOLVER.WEIGHT_DECAY_BIAS = 0
# The learning rate is multiplied by GAMMA at each iteration listed in STEPS.
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
# Warmup over the first WARMUP_ITERS iterations: "constant" or "linear" from WARMUP_FACTOR.
_C.SOLVER.WARMUP_FACTOR = 1.0 / 3
_C.SOLVER.WARMUP_ITERS = 500
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.CHECKPOINT_PERIOD = 2500
# Images per iteration over all processes (16 on 8 GPUs is 2 per GPU).
_C.SOLVER.IMS_PER_BATCH = 16

# ---------------------------------------------------------------------------
# Testing
# ---------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.EXPECTED_RESULTS = []
_C.TEST.EXPECTED_RESULTS_SIGMA_TOL = 4
# Images per batch over all processes.
_C.TEST.IMS_PER_BATCH = 8
_C.TEST.DETECTIONS_PER_IMG = 100

# Test-time augmentation.
_C.TEST.BBOX_AUG = CN()
_C.TEST.BBOX_AUG.ENABLED = False
# Add a horizontally flipped copy at the test scale.
_C.TEST.BBOX_AUG.H_FLIP = False
# Extra shorter-side lengths, and the cap on the longer side for them.
_C.TEST.BBOX_AUG.SCALES = ()
_C.TEST.BBOX_AUG.MAX_SIZE = 4000
# Add a flipped copy at each extra scale as well.
_C.TEST.BBOX_AUG.SCALE_H_FLIP = False
_C.TEST.BBOX_AUG.VOTE = False
_C.TEST.BBOX_AUG.VOTE_TH = 0.66
# Per scale, the [min, max] object size (sqrt of area) kept from that scale.
_C.TEST.BBOX_AUG.SCALE_RANGES = ()
_C.TEST.BBOX_AUG.MERGE_TYPE = 'vote'

# ---------------------------------------------------------------------------
# Miscellaneous
# ---------------------------------------------------------------------------
_C.OUTPUT_DIR = "."
# Python file defining DatasetCatalog and ModelCatalog; point it at your own copy to
# add datasets or weights without editing the package.
_C.PATHS_CATALOG = os.path.join(os.path.dirname(__file__), "paths_catalog.py")

# ===========================================================================
# atss_core additions
# ---------------------------------------------------------------------------
# Keys below are NOT in the original ATSS defaults. Each one must keep the
# original's behaviour at its default value. Add new keys here, with a comment
# saying what they do.
# ===========================================================================

# Seed for the training sampler's shuffle and the per-sample augmentation, so a run
# is reproducible and a resumed run sees the same images as an uninterrupted one.
_C.SEED = 0

# Keep training images that have no usable box after crowd / degenerate filtering
# (all their anchors become negatives). The original always dropped them.
_C.DATALOADER.KEEP_EMPTY_IMAGES = False

# "float32", or "float16" / "bfloat16" for mixed precision (torch.autocast; float16 adds a
# GradScaler whose state is checkpointed; losses
# stay in float32). maskrcnn-benchmark used this key for apex AMP.
_C.DTYPE = "float32"

# Keep conv weights and input batches in channels_last (NHWC) memory order, in training
# and evaluation. Same numbers up to float rounding; faster convolutions on CPU and GPU.
_C.MODEL.CHANNELS_LAST = False

# Seconds a process waits for the others in a collective (and at start-up) before the job
# stops with one line naming the timeout; torch's default. Only used by multi-process runs.
_C.DIST_TIMEOUT = 1800

# Log a training line, and a metrics.json / TensorBoard row, every LOG_PERIOD iterations
# (the original's fixed value was 20).
_C.SOLVER.LOG_PERIOD = 20
# Keep only the newest CHECKPOINT_KEEP periodic model_XXXXXXX.pth files; model_final.pth,
# model_best.pth and the file last_checkpoint names are never removed. 0 keeps all (original).
_C.SOLVER.CHECKPOINT_KEEP = 0
# Evaluate on DATASETS.TEST every EVAL_PERIOD iterations during training (and at the end),
# keeping the weights with the best bbox AP in model_best.pth. 0: only after training (original).
_C.TEST.EVAL_PERIOD = 0

# Type the network runs in at evaluation (test_net, the demo, the Predictor): "float32", or
# "bfloat16" / "float16" (torch.autocast). Decoding, NMS and the scores stay in float32.
_C.TEST.DTYPE = "float32"
