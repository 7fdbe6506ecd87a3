"""Data pipeline tests: transforms, COCO data set, samplers, collator, loaders, synthetic set.

Oracles: the golden ``transforms.pt`` recorded from the original, hand-computed boxes on a tiny
COCO json written here, straightforward reference implementations of the sampler rules, and
byte comparisons of independently generated synthetic sets.
"""
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atss_core.config import cfg
from atss_core.data import build as data_build
from atss_core.data.build import build_dataset, check_num_classes, make_data_loader
from atss_core.data.collate_batch import BatchCollator
from atss_core.data.datasets import COCODataset, ConcatDataset
from atss_core.data.datasets import synthetic_shapes as shapes
from atss_core.data.errors import DataError
from atss_core.data.samplers import DistributedSampler, GroupedBatchSampler, IterationBasedBatchSampler
from atss_core.data.transforms import Resize, build_transforms
from atss_core.structures.bounding_box import BoxList
from conftest import load_golden

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_CONFIG = REPO_ROOT / "configs" / "quickstart" / "atss_mnv2_fpn_shapes.yaml"


# --------------------------------------------------------------------------- transforms

@pytest.mark.parametrize("case_name", ["test", "train_flip0", "train_flip1", "small_test",
                                       "small_train_flip1", "small_test_maxsize_clamp"])
def test_transforms_match_golden(case_name):
    golden = load_golden("transforms.pt")
    meta = load_golden("transforms.json")["cases"][case_name]
    case = golden["cases"][case_name]
    config = cfg.clone()
    if meta["is_train"]:
        config.INPUT.MIN_SIZE_TRAIN = tuple(meta["min_size"])
        config.INPUT.MAX_SIZE_TRAIN = meta["max_size"]
    else:
        config.INPUT.MIN_SIZE_TEST = meta["min_size"][0]
        config.INPUT.MAX_SIZE_TEST = meta["max_size"]
    transform = build_transforms(config, is_train=meta["is_train"])
    if meta["is_train"]:
        assert transform.transforms[1].prob == 0.5
        transform.transforms[1].prob = meta["flip_prob"]
    else:
        assert transform.transforms[1].prob == 0

    image = Image.fromarray(golden["input_rgb_uint8_hwc"].numpy(), "RGB")
    target = BoxList(golden["input_boxes_xyxy"], image.size, mode="xyxy")
    target.add_field("labels", golden["input_labels"])
    tensor, target = transform(image, target)

    assert list(tensor.shape) == case["shape"].tolist()
    if "tensor" in case:
        torch.testing.assert_close(tensor, case["tensor"], rtol=0, atol=1e-4)
    torch.testing.assert_close(tensor[:, ::16, ::16], case["subsample_every16"], rtol=0, atol=1e-4)
    torch.testing.assert_close(tensor[:, 100:132, 200:232], case["patch_rows100_132_cols200_232"],
                               rtol=0, atol=1e-4)
    for stat in ("mean", "std", "sum", "min", "max"):
        expected = float(case[stat])
        got = float(getattr(tensor.double(), stat)())
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-3), stat
    torch.testing.assert_close(target.bbox, case["boxes_xyxy"], rtol=0, atol=1e-4)
    assert torch.equal(target.get_field("labels"), case["labels"])
    assert list(target.size) == case["boxlist_size_wh"].tolist()


def test_resize_get_size_matches_golden_table():
    table = load_golden("transforms.json")["get_size_hw"]
    assert len(table) == 33
    for key, expected_hw in table.items():
        numbers = re.fullmatch(r"min(\d+)_max(\d+)_w(\d+)_h(\d+)", key).groups()
        min_size, max_size, width, height = map(int, numbers)
        assert list(Resize(min_size, max_size).get_size((width, height))) == expected_hw, key


