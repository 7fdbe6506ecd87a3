"""Config defaults, the shipped yaml files, the paths catalog and import_file."""
import os
import sys
from pathlib import Path

import pytest
import torch

from atss_core.config import cfg
from atss_core.config import paths_catalog
from atss_core.config.paths_catalog import DatasetCatalog, ModelCatalog
from atss_core.utils.imports import import_file
from conftest import REPO_ROOT, load_golden

CONFIG_FILES = sorted((REPO_ROOT / "configs").rglob("*.yaml"))
CATALOG_MODULE = "atss_core.config.paths_catalog"

# Values read from the original ATSS defaults.py (commit 79dfb28), at least one per node.
ORIGINAL_DEFAULTS = {
    "MODEL.RPN_ONLY": False,
    "MODEL.ATSS_ON": False,
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.WEIGHT": "",
    "MODEL.BACKBONE.CONV_BODY": "R-50-C4",
    "MODEL.BACKBONE.FREEZE_CONV_BODY_AT": 2,
    "MODEL.FPN.USE_RELU": False,
    "MODEL.GROUP_NORM.NUM_GROUPS": 32,
    "MODEL.GROUP_NORM.EPSILON": 1e-5,
    "MODEL.RPN.ANCHOR_STRIDE": (16,),
    "MODEL.RPN.RPN_HEAD": "SingleConvRPNHead",
    "MODEL.ROI_HEADS.BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0),
    "MODEL.ROI_BOX_HEAD.POOLER_SCALES": (0.0625,),
    "MODEL.ROI_MASK_HEAD.CONV_LAYERS": (256, 256, 256, 256),
    "MODEL.ROI_KEYPOINT_HEAD.CONV_LAYERS": (512,) * 8,
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.BACKBONE_OUT_CHANNELS": 1024,
    "MODEL.RESNETS.STAGE_WITH_DCN": (False, False, False, False),
    "MODEL.ATSS.NUM_CLASSES": 81,
    "MODEL.ATSS.ANCHOR_SIZES": (64, 128, 256, 512, 1024),
    "MODEL.ATSS.ASPECT_RATIOS": (1.0,),
    "MODEL.ATSS.ANCHOR_STRIDES": (8, 16, 32, 64, 128),
    "MODEL.ATSS.OCTAVE": 2.0,
    "MODEL.ATSS.SCALES_PER_OCTAVE": 1,
    "MODEL.ATSS.NUM_CONVS": 4,
    "MODEL.ATSS.LOSS_ALPHA": 0.25,
    "MODEL.ATSS.LOSS_GAMMA": 2.0,
    "MODEL.ATSS.POSITIVE_TYPE": "ATSS",
    "MODEL.ATSS.FG_IOU_THRESHOLD": 0.5,
    "MODEL.ATSS.BG_IOU_THRESHOLD": 0.4,
    "MODEL.ATSS.TOPK": 9,
    "MODEL.ATSS.REGRESSION_TYPE": "BOX",
    "MODEL.ATSS.REG_LOSS_WEIGHT": 2.0,
    "MODEL.ATSS.PRIOR_PROB": 0.01,
    "MODEL.ATSS.INFERENCE_TH": 0.05,
    "MODEL.ATSS.NMS_TH": 0.6,
    "MODEL.ATSS.PRE_NMS_TOP_N": 1000,
    "MODEL.FCOS.FPN_STRIDES": [8, 16, 32, 64, 128],
    "MODEL.RETINANET.USE_C5": True,
    "MODEL.RETINANET.BBOX_REG_BETA": 0.11,
    "MODEL.FBNET.RPN_BN_TYPE": "",
    "INPUT.MIN_SIZE_TRAIN": (800,),
    "INPUT.MIN_SIZE_RANGE_TRAIN": (-1, -1),
    "INPUT.MAX_SIZE_TRAIN": 1333,
    "INPUT.PIXEL_MEAN": [102.9801, 115.9465, 122.7717],
    "INPUT.PIXEL_STD": [1.0, 1.0, 1.0],
    "INPUT.TO_BGR255": True,
    "DATASETS.TRAIN": (),
    "DATALOADER.NUM_WORKERS": 4,
    "DATALOADER.SIZE_DIVISIBILITY": 0,
    "SOLVER.MAX_ITER": 40000,
    "SOLVER.BASE_LR": 0.001,
    "SOLVER.BIAS_LR_FACTOR": 2,
    "SOLVER.WEIGHT_DECAY": 0.0005,
    "SOLVER.WEIGHT_DECAY_BIAS": 0,
    "SOLVER.STEPS": (30000,),
    "SOLVER.WARMUP_FACTOR": 1.0 / 3,
    "SOLVER.WARMUP_ITERS": 500,
    "SOLVER.WARMUP_METHOD": "linear",
    "SOLVER.CHECKPOINT_PERIOD": 2500,
    "SOLVER.IMS_PER_BATCH": 16,
    "TEST.IMS_PER_BATCH": 8,
    "TEST.DETECTIONS_PER_IMG": 100,
    "TEST.BBOX_AUG.ENABLED": False,
    "TEST.BBOX_AUG.MAX_SIZE": 4000,
    "TEST.BBOX_AUG.MERGE_TYPE": "vote",
    "OUTPUT_DIR": ".",
}

