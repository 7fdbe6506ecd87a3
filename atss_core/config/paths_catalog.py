"""Catalog of dataset locations and pretrained-weight URLs.

``cfg.PATHS_CATALOG`` names the file the trainer loads this catalog from (this file by
default), so a copy of it with your own entries can be used without editing the package.

Three ways to train or test on your own COCO-format data:

* name it directly in the config: ``DATASETS.TRAIN ("coco:IMG_DIR:ANN_FILE",)``; the paths
  are used as given (absolute, or relative to the working directory);
* call ``DatasetCatalog.register(name, img_dir, ann_file)`` before building the data loader
  and use ``name``; relative paths are taken under ``DatasetCatalog.DATA_DIR``;
* point ``PATHS_CATALOG`` at your own catalog file.

Built-in entries live under ``DatasetCatalog.DATA_DIR``: ``datasets/`` relative to the working
directory, or the folder in the ``ATSS_DATA_DIR`` environment variable.
"""
import os

# Prefix of dataset names that carry their own paths: "coco:IMG_DIR:ANN_FILE".
COCO_PATH_PREFIX = "coco:"


def _coco_entry(root, ann_file):
    return dict(factory="COCODataset", args=dict(root=root, ann_file=ann_file))


class DatasetCatalog:
    """Dataset names -> constructor arguments of the dataset class that reads them."""

    DATA_DIR = os.environ.get("ATSS_DATA_DIR", "datasets")

    # COCO-format entries have "img_dir" and "ann_file"; Pascal VOC entries "data_dir" and
    # "split". All paths are relative to DATA_DIR.
    DATASETS = {
        "coco_2017_train": {
            "img_dir": "coco/train2017",
            "ann_file": "coco/annotations/instances_train2017.json",
        },
        "coco_2017_val": {
            "img_dir": "coco/val2017",
            "ann_file": "coco/annotations/instances_val2017.json",
        },
        "coco_2017_test_dev": {
            "img_dir": "coco/test2017",
            "ann_file": "coco/annotations/image_info_test-dev2017.json",
        },
        "coco_2014_train": {
            "img_dir": "coco/train2014",
            "ann_file": "coco/annotations/instances_train2014.json",
        },
        "coco_2014_val": {
            "img_dir": "coco/val2014",
            "ann_file": "coco/annotations/instances_val2014.json",
        },
        "coco_2014_minival": {
            "img_dir": "coco/val2014",
            "ann_file": "coco/annotations/instances_minival2014.json",
        },
        "coco_2014_valminusminival": {
            "img_dir": "coco/val2014",
            "ann_file": "coco/annotations/instances_valminusminival2014.json",
        },
        "keypoints_coco_2014_train": {
            "img_dir": "coco/train2014",
            "ann_file": "coco/annotations/person_keypoints_train2014.json",
        },
        "keypoints_coco_2014_val": {
            "img_dir": "coco/val2014",
            "ann_file": "coco/annotations/person_keypoints_val2014.json",
        },
        "keypoints_coco_2014_minival": {
            "img_dir": "coco/val2014",
            "ann_file": "coco/annotations/person_keypoints_minival2014.json",
        },
        "keypoints_coco_2014_valminusminival": {
            "img_dir": "coco/val2014",
            "ann_file": "coco/annotations/person_keypoints_valminusminival2014.json",
        },
        "voc_2007_train": {"data_dir": "voc/VOC2007", "split": "train"},
        "voc_2007_train_cocostyle": {
            "img_dir": "voc/VOC2007/JPEGImages",
            "ann_file": "voc/VOC2007/Annotations/pascal_train2007.json",
        },
        "voc_2007_val": {"data_dir": "voc/VOC2007", "split": "val"},
        "voc_2007_val_cocostyle": {
            "img_dir": "voc/VOC2007/JPEGImages",
            "ann_file": "voc/VOC2007/Annotations/pascal_val2007.json",
        },
        "voc_2007_test": {"data_dir": "voc/VOC2007", "split": "test"},
        "voc_2007_test_cocostyle": {
            "img_dir": "voc/VOC2007/JPEGImages",
            "ann_file": "voc/VOC2007/Annotations/pascal_test2007.json",
        },
        "voc_2012_train": {"data_dir": "voc/VOC2012", "split": "train"},
        "voc_2012_train_cocostyle": {
            "img_dir": "voc/VOC2012/JPEGImages",
            "ann_file": "voc/VOC2012/Annotations/pascal_train2012.json",
        },
        "voc_2012_val": {"data_dir": "voc/VOC2012", "split": "val"},
        "voc_2012_val_cocostyle": {
            "img_dir": "voc/VOC2012/JPEGImages",
            "ann_file": "voc/VOC2012/Annotations/pascal_val2012.json",
        },
        # VOC2012 test annotations were never released, so there is no json for it.
        "voc_2012_test": {"data_dir": "voc/VOC2012", "split": "test"},
        "cityscapes_fine_instanceonly_seg_train_cocostyle": {
            "img_dir": "cityscapes/images",
            "ann_file": "cityscapes/annotations/instancesonly_filtered_gtFine_train.json",
        },
        "cityscapes_fine_instanceonly_seg_val_cocostyle": {
            "img_dir": "cityscapes/images",
            "ann_file": "cityscapes/annotations/instancesonly_filtered_gtFine_val.json",
        },
        "cityscapes_fine_instanceonly_seg_test_cocostyle": {
            "img_dir": "cityscapes/images",
            "ann_file": "cityscapes/annotations/instancesonly_filtered_gtFine_test.json",
        },
        # Small synthetic set used by the quick start (configs/quickstart/).
        "quickstart_shapes_train": {
            "img_dir": "quickstart_shapes/train",
            "ann_file": "quickstart_shapes/annotations/instances_train.json",
        },
        "quickstart_shapes_val": {
            "img_dir": "quickstart_shapes/val",
            "ann_file": "quickstart_shapes/annotations/instances_val.json",
        },
    }

    @classmethod
    def register(cls, name, img_dir, ann_file):
        """Add a COCO-format dataset under ``name`` (relative paths are under ``DATA_DIR``).

        Registering the same name again with the same paths is a no-op; with other paths it
        raises ``ValueError``, so a built-in entry cannot be replaced by accident.
        """
        if not isinstance(name, str) or not name or name.startswith(COCO_PATH_PREFIX):
            raise ValueError(f"cannot register dataset name {name!r}: use a non-empty string "
                             f"that does not start with '{COCO_PATH_PREFIX}'")
        entry = {"img_dir": os.fspath(img_dir), "ann_file": os.fspath(ann_file)}
        existing = cls.DATASETS.get(name)
        if existing is not None and existing != entry:
            raise ValueError(f"dataset '{name}' is already registered as {existing}; "
                             "register your data under another name")
        cls.DATASETS[name] = entry

    @classmethod
    def get(cls, name):
        """Return ``dict(factory=<dataset class name>, args=<its constructor kwargs>)``.

        ``name`` is a catalog entry or ``"coco:IMG_DIR:ANN_FILE"``.
        """
        if name.startswith(COCO_PATH_PREFIX):
            # Split twice only, so the annotation path may itself contain ':'.
            parts = name.split(":", 2)
            if len(parts) != 3 or not parts[1] or not parts[2]:
                raise ValueError(f"dataset name {name!r} is malformed: write it as "
                                 "'coco:IMG_DIR:ANN_FILE'")
            return _coco_entry(parts[1], parts[2])

        attrs = cls.DATASETS.get(name)
        if attrs is None:
            raise RuntimeError(
                f"dataset '{name}' is not in the catalog; known names: "
                f"{', '.join(sorted(cls.DATASETS))}. For your own COCO-format data use "
                "'coco:IMG_DIR:ANN_FILE' or DatasetCatalog.register(name, img_dir, ann_file)")
        if "ann_file" in attrs:
            return _coco_entry(os.path.join(cls.DATA_DIR, attrs["img_dir"]),
                               os.path.join(cls.DATA_DIR, attrs["ann_file"]))
        return dict(factory="PascalVOCDataset",
                    args=dict(data_dir=os.path.join(cls.DATA_DIR, attrs["data_dir"]),
                              split=attrs["split"]))