@pytest.mark.parametrize("min_size, max_size", [(800, 1333), (96, 160)])
def test_resize_never_gives_a_zero_side(min_size, max_size):
    """An image far longer than wide (1 x 5000) gets a 1 px side and a max_size long side; the
    original's get_size gives 0 x 0 there (kept, see the golden table), which cannot be resized."""
    resize = Resize(min_size, max_size)
    assert resize.clamped_size((1, 5000)) == (max_size, 1)
    assert resize.clamped_size((5000, 1)) == (1, max_size)
    for short_side in range(1, 6):
        for long_side in (2000, 5000, 100000):
            assert min(resize.clamped_size((short_side, long_side))) >= 1
    assert resize.clamped_size((640, 480)) == resize.get_size((640, 480))  # ordinary sizes unchanged
    target = BoxList(torch.tensor([[0.0, 10.0, 0.0, 4999.0]]), (1, 5000), mode="xyxy")
    image, target = resize(Image.new("RGB", (1, 5000), (9, 9, 9)), target)
    assert image.size == target.size == (1, max_size)
    torch.testing.assert_close(target.bbox, torch.tensor([[0.0, 10 * max_size / 5000, 0.0, 4999 * max_size / 5000]]))


def test_min_size_range_train_samples_every_size_in_range():
    config = cfg.clone()
    config.INPUT.MIN_SIZE_RANGE_TRAIN = (300, 304)
    config.INPUT.MAX_SIZE_TRAIN = 2000
    resize = build_transforms(config, is_train=True).transforms[0]
    assert resize.min_size == (300, 301, 302, 303, 304)
    random.seed(0)
    shorter_sides = {min(resize.get_size((640, 480))) for _ in range(200)}
    assert shorter_sides == {300, 301, 302, 303, 304}
    config.INPUT.MIN_SIZE_RANGE_TRAIN = (400, 300)
    with pytest.raises(ValueError, match="MIN_SIZE_RANGE_TRAIN"):
        build_transforms(config, is_train=True)


def test_transforms_without_target_return_the_image_only():
    image = Image.new("RGB", (40, 30), (10, 20, 30))
    tensor = build_transforms(cfg, is_train=False)(image)
    assert tensor.shape == (3, 800, 1066)
    # RGB (10, 20, 30) becomes BGR 0-255 minus the mean.
    expected = torch.tensor([30.0, 20.0, 10.0]) - torch.tensor(cfg.INPUT.PIXEL_MEAN)
    torch.testing.assert_close(tensor[:, 0, 0], expected)


# --------------------------------------------------------------------------- tiny COCO set

# Not sorted by id: the contiguous labels follow the json order, as in the original.
CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 12, "name": "bird"}]