# What each published config sets, read from the original yaml files:
# (weight, conv body, groups, width per group, stride in 1x1, DCN stages, DCN in tower,
#  MIN_SIZE_RANGE_TRAIN, STEPS, MAX_ITER)
_NO_DCN, _DCN_R, _DCN_X = (False,) * 4, (False, True, True, True), (False, False, True, True)
_1X = ((-1, -1), (60000, 80000), 90000)
_2X = ((640, 800), (120000, 160000), 180000)
PUBLISHED = {
    "atss_R_50_FPN_1x": ("MSRA/R-50", "R-50-FPN-RETINANET", 1, 64, True, _NO_DCN, False, *_1X),
    "atss_dcnv2_R_50_FPN_1x": ("MSRA/R-50", "R-50-FPN-RETINANET", 1, 64, True, _DCN_R, True,
                               *_1X),
    "atss_R_101_FPN_1x": ("MSRA/R-101", "R-101-FPN-RETINANET", 1, 64, True, _NO_DCN, False,
                          *_1X),
    "atss_R_101_FPN_2x": ("MSRA/R-101", "R-101-FPN-RETINANET", 1, 64, True, _NO_DCN, False,
                          *_2X),
    "atss_dcnv2_R_101_FPN_1x": ("MSRA/R-101", "R-101-FPN-RETINANET", 1, 64, True, _DCN_R, True,
                                *_1X),
    "atss_dcnv2_R_101_FPN_2x": ("MSRA/R-101", "R-101-FPN-RETINANET", 1, 64, True, _DCN_R, True,
                                *_2X),
    "atss_X_101_32x8d_FPN_2x": ("FAIR/20171220/X-101-32x8d", "R-101-FPN-RETINANET", 32, 8, False,
                                _NO_DCN, False, *_2X),
    "atss_X_101_64x4d_FPN_2x": ("FAIR/20171220/X-101-64x4d", "R-101-FPN-RETINANET", 64, 4, False,
                                _NO_DCN, False, *_2X),
    "atss_dcnv2_X_101_32x8d_FPN_2x": ("FAIR/20171220/X-101-32x8d", "R-101-FPN-RETINANET", 32, 8,
                                      False, _DCN_X, True, *_2X),
    "atss_dcnv2_X_101_64x4d_FPN_2x": ("FAIR/20171220/X-101-64x4d", "R-101-FPN-RETINANET", 64, 4,
                                      False, _DCN_X, True, *_2X),
}

ABLATIONS = {
    "atss_R_50_FPN_1x_iou": ("IoU", "BOX"),
    "atss_R_50_FPN_1x_ssc": ("SSC", "BOX"),
    "atss_R_50_FPN_1x_topk": ("TOPK", "BOX"),
    "atss_R_50_FPN_1x_point": ("ATSS", "POINT"),
}


