"""COCO json validation, build-time data checks, and the one-line data errors of the tools.

Oracle: small COCO files written here with one known defect each; the expected message names the
file and the entry. Without the checks pycocotools indexes repeated ids silently (the last entry
wins) and a missing key surfaces as a KeyError deep inside the loader.
"""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from atss_core.config import cfg as default_cfg
from atss_core.config.paths_catalog import DatasetCatalog
from atss_core.data.build import build_dataset, check_test_datasets, make_data_loader
from atss_core.data.datasets import COCODataset
from atss_core.data.errors import DataError

from conftest import REPO_ROOT, load_tool

QUICKSTART_CONFIG = REPO_ROOT / "configs" / "quickstart" / "atss_mnv2_fpn_shapes.yaml"
NUM_IMAGES = 6


def _coco_content(num_images=NUM_IMAGES):
    """``num_images`` 48 x 40 images, one usable box each, two categories."""
    images = [{"id": i, "file_name": f"im{i}.png", "width": 48, "height": 40} for i in range(1, num_images + 1)]
    annotations = [{"id": 100 + i, "image_id": i, "category_id": 1 + i % 2, "bbox": [4, 5, 20, 16],
                    "iscrowd": 0} for i in range(1, num_images + 1)]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}


def _write(folder, content, name="instances.json"):
    """Write the images of ``content`` (the ones not there yet) and the json into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for image in content["images"]:
        path = folder / str(image.get("file_name"))
        if isinstance(image.get("file_name"), str) and not path.exists():
            Image.new("RGB", (48, 40), (120, 60, 30)).save(path)
    ann_file = folder / name
    ann_file.write_text(json.dumps(content))
    return str(folder), str(ann_file)


def test_repeated_annotation_ids_are_refused(tmp_path):
    """pycocotools keeps one annotation per id: 5 of these 6 images would lose their box and
    be dropped from training."""
    content = _coco_content()
    for annotation in content["annotations"]:
        annotation["id"] = 7
    root, ann_file = _write(tmp_path, content)
    with pytest.raises(DataError) as error:
        COCODataset(ann_file, root, remove_images_without_annotations=True)
    message = str(error.value)
    assert "annotation id 7 appears 6 times" in message and ann_file in message and "\n" not in message


@pytest.mark.parametrize("key, kind, position, repeated_id",
                         [("images", "image", 5, 5), ("categories", "category", 1, 1)])
def test_repeated_image_and_category_ids_are_refused(tmp_path, key, kind, position, repeated_id):
    """pycocotools would pair one image entry with the boxes of both images, or merge two classes."""
    content = _coco_content()
    content[key][position]["id"] = repeated_id
    root, ann_file = _write(tmp_path, content)
    with pytest.raises(DataError, match=f"{kind} id {repeated_id} appears 2 times in {ann_file}"):
        COCODataset(ann_file, root, remove_images_without_annotations=False)


def _without(entry, key):
    entry.pop(key)


BAD_ENTRIES = {  # name: (edit of the content, expected message part)
    "annotation_without_id": (lambda c: _without(c["annotations"][1], "id"),
                              r"annotation at position 1 of 'annotations' \(\{.*'image_id': 2.*has no integer 'id'"),
    "annotation_without_image_id": (lambda c: _without(c["annotations"][1], "image_id"),
                                    "annotation 102 .* has no integer 'image_id'"),
    "text_bbox": (lambda c: c["annotations"][2].update(bbox=["4", 5, 20, 16]),
                  r"annotation 103 .* needs a 'bbox' of 4 numbers .*got \['4', 5, 20, 16\]"),
    "short_bbox": (lambda c: c["annotations"][2].update(bbox=[4, 5, 20]), "annotation 103 .* 'bbox' of 4 numbers"),
    "no_bbox": (lambda c: _without(c["annotations"][0], "bbox"), r"annotation 101 .*\(got None\)"),
    "nan_bbox": (lambda c: c["annotations"][3].update(bbox=[4, 5, float("nan"), 16]), "annotation 104 .* 'bbox'"),
    "text_width": (lambda c: c["images"][1].update(width="48"), "image 2 .* positive numeric 'width' and 'height'"),
    "zero_height": (lambda c: c["images"][3].update(height=0), r"image 4 .*\(got 48 x 0\)"),
    "no_file_name": (lambda c: _without(c["images"][0], "file_name"), "image 1 .* needs a 'file_name'"),
    "image_without_id": (lambda c: _without(c["images"][2], "id"), "image at position 2 of 'images'"),
    "category_without_name": (lambda c: _without(c["categories"][0], "name"), "category 1 .* needs a 'name'"),
    "unknown_category": (lambda c: c["annotations"][4].update(category_id=9), "annotation 105 .* category_id 9"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_malformed_entries_are_named_in_one_line(tmp_path, case):
    edit, expected = BAD_ENTRIES[case]
    content = _coco_content()
    edit(content)
    root, ann_file = _write(tmp_path, content)
    with pytest.raises(DataError, match=expected) as error:
        COCODataset(ann_file, root, remove_images_without_annotations=True)
    assert ann_file in str(error.value) and "\n" not in str(error.value)


def test_annotations_of_no_image_warn_once_with_the_count(tmp_path, caplog):
    content = _coco_content()
    content["annotations"] += [dict(content["annotations"][0], id=900 + k, image_id=77) for k in range(3)]
    root, ann_file = _write(tmp_path, content)
    with caplog.at_level(logging.WARNING, logger="atss_core.data.datasets.coco"):
        dataset = COCODataset(ann_file, root, remove_images_without_annotations=True)
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert warnings == [f"3 annotations in {ann_file} belong to no image listed in 'images'; they are ignored"]
    assert dataset.ids == list(range(1, NUM_IMAGES + 1))


def test_missing_image_files_are_found_when_the_dataset_is_built(tmp_path):
    root, ann_file = _write(tmp_path, _coco_content())
    os.remove(Path(root) / "im4.png")
    os.remove(Path(root) / "im2.png")
    os.mkdir(Path(root) / "im2.png")  # a folder where an image should be
    with pytest.raises(DataError) as error:
        build_dataset([f"coco:{root}:{ann_file}"], None, DatasetCatalog, is_train=False)
    message = str(error.value)
    assert f"2 of the {NUM_IMAGES} images listed in {ann_file} are not files" in message
    assert f"{Path(root) / 'im2.png'} is a folder, not an image file" in message
    os.rmdir(Path(root) / "im2.png")
    with pytest.raises(DataError, match=r"im2\.png does not exist"):
        build_dataset([f"coco:{root}:{ann_file}"], None, DatasetCatalog, is_train=True)
    # COCODataset alone reads lazily (tools that set its root later use it so); the missing
    # file is named when it is read.
    dataset = COCODataset(ann_file, root, remove_images_without_annotations=False)
    with pytest.raises(DataError, match=r"im2\.png not found"):
        dataset[1]


def _config(train_set, test_set, num_classes=3):
    config = default_cfg.clone()
    config.merge_from_file(str(QUICKSTART_CONFIG))
    config.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CLASSES", num_classes,
                            "DATASETS.TRAIN", (train_set,), "DATASETS.TEST", (test_set,),
                            "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64,
                            "DATALOADER.NUM_WORKERS", 0, "TEST.IMS_PER_BATCH", 2])
    return config


def test_evaluation_cannot_run_on_a_collapsed_ground_truth(tmp_path):
    """COCOeval scores against the test set's ``dataset.coco``: the same validation covers it,
    both before training (check_test_datasets) and when the test loader is built."""
    good_root, good_file = _write(tmp_path / "train", _coco_content())
    content = _coco_content()
    content["images"][2]["id"] = 2
    root, ann_file = _write(tmp_path / "test", content)
    config = _config(f"coco:{good_root}:{good_file}", f"coco:{root}:{ann_file}")
    with pytest.raises(DataError, match=f"image id 2 appears 2 times in {ann_file}"):
        check_test_datasets(config)
    with pytest.raises(DataError, match=f"image id 2 appears 2 times in {ann_file}"):
        make_data_loader(config, is_train=False)


def test_test_set_num_classes_and_names_are_checked_before_training(tmp_path):
    root, ann_file = _write(tmp_path, _coco_content())
    name = f"coco:{root}:{ann_file}"
    check_test_datasets(_config(name, name))
    with pytest.raises(DataError, match=f"NUM_CLASSES is 5 but {ann_file} has 2 categories; set "
                                        "MODEL.ATSS.NUM_CLASSES 3"):
        check_test_datasets(_config(name, name, num_classes=5))
    with pytest.raises(DataError, match="dataset 'coco_2099_val' is not in the catalog"):
        check_test_datasets(_config(name, "coco_2099_val"))
    with pytest.raises(DataError, match="malformed"):
        check_test_datasets(_config(name, "coco:only_a_folder"))


def test_unknown_training_set_name_is_a_data_error():
    with pytest.raises(DataError, match="'no_such_set' is not in the catalog"):
        build_dataset(["no_such_set"], None, DatasetCatalog, is_train=True)


def _train_net():
    return load_tool("train_net")


def test_train_net_stops_on_a_bad_test_set_before_training(tmp_path, monkeypatch):
    root, ann_file = _write(tmp_path / "data", _coco_content())
    bad_content = _coco_content()
    bad_content["categories"].append({"id": 3, "name": "owl"})
    _, bad_file = _write(tmp_path / "data", bad_content, name="three_categories.json")
    train_net = _train_net()
    monkeypatch.setattr(train_net, "collect_env_info", lambda: "env")
    trained = []
    # train() returns the model and whether the loop evaluated it at the end.
    monkeypatch.setattr(train_net, "train", lambda *args, **kwargs: trained.append(args) or (None, True))
    argv = ["--config-file", str(QUICKSTART_CONFIG), "MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CLASSES", "3",
            "DATASETS.TRAIN", f"('coco:{root}:{ann_file}',)", "DATASETS.TEST", f"('coco:{root}:{bad_file}',)",
            "OUTPUT_DIR", str(tmp_path / "out")]
    monkeypatch.setattr(train_net, "cfg", default_cfg.clone())
    with pytest.raises(SystemExit) as exit_info:
        train_net.main(argv)
    message = str(exit_info.value.code)
    assert message == (f"error: MODEL.ATSS.NUM_CLASSES is 3 but {bad_file} has 3 categories; set "
                       "MODEL.ATSS.NUM_CLASSES 4 (categories + background)")
    assert trained == []
    # --skip-test: the test set plays no part.
    monkeypatch.setattr(train_net, "cfg", default_cfg.clone())
    train_net.main(argv[:2] + ["--skip-test"] + argv[2:])
    assert len(trained) == 1


def test_test_net_corrupt_image_in_a_worker_is_one_line(tmp_path):
    """The whole command line: a corrupt image read by a DataLoader worker (whose error arrives
    with the worker's traceback in it) ends test_net with status 1 and one line naming it."""
    from atss_core.modeling.detector import build_detection_model

    root, ann_file = _write(tmp_path / "data", _coco_content(num_images=2))
    (Path(root) / "im2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    config = _config(f"coco:{root}:{ann_file}", f"coco:{root}:{ann_file}")
    config.merge_from_list(["MODEL.ATSS.NUM_CONVS", 1, "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", 32])
    weights = tmp_path / "model.pth"
    torch.save({"model": build_detection_model(config).state_dict()}, weights)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config.dump())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "test_net.py"), "--config-file",
                          str(config_file), "--ckpt", str(weights), "DATALOADER.NUM_WORKERS", "1",
                          "OUTPUT_DIR", str(tmp_path / "out")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line.startswith("test_net: cannot read image file") and "im2.png" in last_line