def _write_tiny_coco(folder):
    """Four images: one with a mix of boxes, one with only unusable ones, one with none, and a
    portrait one. Annotations are box-only (no ``segmentation``)."""
    folder = Path(folder)
    (folder / "img").mkdir(parents=True)
    sizes = {1: (100, 80), 2: (60, 50), 3: (64, 48), 4: (40, 90)}  # id: (W, H)
    images = []
    for image_id, (width, height) in sizes.items():
        name = f"im{image_id}.png"
        Image.new("RGB", (width, height), (image_id * 40, 100, 200)).save(folder / "img" / name)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
    boxes = [  # (image, category, [x, y, w, h], iscrowd)
        (1, 7, [10, 20, 30, 15], 0),      # plain: xyxy (10, 20, 39, 34)
        (1, 3, [90.5, 70, 20, 30], 0),    # crosses the border: clipped to (90.5, 70, 99, 79)
        (1, 12, [5, 5, 40, 40], 1),       # crowd: ignored
        (1, 3, [50, 10, 1, 20], 0),       # one pixel wide: dropped
        (1, 12, [120, 10, 30, 30], 0),    # right of the image: collapses when clipped, dropped
        (1, 12, [-5, -8, 20, 18.5], 0),   # clipped at the top-left: (0, 0, 14, 9.5)
        (2, 7, [1, 1, 30, 30], 1),        # crowd only ...
        (2, 3, [10, 10, 0.5, 9], 0),      # ... and degenerate: no usable box
        (4, 12, [2, 3, 10, 50], 0),
    ]
    annotations = [{"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                    "iscrowd": crowd} for n, (i, c, b, crowd) in enumerate(boxes)]
    ann_file = folder / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return str(folder / "img"), str(ann_file)


@pytest.fixture
def tiny_coco(tmp_path):
    return _write_tiny_coco(tmp_path / "tiny")


def test_coco_contiguous_ids_and_class_names(tiny_coco):
    root, ann_file = tiny_coco
    dataset = COCODataset(ann_file, root, remove_images_without_annotations=False)
    assert dataset.json_category_id_to_contiguous_id == {7: 1, 3: 2, 12: 3}
    assert dataset.contiguous_category_id_to_json_id == {1: 7, 2: 3, 3: 12}
    assert dataset.class_names == ("__background", "dog", "cat", "bird")
    assert dataset.categories == {7: "dog", 3: "cat", 12: "bird"}


def test_coco_boxes_are_filtered_clipped_and_labelled(tiny_coco):
    root, ann_file = tiny_coco
    dataset = COCODataset(ann_file, root, remove_images_without_annotations=False)
    assert len(dataset) == 4 and dataset.ids == [1, 2, 3, 4]
    image, target, index = dataset[0]
    assert index == 0 and image.size == (100, 80) and target.size == (100, 80) and target.mode == "xyxy"
    expected = torch.tensor([[10, 20, 39, 34], [90.5, 70, 99, 79], [0, 0, 14, 9.5]])
    torch.testing.assert_close(target.bbox, expected, rtol=0, atol=0)
    assert target.get_field("labels").tolist() == [1, 2, 3]
    assert target.get_field("labels").dtype == torch.int64
    # Cross-check against the original's route: xywh BoxList -> xyxy -> clip_to_image.
    raw = [a["bbox"] for a in dataset.coco.imgToAnns[1] if not a["iscrowd"]]
    reference = BoxList(torch.tensor(raw), (100, 80), mode="xywh").convert("xyxy")
    reference = reference.clip_to_image(remove_empty=True)
    torch.testing.assert_close(target.bbox, reference.bbox, rtol=0, atol=0)
    # Images with nothing usable give an empty, well-formed target.
    for empty_index in (1, 2):
        _, empty, _ = dataset[empty_index]
        assert empty.bbox.shape == (0, 4) and empty.get_field("labels").shape == (0,)
    assert dataset.get_img_info(3) == {"id": 4, "file_name": "im4.png", "width": 40, "height": 90}


def test_coco_training_drops_images_without_usable_boxes(tiny_coco):
    root, ann_file = tiny_coco
    dataset = COCODataset(ann_file, root, remove_images_without_annotations=True)
    # Image 2 (crowd + degenerate only) and image 3 (no annotations) are gone.
    assert dataset.ids == [1, 4]
    assert dataset.id_to_img_map == {0: 1, 1: 4}
    assert all(len(dataset[i][1]) > 0 for i in range(len(dataset)))


class _OneEntryCatalog:
    """Stand-in DatasetCatalog that maps every name to one COCO folder and json."""

    def __init__(self, root, ann_file):
        self.args = dict(root=str(root), ann_file=str(ann_file))

    def get(self, name):
        return dict(factory="COCODataset", args=dict(self.args))


def test_coco_image_only_file_for_test_splits(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 24)).save(tmp_path / "img" / "a.jpg")
    ann_file = tmp_path / "image_info.json"
    ann_file.write_text(json.dumps({"images": [{"id": 5, "file_name": "a.jpg", "width": 32, "height": 24}],
                                    "categories": CATEGORIES}))
    dataset = COCODataset(str(ann_file), str(tmp_path / "img"), remove_images_without_annotations=False,
                          transforms=build_transforms(cfg, is_train=False))
    image, target, _ = dataset[0]
    assert image.shape == (3, 800, 1066) and len(target) == 0 and target.size == (1066, 800)
    assert len(COCODataset(str(ann_file), str(tmp_path / "img"), remove_images_without_annotations=True)) == 0
    with pytest.raises(ValueError, match="no image with a usable box"):
        build_dataset(["images_only"], None, _OneEntryCatalog(tmp_path / "img", ann_file), is_train=True)


def test_coco_user_errors_name_the_file(tiny_coco, tmp_path):
    root, ann_file = tiny_coco
    with pytest.raises(DataError, match="missing.json"):
        COCODataset(str(tmp_path / "missing.json"), root, False)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        COCODataset(str(broken), root, False)

    dataset = COCODataset(ann_file, root, False)
    Path(root, "im1.png").unlink()
    with pytest.raises(DataError, match=r"im1\.png"):
        dataset[0]
    Path(root, "im2.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"im2\.png"):
        dataset[1]
    Image.new("RGB", (10, 10)).save(Path(root, "im3.png"))
    with pytest.raises(ValueError, match=r"im3\.png is 10x10 but .* says 64x48"):
        dataset[2]

    content = json.loads(Path(ann_file).read_text())
    content["annotations"][0]["category_id"] = 99
    bad_category = tmp_path / "bad_category.json"
    bad_category.write_text(json.dumps(content))
    with pytest.raises(DataError, match="annotation 1 .*category_id 99"):
        COCODataset(str(bad_category), root, False)


def test_concat_dataset_maps_indices_to_parts(tiny_coco):
    root, ann_file = tiny_coco
    parts = [COCODataset(ann_file, root, True), COCODataset(ann_file, root, False)]
    both = ConcatDataset(parts)
    assert len(both) == 6
    assert both.get_idxs(1) == (0, 1) and both.get_idxs(2) == (1, 0) and both.get_idxs(5) == (1, 3)
    assert both.get_img_info(1)["id"] == 4 and both.get_img_info(3)["id"] == 2


def test_check_num_classes(tiny_coco):
    root, ann_file = tiny_coco
    dataset = COCODataset(ann_file, root, False)
    config = cfg.clone()
    config.MODEL.ATSS.NUM_CLASSES = 4
    check_num_classes(config, dataset)
    check_num_classes(config, ConcatDataset([dataset, dataset]))
    config.MODEL.ATSS.NUM_CLASSES = 81
    with pytest.raises(ValueError, match="set MODEL.ATSS.NUM_CLASSES 4 "):
        check_num_classes(config, dataset)


# --------------------------------------------------------------------------- samplers

def _reference_grouped_batches(order, group_ids, batch_size):
    """The grouping rule written plainly: per group in sampler order, cut into batches, then
    order the batches by the sampler position of their first element."""
    position = {index: pos for pos, index in enumerate(order)}
    batches = []
    for group in sorted(set(group_ids[i] for i in order)):
        members = [i for i in order if group_ids[i] == group]
        batches += [members[k:k + batch_size] for k in range(0, len(members), batch_size)]
    return sorted(batches, key=lambda batch: position[batch[0]])


class _ListSampler(torch.utils.data.Sampler):
    def __init__(self, order):
        self.order = list(order)

    def __iter__(self):
        return iter(self.order)

    def __len__(self):
        return len(self.order)


def test_grouped_batch_sampler_hand_case():
    group_ids = [0, 1, 0, 1, 0, 0, 1, 0]
    sampler = _ListSampler([5, 1, 0, 3, 7, 2, 6, 4])
    batches = list(GroupedBatchSampler(sampler, group_ids, batch_size=2))
    assert batches == [[5, 0], [1, 3], [7, 2], [6], [4]]
    full_only = GroupedBatchSampler(sampler, group_ids, batch_size=2, drop_uneven=True)
    assert list(full_only) == [[5, 0], [1, 3], [7, 2]]
    assert len(GroupedBatchSampler(sampler, group_ids, batch_size=2)) == 5


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_grouped_batch_sampler_matches_reference(batch_size):
    generator = torch.Generator().manual_seed(batch_size)
    group_ids = torch.randint(0, 3, (57,), generator=generator).tolist()
    order = torch.randperm(57, generator=generator)[:50].tolist()  # a partial sampler, as on one rank
    batches = list(GroupedBatchSampler(_ListSampler(order), group_ids, batch_size))
    assert batches == _reference_grouped_batches(order, group_ids, batch_size)
    assert all(len({group_ids[i] for i in batch}) == 1 for batch in batches)


def test_distributed_sampler_splits_and_pads():
    dataset = list(range(10))
    shares = [list(DistributedSampler(dataset, num_replicas=3, rank=r, shuffle=False)) for r in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]]  # dealt out in turn, wrapped
    shuffled = [DistributedSampler(dataset, num_replicas=3, rank=r, seed=5) for r in range(3)]
    for sampler in shuffled:
        sampler.set_epoch(2)
    shares = [list(s) for s in shuffled]
    assert all(len(share) == 4 for share in shares)
    padded_order = [share[k] for k in range(4) for share in shares]  # undo the dealing
    assert sorted(padded_order[:10]) == dataset and padded_order[10:] == padded_order[:2]
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(5 + 2)).tolist()
    assert padded_order[:10] == expected
    epoch_0 = torch.randperm(10, generator=torch.Generator().manual_seed(5)).tolist()
    assert list(DistributedSampler(dataset, num_replicas=1, rank=0, seed=5)) == epoch_0
    with pytest.raises(ValueError, match="rank 3"):
        DistributedSampler(dataset, num_replicas=3, rank=3)