def lookup(node, dotted_key):
    for part in dotted_key.split("."):
        node = node[part]
    return node


def merged(name):
    config = cfg.clone()
    config.merge_from_file(str(REPO_ROOT / "configs" / "atss" / f"{name}.yaml"))
    return config


@pytest.fixture
def isolated_catalog(monkeypatch):
    """DatasetCatalog with its defaults, whose changes are undone after the test."""
    monkeypatch.setattr(DatasetCatalog, "DATA_DIR", "datasets")
    monkeypatch.setattr(DatasetCatalog, "DATASETS", dict(DatasetCatalog.DATASETS))
    return DatasetCatalog


# ---------------------------------------------------------------------------- defaults
@pytest.mark.parametrize("key", sorted(ORIGINAL_DEFAULTS))
def test_default_matches_original(key):
    value = lookup(cfg, key)
    expected = ORIGINAL_DEFAULTS[key]
    assert type(value) is type(expected), key
    assert value == pytest.approx(expected) if isinstance(expected, float) else value == expected


def test_device_defaults_to_cuda_when_available():
    assert cfg.MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "cpu")


def test_paths_catalog_default_is_the_package_file():
    assert Path(cfg.PATHS_CATALOG).resolve() == Path(paths_catalog.__file__).resolve()


def test_unknown_key_is_named():
    config = cfg.clone()
    with pytest.raises((KeyError, AssertionError), match=r"MODEL\.ATSS\.TOPKK"):
        config.merge_from_list(["MODEL.ATSS.TOPKK", "9"])


def test_unknown_key_in_yaml_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  ATSS:\n    TOPK: 9\n    NOT_A_KEY: 1\n")
    with pytest.raises(KeyError, match=r"MODEL\.ATSS\.NOT_A_KEY"):
        cfg.clone().merge_from_file(str(bad))


# --------------------------------------------------------------------------- yaml files
def test_config_files_are_present():
    names = {path.stem for path in CONFIG_FILES}
    assert set(PUBLISHED) | set(ABLATIONS) <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_config_merges(path):
    config = cfg.clone()
    config.merge_from_file(str(path))
    config.freeze()
    assert config.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config_contents(name):
    (weight, body, groups, width, stride_in_1x1, dcn_stages, dcn_tower,
     min_size_range, steps, max_iter) = PUBLISHED[name]
    config = merged(name)
    assert config.MODEL.WEIGHT == "catalog://ImageNetPretrained/" + weight
    assert config.MODEL.RPN_ONLY and config.MODEL.ATSS_ON
    assert config.MODEL.BACKBONE.CONV_BODY == body
    assert config.MODEL.RESNETS.BACKBONE_OUT_CHANNELS == 256
    assert config.MODEL.RESNETS.NUM_GROUPS == groups
    assert config.MODEL.RESNETS.WIDTH_PER_GROUP == width
    assert config.MODEL.RESNETS.STRIDE_IN_1X1 == stride_in_1x1
    assert config.MODEL.RESNETS.STAGE_WITH_DCN == dcn_stages
    assert config.MODEL.RESNETS.WITH_MODULATED_DCN == any(dcn_stages)
    assert config.MODEL.ATSS.USE_DCN_IN_TOWER == dcn_tower
    assert config.MODEL.RETINANET.USE_C5 is False
    assert config.MODEL.ATSS.POSITIVE_TYPE == "ATSS" and config.MODEL.ATSS.TOPK == 9
    assert config.INPUT.MIN_SIZE_RANGE_TRAIN == min_size_range
    assert config.INPUT.MIN_SIZE_TRAIN == (800,)
    assert config.DATASETS.TRAIN == ("coco_2017_train",)
    assert config.DATASETS.TEST == ("coco_2017_val",)
    assert config.DATALOADER.SIZE_DIVISIBILITY == 32
    assert config.SOLVER.BASE_LR == 0.01 and config.SOLVER.WEIGHT_DECAY == 0.0001
    assert config.SOLVER.STEPS == steps and config.SOLVER.MAX_ITER == max_iter
    assert config.SOLVER.WARMUP_METHOD == "constant"
    # Only the two dcnv2 X-101 configs describe test-time augmentation (disabled).
    has_tta = name.startswith("atss_dcnv2_X_101")
    assert config.TEST.BBOX_AUG.ENABLED is False
    assert config.TEST.BBOX_AUG.MERGE_TYPE == ("soft-vote" if has_tta else "vote")
    assert len(config.TEST.BBOX_AUG.SCALES) == (12 if has_tta else 0)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_configs_change_one_setting(name):
    config = cfg.clone()
    config.merge_from_file(str(REPO_ROOT / "configs" / "atss" / "ablations" / f"{name}.yaml"))
    base = merged("atss_R_50_FPN_1x")
    positive_type, regression_type = ABLATIONS[name]
    assert config.MODEL.ATSS.POSITIVE_TYPE == positive_type
    assert config.MODEL.ATSS.REGRESSION_TYPE == regression_type
    base.MODEL.ATSS.POSITIVE_TYPE = positive_type
    base.MODEL.ATSS.REGRESSION_TYPE = regression_type
    assert config == base