class ModelCatalog:
    """``catalog://`` weight names -> download URLs (Detectron's Caffe2 model zoo)."""

    S3_C2_DETECTRON_URL = "https://dl.fbaipublicfiles.com/detectron"

    # ImageNet-pretrained backbones: "ImageNetPretrained/<key>".
    C2_IMAGENET_MODELS = {
        "MSRA/R-50": "ImageNetPretrained/MSRA/R-50.pkl",
        "MSRA/R-50-GN": "ImageNetPretrained/47261647/R-50-GN.pkl",
        "MSRA/R-101": "ImageNetPretrained/MSRA/R-101.pkl",
        "MSRA/R-101-GN": "ImageNetPretrained/47592356/R-101-GN.pkl",
        "FAIR/20171220/X-101-32x8d": "ImageNetPretrained/20171220/X-101-32x8d.pkl",
        "FAIR/20171220/X-101-64x4d": "ImageNetPretrained/FBResNeXt/X-101-64x4d.pkl",
    }

    # Detectron's 12_2017 COCO baselines: "Caffe2Detectron/COCO/<model_id>/<model_name>",
    # mapped to the signature that is part of their URL.
    C2_DETECTRON_SUFFIX = ("output/train/{}coco_2014_train%3A{}coco_2014_valminusminival/"
                           "generalized_rcnn/model_final.pkl")
    C2_DETECTRON_MODELS = {
        "35857197/e2e_faster_rcnn_R-50-C4_1x": "01_33_49.iAX0mXvW",
        "35857345/e2e_faster_rcnn_R-50-FPN_1x": "01_36_30.cUF7QR7I",
        "35857890/e2e_faster_rcnn_R-101-FPN_1x": "01_38_50.sNxI7sX7",
        "36761737/e2e_faster_rcnn_X-101-32x8d-FPN_1x": "06_31_39.5MIHi1fZ",
        "35858791/e2e_mask_rcnn_R-50-C4_1x": "01_45_57.ZgkA7hPB",
        "35858933/e2e_mask_rcnn_R-50-FPN_1x": "01_48_14.DzEQe4wC",
        "35861795/e2e_mask_rcnn_R-101-FPN_1x": "02_31_37.KqyEK4tT",
        "36761843/e2e_mask_rcnn_X-101-32x8d-FPN_1x": "06_35_59.RZotkLKI",
        "37129812/e2e_mask_rcnn_X-152-32x8d-FPN-IN5k_1.44x": "09_35_36.8pzTQKYK",
        "37697547/e2e_keypoint_rcnn_R-50-FPN_1x": "08_42_54.kdzV35ao",
    }

    IMAGENET_PREFIX = "ImageNetPretrained/"
    DETECTRON_PREFIX = "Caffe2Detectron/COCO/"

    @classmethod
    def get(cls, name):
        """URL of the weights called ``name`` (the part after ``catalog://``)."""
        if name.startswith(cls.DETECTRON_PREFIX):
            key = name[len(cls.DETECTRON_PREFIX):]
            if key in cls.C2_DETECTRON_MODELS:
                return cls.get_c2_detectron_12_2017_baselines(name)
        elif name.startswith(cls.IMAGENET_PREFIX):
            if name[len(cls.IMAGENET_PREFIX):] in cls.C2_IMAGENET_MODELS:
                return cls.get_c2_imagenet_pretrained(name)
        known = [cls.IMAGENET_PREFIX + k for k in cls.C2_IMAGENET_MODELS]
        known += [cls.DETECTRON_PREFIX + k for k in cls.C2_DETECTRON_MODELS]
        raise RuntimeError(f"model '{name}' is not in the catalog; known names: "
                           f"{', '.join(known)}. Give MODEL.WEIGHT a file path or URL instead")

    @classmethod
    def get_c2_imagenet_pretrained(cls, name):
        key = name[len(cls.IMAGENET_PREFIX):]
        return f"{cls.S3_C2_DETECTRON_URL}/{cls.C2_IMAGENET_MODELS[key]}"

    @classmethod
    def get_c2_detectron_12_2017_baselines(cls, name):
        # URL layout: <prefix>/<model_id>/12_2017_baselines/<model_name>.yaml.<signature>/<suffix>,
        # where keypoint models were trained on the keypoints_ variants of the COCO splits.
        key = name[len(cls.DETECTRON_PREFIX):]
        model_id, model_name = key.split("/")
        dataset_tag = "keypoints_" if "keypoint" in name else ""
        suffix = cls.C2_DETECTRON_SUFFIX.format(dataset_tag, dataset_tag)
        signature = cls.C2_DETECTRON_MODELS[key]
        return (f"{cls.S3_C2_DETECTRON_URL}/{model_id}/12_2017_baselines/"
                f"{model_name}.yaml.{signature}/{suffix}")