def test_iteration_based_sampler_resumes_exactly():
    group_ids = [0, 1] * 10 + [1]
    sampler = DistributedSampler(group_ids, num_replicas=1, rank=0, seed=3)
    batches = GroupedBatchSampler(sampler, group_ids, batch_size=4)
    full = list(IterationBasedBatchSampler(batches, num_iterations=20))
    assert len(full) == 20 and len(IterationBasedBatchSampler(batches, 20)) == 20
    # Epoch 0 covers the data set once, and the next epoch uses another order.
    first_epoch = full[:len(_reference_grouped_batches(list(range(21)), group_ids, 4))]
    assert sorted(sum(first_epoch, [])) == list(range(21))
    epoch_len = len(first_epoch)
    assert full[epoch_len:2 * epoch_len] != first_epoch
    for start_iter in (1, 6, 7, 13):
        resumed = list(IterationBasedBatchSampler(batches, num_iterations=20, start_iter=start_iter))
        assert resumed == full[start_iter:]


def test_seeded_batches_of_two_processes_equal_one_process_batches():
    """Each image gets the same augmentation seed whether one process loads the whole batch or
    two processes load half each: the rank's entries are the interleaved global positions."""
    def seeded_batches(rank, world_size, images_per_process):
        sampler = DistributedSampler(list(range(24)), num_replicas=world_size, rank=rank, seed=5)
        batches = torch.utils.data.BatchSampler(sampler, images_per_process, drop_last=False)
        return list(IterationBasedBatchSampler(batches, 9, augment_seed=11, rank=rank,
                                               world_size=world_size))

    single = seeded_batches(0, 1, 8)
    rank0, rank1 = seeded_batches(0, 2, 4), seeded_batches(1, 2, 4)
    assert len({seed for batch in single for _, seed in batch}) == 9 * 8  # no seed repeats
    for whole, half0, half1 in zip(single, rank0, rank1):
        assert sorted(half0 + half1) == sorted(whole)