# ----------------------------------------------------------------------- DatasetCatalog
def test_builtin_coco_entries(isolated_catalog):
    assert isolated_catalog.get("coco_2017_train") == dict(
        factory="COCODataset",
        args=dict(root=os.path.join("datasets", "coco/train2017"),
                  ann_file=os.path.join("datasets", "coco/annotations/instances_train2017.json")))
    assert isolated_catalog.get("coco_2014_minival")["args"] == dict(
        root=os.path.join("datasets", "coco/val2014"),
        ann_file=os.path.join("datasets", "coco/annotations/instances_minival2014.json"))
    for split in ("2017_val", "2017_test_dev", "2014_train", "2014_val", "2014_valminusminival"):
        assert isolated_catalog.get(f"coco_{split}")["factory"] == "COCODataset"


def test_data_dir_prefixes_builtin_entries(isolated_catalog):
    isolated_catalog.DATA_DIR = "/data"
    assert isolated_catalog.get("coco_2017_val")["args"]["root"] == "/data/coco/val2017"


def test_voc_entry(isolated_catalog):
    assert isolated_catalog.get("voc_2007_test") == dict(
        factory="PascalVOCDataset",
        args=dict(data_dir=os.path.join("datasets", "voc/VOC2007"), split="test"))


def test_quickstart_entries(isolated_catalog):
    for split in ("train", "val"):
        assert isolated_catalog.get(f"quickstart_shapes_{split}") == dict(
            factory="COCODataset",
            args=dict(root=os.path.join("datasets", f"quickstart_shapes/{split}"),
                      ann_file=os.path.join(
                          "datasets", f"quickstart_shapes/annotations/instances_{split}.json")))


def test_coco_path_names_need_no_registration(isolated_catalog):
    assert isolated_catalog.get("coco:/data/my/images:/data/my/train.json") == dict(
        factory="COCODataset", args=dict(root="/data/my/images", ann_file="/data/my/train.json"))
    # Relative paths are used as given; only the first two ':' split the name.
    assert isolated_catalog.get("coco:imgs:ann:v2.json")["args"] == dict(
        root="imgs", ann_file="ann:v2.json")


@pytest.mark.parametrize("name", ["coco:", "coco:images", "coco:images:", "coco::ann.json"])
def test_malformed_coco_path_name(isolated_catalog, name):
    with pytest.raises(ValueError, match="coco:IMG_DIR:ANN_FILE"):
        isolated_catalog.get(name)


def test_register(isolated_catalog):
    isolated_catalog.register("my_train", "my/images", "/abs/ann.json")
    assert isolated_catalog.get("my_train") == dict(
        factory="COCODataset",
        args=dict(root=os.path.join("datasets", "my/images"), ann_file="/abs/ann.json"))
    isolated_catalog.register("my_train", "my/images", "/abs/ann.json")  # same again: fine
    with pytest.raises(ValueError, match="already registered"):
        isolated_catalog.register("my_train", "other/images", "/abs/ann.json")
    with pytest.raises(ValueError, match="already registered"):
        isolated_catalog.register("coco_2017_train", "x", "y.json")
    with pytest.raises(ValueError, match="coco:"):
        isolated_catalog.register("coco:x", "x", "y.json")


