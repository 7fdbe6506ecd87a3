"""The one image reader (atss_core.data.image_io) and its use by COCODataset.

Oracles: hand-built pixel arrays and their numpy rotations, OpenCV's ``imread`` (which applies
EXIF orientation and keeps the high byte of 16-bit images independently of Pillow), and
hand-computed colour conversions.
"""
import json
import logging
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from atss_core.data.datasets import COCODataset
from atss_core.data.errors import DataError
from atss_core.data.image_io import read_image, read_image_bgr

EXIF_ORIENTATION = 0x0112


def _exif(orientation):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif.tobytes()


def _pattern(height, width):
    """(H, W, 3) uint8 with every pixel distinct enough to catch a wrong rotation or flip."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * 7 % 256, cols * 5 % 256, (rows + cols) * 3 % 256], axis=-1).astype(np.uint8)


def test_sixteen_bit_grayscale_png_keeps_its_high_byte(tmp_path):
    """Pillow opens it as mode I;16, and convert('RGB') would clip every value over 255 to white."""
    values = (np.arange(40 * 30).reshape(30, 40) * 53).astype(np.uint16)
    path = tmp_path / "gray16.png"
    assert cv2.imwrite(str(path), values)
    image = read_image(path)
    assert image.mode == "RGB" and image.size == (40, 30)
    expected = (values >> 8).astype(np.uint8)
    assert np.array_equal(np.asarray(image), np.repeat(expected[..., None], 3, axis=2))
    assert np.array_equal(read_image_bgr(path), cv2.imread(str(path), cv2.IMREAD_COLOR))


def test_sixteen_bit_colour_png_matches_opencv(tmp_path):
    values = np.random.default_rng(0).integers(0, 65536, size=(20, 24, 3), dtype=np.uint16)
    path = tmp_path / "colour16.png"
    assert cv2.imwrite(str(path), values)
    assert np.array_equal(read_image_bgr(path), cv2.imread(str(path), cv2.IMREAD_COLOR))


# EXIF orientation -> the numpy operation that turns the stored array upright.
ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.transpose(a, (1, 0, 2)),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: np.transpose(a[::-1, ::-1], (1, 0, 2)),
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = _pattern(20, 36)
    path = tmp_path / f"oriented{orientation}.png"
    Image.fromarray(stored).save(path, exif=_exif(orientation))
    upright = np.asarray(read_image(path))
    assert np.array_equal(upright, ORIENTATIONS[orientation](stored))
    # OpenCV applies the tag too (independent decoder).
    assert np.array_equal(read_image_bgr(path), cv2.imread(str(path), cv2.IMREAD_COLOR))


def test_other_modes_become_rgb(tmp_path):
    palette = Image.new("P", (4, 3))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.info["transparency"] = b"\x00\xff"  # palette entry 0 fully transparent
    palette.save(tmp_path / "palette.png", transparency=b"\x00\xff")
    Image.new("LA", (4, 3), (90, 128)).save(tmp_path / "la.png")
    Image.new("L", (4, 3), 7).save(tmp_path / "gray.png")
    Image.new("CMYK", (4, 3), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    Image.new("RGBA", (4, 3), (1, 2, 3, 0)).save(tmp_path / "rgba.png")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns on palette transparency straight to RGB
        images = {name: read_image(tmp_path / name)
                  for name in ("palette.png", "la.png", "gray.png", "cmyk.jpg", "rgba.png")}
    assert all(image.mode == "RGB" and image.size == (4, 3) for image in images.values())
    palette_pixels = np.asarray(images["palette.png"])
    assert palette_pixels[0, 0].tolist() == [10, 20, 30] and palette_pixels[1, 1].tolist() == [200, 100, 50]
    assert np.all(np.asarray(images["la.png"]) == 90)
    assert np.all(np.asarray(images["gray.png"]) == 7)
    assert np.abs(np.asarray(images["cmyk.jpg"]).astype(int) - [0, 255, 255]).max() <= 2  # pure cyan
    assert np.all(np.asarray(images["rgba.png"]) == [1, 2, 3])


def test_unreadable_files_raise_one_line_naming_the_file(tmp_path, monkeypatch):
    good = tmp_path / "good.jpg"
    Image.fromarray(_pattern(64, 64)).save(good, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    (tmp_path / "not_an_image.jpg").write_text("hello")
    (tmp_path / "folder.jpg").mkdir()
    cases = {"missing.jpg": "not found", "truncated.jpg": "truncated", "not_an_image.jpg": "cannot read",
             "folder.jpg": "is a folder"}
    for name, expected in cases.items():
        with pytest.raises(DataError, match=expected) as error:
            read_image(tmp_path / name)
        assert name in str(error.value) and "\n" not in str(error.value)

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is over twice the limit
    with pytest.raises(DataError, match=r"good\.jpg is too large .*MAX_IMAGE_PIXELS"):
        read_image(good)


def _one_image_coco(tmp_path, file_name, width, height):
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": file_name, "width": width, "height": height}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 6], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}]}))
    return COCODataset(str(ann_file), str(tmp_path), remove_images_without_annotations=False)


def test_training_and_evaluation_read_sixteen_bit_images_right(tmp_path):
    """COCODataset (training, evaluation, and test-time augmentation, which takes its untransformed
    PIL images) reads through the same reader: not a white image."""
    values = np.full((30, 40), 40000, dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "gray16.png"), values)
    image, target, _ = _one_image_coco(tmp_path, "gray16.png", 40, 30)[0]
    assert np.all(np.asarray(image) == 40000 >> 8)
    assert target.size == (40, 30)


def test_test_time_augmentation_loader_reads_through_the_same_reader(tmp_path):
    """With TEST.BBOX_AUG the test loader hands the data set's untransformed PIL images on."""
    from atss_core.config import cfg
    from atss_core.data.build import make_data_loader

    stored = _pattern(20, 36)
    Image.fromarray(stored).save(tmp_path / "photo.png", exif=_exif(8))
    _one_image_coco(tmp_path, "photo.png", 20, 36)  # writes instances.json
    config = cfg.clone()
    config.merge_from_list(["DATASETS.TEST", (f"coco:{tmp_path}:{tmp_path / 'instances.json'}",),
                            "MODEL.ATSS.NUM_CLASSES", 2, "TEST.BBOX_AUG.ENABLED", True,
                            "TEST.IMS_PER_BATCH", 1, "DATALOADER.NUM_WORKERS", 0])
    [loader] = make_data_loader(config, is_train=False)
    (images, _, _), = list(loader)
    assert np.array_equal(np.asarray(images[0]), np.rot90(stored, k=1))