def test_iteration_based_sampler_rejects_empty_data():
    sampler = torch.utils.data.BatchSampler(_ListSampler([]), 2, drop_last=False)
    with pytest.raises(RuntimeError, match="empty"):
        next(iter(IterationBasedBatchSampler(sampler, 5)))


# --------------------------------------------------------------------------- collator and loaders

def test_batch_collator_pads_to_size_divisibility():
    images = [torch.rand(3, 50, 70), torch.rand(3, 65, 33)]
    targets = [BoxList(torch.zeros(0, 4), (70, 50)), BoxList(torch.zeros(0, 4), (33, 65))]
    batch, out_targets, indices = BatchCollator(size_divisible=32)(list(zip(images, targets, [4, 9])))
    assert batch.tensors.shape == (2, 3, 96, 96)
    assert [tuple(size) for size in batch.image_sizes] == [(50, 70), (65, 33)]
    torch.testing.assert_close(batch.tensors[0, :, :50, :70], images[0])
    torch.testing.assert_close(batch.tensors[1, :, :65, :33], images[1])
    assert batch.tensors[0, :, 50:].abs().sum() == 0 and batch.tensors[1, :, :, 33:].abs().sum() == 0
    assert out_targets == tuple(targets) and indices == (4, 9)


def _loader_config(root, ann_file):
    config = cfg.clone()
    config.DATASETS.TRAIN = (f"coco:{root}:{ann_file}",)
    config.DATASETS.TEST = (f"coco:{root}:{ann_file}", f"coco:{root}:{ann_file}")
    config.MODEL.ATSS.NUM_CLASSES = 4
    config.INPUT.MIN_SIZE_TRAIN = (64,)
    config.INPUT.MAX_SIZE_TRAIN = 160
    config.INPUT.MIN_SIZE_TEST = 64
    config.INPUT.MAX_SIZE_TEST = 160
    config.DATALOADER.NUM_WORKERS = 0
    config.DATALOADER.SIZE_DIVISIBILITY = 32
    config.SOLVER.IMS_PER_BATCH = 2
    config.SOLVER.MAX_ITER = 7
    config.TEST.IMS_PER_BATCH = 3
    return config