def _test_net():
    return load_tool("test_net")


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    """A small quick-start-like model's weights and the config options that build it."""
    from atss_core.modeling.detector import build_detection_model

    options = ["MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CLASSES", "3", "MODEL.ATSS.NUM_CONVS", "1",
               "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "32", "INPUT.MIN_SIZE_TEST", "64",
               "INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "2"]
    config = default_cfg.clone()
    config.merge_from_file(str(QUICKSTART_CONFIG))
    config.merge_from_list(options)
    weights = tmp_path_factory.mktemp("small_weights") / "model.pth"
    torch.save({"model": build_detection_model(config).state_dict()}, weights)
    return weights, options


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _break_json(root, ann_file, monkeypatch):
    Path(ann_file).write_text("{oops")


def _folder_for_image(root, ann_file, monkeypatch):
    os.remove(Path(root, "im2.png"))
    os.mkdir(Path(root, "im2.png"))


# name: (edit of the data folder, the DATASETS.TEST name ({root}, {ann} filled in), expected text)
DATA_MISTAKES = {
    "missing_annotation_file": (None, "coco:{root}:{root}/nope.json", "nope.json not found"),
    "invalid_json": (_break_json, "coco:{root}:{ann}", "is not valid JSON"),
    "unknown_dataset": (None, "coco_2099_val", "'coco_2099_val' is not in the catalog"),
    "missing_image": (lambda root, ann, monkeypatch: os.remove(Path(root, "im2.png")), "coco:{root}:{ann}",
                      "im2.png does not exist"),
    "folder_image": (_folder_for_image, "coco:{root}:{ann}", "im2.png is a folder"),
    "truncated_png": (lambda root, ann, monkeypatch: _truncate(Path(root, "im1.png")), "coco:{root}:{ann}",
                      "cannot read image file {root}/im1.png"),
    # The 48 x 40 images are over twice this limit: Pillow refuses them as decompression bombs.
    "decompression_bomb": (lambda root, ann, monkeypatch: monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500),
                           "coco:{root}:{ann}", "im1.png is too large for Pillow"),
}