def test_dataset_applies_exif_orientation_matching_the_json_size(tmp_path, caplog):
    stored = _pattern(20, 36)  # 36 wide, 20 high; orientation 6 shows it 20 wide, 36 high
    Image.fromarray(stored).save(tmp_path / "photo.png", exif=_exif(6))

    # The json describes the upright image (what viewers and annotation tools show): rotated.
    image, target, _ = _one_image_coco(tmp_path, "photo.png", 20, 36)[0]
    assert np.array_equal(np.asarray(image), np.rot90(stored, k=-1)) and target.size == (20, 36)

    # The json describes the stored pixels (a tool that ignores EXIF): the boxes were drawn on
    # those, so the stored pixels are used, with one warning per file.
    dataset = _one_image_coco(tmp_path, "photo.png", 36, 20)
    with caplog.at_level(logging.WARNING, logger="atss_core.data.image_io"):
        for _ in range(3):
            image, target, _ = dataset[0]
    assert np.array_equal(np.asarray(image), stored) and target.size == (36, 20)
    assert len([r for r in caplog.records if "photo.png" in r.getMessage()]) == 1

    # Neither size: refused in one line.
    with pytest.raises(DataError, match=r"photo\.png is 20x36 but .* says 30x30"):
        _one_image_coco(tmp_path, "photo.png", 30, 30)[0]


def test_corrupt_image_in_a_worker_gives_the_one_line_message(tmp_path):
    """A DataLoader worker re-raises the error with its traceback in the message; the tools
    print ``one_line_message`` of it."""
    from atss_core.data.errors import one_line_message

    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    dataset = _one_image_coco(tmp_path, "broken.png", 40, 30)
    with pytest.raises(DataError) as direct:
        dataset[0]
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=list)
    with pytest.raises(DataError) as from_worker:
        next(iter(loader))
    assert "Traceback" in str(from_worker.value)
    assert one_line_message(from_worker.value) == one_line_message(direct.value) == str(direct.value)
    assert "broken.png" in one_line_message(from_worker.value)