def test_train_loader_batches_and_resume(tiny_coco):
    root, ann_file = tiny_coco
    config = _loader_config(root, ann_file)
    config.DATALOADER.KEEP_EMPTY_IMAGES = True  # a new key: set here in case defaults.py lacks it
    loader = make_data_loader(config, is_train=True)
    assert len(loader) == 7 and len(loader.dataset) == 4
    full = []
    for images, targets, indices in loader:
        assert images.tensors.shape[0] == len(targets) == len(indices) <= 2
        assert images.tensors.shape[-1] % 32 == 0 and images.tensors.shape[-2] % 32 == 0
        # Aspect grouping: image 4 is the only portrait one and never shares a batch.
        assert 3 not in indices or indices == (3,)
        full.append(indices)
    assert len(full) == 7
    resumed = [indices for _, _, indices in make_data_loader(config, is_train=True, start_iter=4)]
    assert resumed == full[4:]

    config.DATALOADER.KEEP_EMPTY_IMAGES = False
    kept = make_data_loader(config, is_train=True).dataset
    assert kept.ids == [1, 4]


def test_resumed_loader_replays_random_flips_and_scales(tiny_coco):
    """Iteration k of a resumed run gets the same augmented tensors and boxes as an uninterrupted
    run, whatever the number of workers: the flips and scales are seeded per (iteration, slot)."""
    root, ann_file = tiny_coco
    config = _loader_config(root, ann_file)
    config.DATALOADER.KEEP_EMPTY_IMAGES = True
    config.INPUT.MIN_SIZE_TRAIN = (48, 64, 80)
    config.SOLVER.MAX_ITER = 8

    def run(start_iter, num_workers):
        config.DATALOADER.NUM_WORKERS = num_workers
        loader = make_data_loader(config, is_train=True, start_iter=start_iter)
        return [(images.tensors, [t.bbox for t in targets]) for images, targets, _ in loader]

    full = run(0, 0)
    # The augmentation really varies: several input sizes occur.
    assert len({tensors.shape[-2:] for tensors, _ in full}) > 1
    resumed = run(5, 2)
    assert len(resumed) == 3
    for (tensors, boxes), (tensors_ref, boxes_ref) in zip(resumed, full[5:]):
        assert torch.equal(tensors, tensors_ref)
        assert all(torch.equal(b, r) for b, r in zip(boxes, boxes_ref))


def test_test_loaders_one_per_dataset_in_order(tiny_coco):
    root, ann_file = tiny_coco
    config = _loader_config(root, ann_file)
    config.DATALOADER.ASPECT_RATIO_GROUPING = False
    loaders = make_data_loader(config, is_train=False)
    assert len(loaders) == 2
    indices = [list(batch_indices) for _, _, batch_indices in loaders[0]]
    assert indices == [[0, 1, 2], [3]]  # every image, dataset order, TEST.IMS_PER_BATCH = 3