def test_registration_survives_the_trainers_catalog_import(isolated_catalog):
    """The trainer re-imports the catalog from cfg.PATHS_CATALOG; registrations must stay."""
    isolated_catalog.register("my_val", "v/images", "v/ann.json")
    module = import_file(CATALOG_MODULE, cfg.PATHS_CATALOG, True)
    assert module.DatasetCatalog is DatasetCatalog
    assert module.DatasetCatalog.get("my_val")["args"]["root"] == os.path.join("datasets",
                                                                               "v/images")


def test_unknown_dataset_message(isolated_catalog):
    with pytest.raises(RuntimeError) as err:
        isolated_catalog.get("coco_2099_train")
    message = str(err.value)
    assert "\n" not in message
    assert "'coco_2099_train'" in message
    assert "coco_2017_train" in message and "quickstart_shapes_val" in message
    assert "coco:IMG_DIR:ANN_FILE" in message and "register" in message


# ------------------------------------------------------------------------- ModelCatalog
def test_imagenet_urls():
    expected = load_golden("c2_loading.json")["catalog"]
    assert expected["MODEL.WEIGHT"] == "catalog://ImageNetPretrained/MSRA/R-50"
    assert ModelCatalog.get("ImageNetPretrained/MSRA/R-50") == expected["resolves_to"]


@pytest.mark.parametrize("name, url", [
    ("ImageNetPretrained/MSRA/R-101",
     "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-101.pkl"),
    ("ImageNetPretrained/FAIR/20171220/X-101-32x8d",
     "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/20171220/X-101-32x8d.pkl"),
    ("ImageNetPretrained/FAIR/20171220/X-101-64x4d",
     "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/FBResNeXt/X-101-64x4d.pkl"),
    ("ImageNetPretrained/MSRA/R-50-GN",
     "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/47261647/R-50-GN.pkl"),
    ("Caffe2Detectron/COCO/35857197/e2e_faster_rcnn_R-50-C4_1x",
     "https://dl.fbaipublicfiles.com/detectron/35857197/12_2017_baselines/"
     "e2e_faster_rcnn_R-50-C4_1x.yaml.01_33_49.iAX0mXvW/output/train/"
     "coco_2014_train%3Acoco_2014_valminusminival/generalized_rcnn/model_final.pkl"),
    ("Caffe2Detectron/COCO/37697547/e2e_keypoint_rcnn_R-50-FPN_1x",
     "https://dl.fbaipublicfiles.com/detectron/37697547/12_2017_baselines/"
     "e2e_keypoint_rcnn_R-50-FPN_1x.yaml.08_42_54.kdzV35ao/output/train/"
     "keypoints_coco_2014_train%3Akeypoints_coco_2014_valminusminival/generalized_rcnn/"
     "model_final.pkl"),
])
def test_catalog_urls(name, url):
    assert ModelCatalog.get(name) == url


@pytest.mark.parametrize("name", ["ImageNetPretrained/MSRA/R-18", "Caffe2Detectron/COCO/1/x",
                                  "MSRA/R-50"])
def test_unknown_model_message(name):
    with pytest.raises(RuntimeError) as err:
        ModelCatalog.get(name)
    message = str(err.value)
    assert "\n" not in message and f"'{name}'" in message
    assert "ImageNetPretrained/MSRA/R-50" in message


# -------------------------------------------------------------- PATHS_CATALOG / imports
CUSTOM_CATALOG = '''
class DatasetCatalog:
    @staticmethod
    def get(name):
        return dict(factory="COCODataset", args=dict(root="/mine/" + name, ann_file="/mine/a.json"))


class ModelCatalog:
    @staticmethod
    def get(name):
        return "file:///weights/" + name
'''