@pytest.mark.parametrize("mistake", sorted(DATA_MISTAKES))
def test_test_net_data_mistakes_end_in_one_line(tmp_path, monkeypatch, small_weights, mistake):
    weights, options = small_weights
    root, ann_file = _write(tmp_path / "data", _coco_content(num_images=2))
    edit, dataset, expected = DATA_MISTAKES[mistake]
    if edit is not None:
        edit(root, ann_file, monkeypatch)
    dataset, expected = (text.format(root=root, ann=ann_file) for text in (dataset, expected))
    test_net = _test_net()
    monkeypatch.setattr(test_net, "collect_env_info", lambda: "env")
    monkeypatch.setattr(test_net, "cfg", default_cfg.clone())
    with pytest.raises(SystemExit) as exit_info:
        test_net.main(["--config-file", str(QUICKSTART_CONFIG), "--ckpt", str(weights), *options,
                       "DATASETS.TEST", f"('{dataset}',)", "OUTPUT_DIR", str(tmp_path / "out")])
    message = str(exit_info.value.code)
    assert message.startswith("test_net: ") and expected in message and "\n" not in message


def test_train_net_bad_training_data_ends_in_one_line(tmp_path, monkeypatch, small_weights):
    """Training data problems found while building the loader and while reading an image."""
    _, options = small_weights
    root, ann_file = _write(tmp_path / "data", _coco_content(num_images=2))
    train_net = _train_net()
    monkeypatch.setattr(train_net, "collect_env_info", lambda: "env")

    def run(train_set):
        monkeypatch.setattr(train_net, "cfg", default_cfg.clone())
        with pytest.raises(SystemExit) as exit_info:
            train_net.main(["--config-file", str(QUICKSTART_CONFIG), "--skip-test", *options,
                            "DATASETS.TRAIN", f"('{train_set}',)", "SOLVER.MAX_ITER", "1",
                            "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(tmp_path / "out")])
        message = str(exit_info.value.code)
        assert message.startswith("error: ") and "\n" not in message
        return message

    assert "'coco_2099_train' is not in the catalog" in run("coco_2099_train")
    for name in ("im1.png", "im2.png"):
        _truncate(Path(root, name))
    assert "cannot read image file" in run(f"coco:{root}:{ann_file}")