def test_batch_size_must_split_over_processes(tiny_coco, monkeypatch):
    root, ann_file = tiny_coco
    monkeypatch.setattr(data_build, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match=r"SOLVER.IMS_PER_BATCH \(2\) must be a positive multiple .* \(3\)"):
        make_data_loader(_loader_config(root, ann_file), is_train=True)
    config = _loader_config(root, ann_file)
    config.TEST.IMS_PER_BATCH = 4
    with pytest.raises(ValueError, match=r"TEST.IMS_PER_BATCH \(4\)"):
        make_data_loader(config, is_train=False)


def test_loader_checks_num_classes(tiny_coco):
    root, ann_file = tiny_coco
    config = _loader_config(root, ann_file)
    config.MODEL.ATSS.NUM_CLASSES = 81
    with pytest.raises(ValueError, match="set MODEL.ATSS.NUM_CLASSES 4"):
        make_data_loader(config, is_train=True)


# --------------------------------------------------------------------------- synthetic set

SMALL_SPLITS = {"train": 6, "val": 2}


def _file_bytes(root):
    files = sorted(path for path in Path(root).rglob("*") if path.is_file())
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in files}


def test_synthetic_generation_is_deterministic_and_prefix_stable(tmp_path):
    shapes.generate_shapes_dataset(tmp_path / "a", SMALL_SPLITS)
    shapes.generate_shapes_dataset(tmp_path / "b", SMALL_SPLITS)
    first, second = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    assert len(first) == 6 + 2 + 2 and first == second
    # A smaller set is a prefix of a larger one (each image depends only on seed, split, id).
    shapes.generate_shapes_dataset(tmp_path / "c", {"train": 3})
    prefix = _file_bytes(tmp_path / "c")
    assert all(prefix[f"train/{i:06d}.jpg"] == first[f"train/{i:06d}.jpg"] for i in (1, 2, 3))
    shapes.generate_shapes_dataset(tmp_path / "d", {"train": 3}, seed=1)
    assert _file_bytes(tmp_path / "d")["train/000001.jpg"] != first["train/000001.jpg"]


def test_synthetic_annotations_cover_classes_and_fit_the_image(tmp_path):
    shapes.generate_shapes_dataset(tmp_path, {"train": 12})
    content = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in content["categories"]] == list(shapes.CLASS_NAMES)
    annotations = content["annotations"]
    assert {a["category_id"] for a in annotations} == {1, 2, 3, 4}
    assert len({a["image_id"] for a in annotations}) == 12  # every image has objects
    boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32)
    areas = torch.tensor([a["area"] for a in annotations], dtype=torch.float32)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= 320).all()
    assert (boxes[:, 2:] >= 2).all() and (areas > 0).all() and (areas <= boxes[:, 2] * boxes[:, 3]).all()
    assert all(a["iscrowd"] == 0 and "segmentation" not in a for a in annotations)
    assert boxes[:, 2:].max() > 4 * boxes[:, 2:].min()  # varied sizes
    dataset = COCODataset(str(tmp_path / "annotations" / "instances_train.json"), str(tmp_path / "train"),
                          remove_images_without_annotations=True)
    assert len(dataset) == 12
    image, target, _ = dataset[0]
    assert image.size == (320, 320) and set(target.get_field("labels").tolist()) <= {1, 2, 3, 4}


def test_visible_boxes_hand_case():
    owner = np.full((6, 8), -1)
    owner[1:4, 2:7] = 0  # object 0: rows 1-3, columns 2-6 ...
    owner[2:6, 5:8] = 1  # ... partly covered by object 1: rows 2-5, columns 5-7
    owner[0, 0] = 2      # a single pixel
    boxes, areas = shapes.visible_boxes(owner, 3)
    assert boxes.tolist() == [[2, 1, 5, 3], [5, 2, 3, 4], [0, 0, 1, 1]]
    assert areas.tolist() == [15 - 4, 12, 1]