def test_custom_paths_catalog_file(tmp_path, monkeypatch):
    """The trainer's mechanism: import_file(<catalog module>, cfg.PATHS_CATALOG, True)."""
    catalog_file = tmp_path / "my_catalog.py"
    catalog_file.write_text(CUSTOM_CATALOG)
    config = cfg.clone()
    config.merge_from_list(["PATHS_CATALOG", str(catalog_file)])
    # Restore the package's catalog module after the test.
    monkeypatch.setitem(sys.modules, CATALOG_MODULE, paths_catalog)

    module = import_file(CATALOG_MODULE, config.PATHS_CATALOG, True)
    assert sys.modules[CATALOG_MODULE] is module and module is not paths_catalog
    assert module.DatasetCatalog.get("set_a") == dict(
        factory="COCODataset", args=dict(root="/mine/set_a", ann_file="/mine/a.json"))
    assert module.ModelCatalog.get("R-50") == "file:///weights/R-50"


def test_import_file_without_make_importable(tmp_path):
    source = tmp_path / "plain_module.py"
    source.write_text("VALUE = 41 + 1\n")
    module = import_file("atss_test_plain_module", str(source))
    assert module.VALUE == 42
    assert "atss_test_plain_module" not in sys.modules


def test_import_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_catalog.py") as err:
        import_file(CATALOG_MODULE, str(tmp_path / "missing_catalog.py"), True)
    assert "\n" not in str(err.value)
    not_python = tmp_path / "catalog.txt"
    not_python.write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"\.py"):
        import_file("atss_test_txt_module", str(not_python))


def test_merge_config_merges_freezes_and_reports_user_errors_in_one_line(tmp_path):
    from atss_core.config import cfg, merge_config
    config_file = REPO_ROOT / "configs" / "atss" / "atss_R_50_FPN_1x.yaml"
    merged = merge_config(cfg.clone(), str(config_file), ["SOLVER.BASE_LR", "0.02"])
    assert merged.is_frozen() and merged.SOLVER.BASE_LR == 0.02 and merged.MODEL.ATSS_ON
    with pytest.raises(FileNotFoundError, match=r"config file '.*nope.yaml' not found; pass an existing yaml"):
        merge_config(cfg.clone(), str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="no config file given"):
        merge_config(cfg.clone(), "")
    for opts, expected in ((["SOLVER.NOPE", "1"], "SOLVER.NOPE"), (["SOLVER.BASE_LR"], "odd length"),
                           (["SOLVER.BASE_LR", "fast"], "Type mismatch"),
                           (["MODEL.CHANNELS_LAST", "1"], "Type mismatch"),  # a bool key stays strict
                           (["SOLVER.BASE_LR", "1" + "0" * 400], "too large")):
        with pytest.raises(ValueError) as error:
            merge_config(cfg.clone(), str(config_file), opts)
        assert expected in str(error.value) and "\n" not in str(error.value)


def test_ints_are_taken_for_float_keys_in_files_and_overrides(tmp_path):
    """yacs alone refuses "BASE_LR: 1" and "MODEL.ATSS.INFERENCE_TH 0" as type mismatches."""
    from atss_core.config import cfg, merge_config
    config_file = tmp_path / "ints.yaml"
    config_file.write_text("SOLVER:\n  BASE_LR: 1\n  MAX_ITER: 7\n  GAMMA: 0\n"
                           "MODEL:\n  ATSS:\n    TOPK: 5\n")
    merged = merge_config(cfg.clone(), str(config_file), ["MODEL.ATSS.INFERENCE_TH", "0", "SOLVER.WARMUP_FACTOR", "1",
                                                          "SOLVER.CHECKPOINT_PERIOD", "3"])
    values = (merged.SOLVER.BASE_LR, merged.SOLVER.GAMMA, merged.MODEL.ATSS.INFERENCE_TH,
              merged.SOLVER.WARMUP_FACTOR, merged.SOLVER.MAX_ITER, merged.MODEL.ATSS.TOPK,
              merged.SOLVER.CHECKPOINT_PERIOD)
    assert values == (1.0, 0.0, 0.0, 1.0, 7, 5, 3)
    assert [type(value) for value in values] == [float] * 4 + [int] * 3