def test_render_image_outputs():
    image, boxes, labels, areas = shapes.render_image(np.random.default_rng([0, 1, 2]), 96, 128)
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8
    assert 1 <= len(boxes) == len(labels) == len(areas) <= shapes.MAX_OBJECTS
    assert ((labels >= 0) & (labels < len(shapes.CLASS_NAMES))).all()
    x, y, w, h = boxes.T
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= 128).all() and (y + h <= 96).all()
    assert ((areas > 0) & (areas <= w * h)).all()


class _QuickstartCatalog:
    """Stand-in catalog pointing the quick-start names at a temporary DATA_DIR."""

    def __init__(self, data_dir):
        self.data_dir = Path(data_dir)

    def get(self, name):
        split = name.rsplit("_", 1)[1]
        root = self.data_dir / "quickstart_shapes"
        ann_file = root / "annotations" / f"instances_{split}.json"
        return dict(factory="COCODataset", args=dict(root=str(root / split), ann_file=str(ann_file)))


def test_quickstart_set_is_generated_atomically_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "DEFAULT_SPLIT_SIZES", SMALL_SPLITS)
    catalog = _QuickstartCatalog(tmp_path)
    original_write_split = shapes.write_split

    def crash_on_val(root, split, *args, **kwargs):
        if split == "val":
            raise KeyboardInterrupt
        original_write_split(root, split, *args, **kwargs)

    monkeypatch.setattr(shapes, "write_split", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(["quickstart_shapes_train"], None, catalog, is_train=True)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind

    monkeypatch.setattr(shapes, "write_split", original_write_split)
    (train_set,) = build_dataset(["quickstart_shapes_train"], None, catalog, is_train=True)
    val_sets = build_dataset(["quickstart_shapes_val"], None, catalog, is_train=False)
    assert len(train_set) == 6 and len(val_sets) == 1 and len(val_sets[0]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quickstart_shapes"]

    before = _file_bytes(tmp_path / "quickstart_shapes")
    build_dataset(["quickstart_shapes_train"], None, catalog, is_train=True)  # present: untouched
    assert _file_bytes(tmp_path / "quickstart_shapes") == before

    (tmp_path / "quickstart_shapes" / "annotations" / "instances_val.json").unlink()
    with pytest.raises(FileExistsError, match="delete"):
        build_dataset(["quickstart_shapes_val"], None, catalog, is_train=False)


def test_quickstart_config_is_consistent():
    config = cfg.clone()
    config.merge_from_file(str(QUICKSTART_CONFIG))  # raises on unknown keys
    assert config.MODEL.ATSS.NUM_CLASSES == len(shapes.CLASS_NAMES) + 1
    assert config.MODEL.BACKBONE.CONV_BODY == "MNV2-FPN-RETINANET"
    assert config.MODEL.BACKBONE.FREEZE_CONV_BODY_AT == 0 and config.MODEL.WEIGHT == ""
    assert config.MODEL.RESNETS.BACKBONE_OUT_CHANNELS == 64
    assert config.MODEL.ATSS.ANCHOR_SIZES == (32, 64, 128, 256, 512)
    assert config.INPUT.MIN_SIZE_TRAIN == (320,)
    assert config.DATASETS.TRAIN == ("quickstart_shapes_train",)
    assert config.DATASETS.TEST == ("quickstart_shapes_val",)
    assert config.SOLVER.IMS_PER_BATCH == 8 and config.TEST.IMS_PER_BATCH == 8
    assert config.SOLVER.WARMUP_ITERS == 50 and config.SOLVER.WARMUP_METHOD == "linear"
    assert max(config.SOLVER.STEPS) < config.SOLVER.MAX_ITER
    from atss_core.config.paths_catalog import DatasetCatalog
    for name in config.DATASETS.TRAIN + config.DATASETS.TEST:
        assert Path(DatasetCatalog.get(name)["args"]["root"]).parent.name == "quickstart_shapes"
