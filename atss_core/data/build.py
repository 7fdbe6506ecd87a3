"""Data sets, samplers and data loaders of a config."""
import bisect
import logging
from pathlib import Path

import torch.utils.data

from atss_core.utils.comm import get_rank, get_world_size
from atss_core.utils.imports import import_file

from . import datasets as D
from . import samplers
from .collate_batch import BatchCollator, BBoxAugCollator
from .datasets.synthetic_shapes import ensure_quickstart_shapes
from .errors import DataError
from .transforms import build_transforms

QUICKSTART_PREFIX = "quickstart_shapes"


def build_dataset(dataset_list, transforms, dataset_catalog, is_train=True, keep_empty_images=False):
    """Instantiate the data sets named in ``dataset_list`` through ``dataset_catalog``.

    Training COCO sets drop the images without a usable box unless ``keep_empty_images``;
    test sets keep every image. The quick-start set is generated on first use.

    Returns:
        training: a one-element list holding the (concatenated) training set;
        test: one data set per name.
    """
    if not isinstance(dataset_list, (list, tuple)) or not dataset_list:
        raise DataError("DATASETS.TRAIN / DATASETS.TEST must be a non-empty tuple of names, "
                        f"got {dataset_list!r}")
    datasets = []
    for dataset_name in dataset_list:
        try:
            entry = dataset_catalog.get(dataset_name)
        except (RuntimeError, ValueError) as error:  # unknown or malformed name
            raise DataError(str(error)) from None
        args = dict(entry["args"])
        if dataset_name.startswith(QUICKSTART_PREFIX):
            ensure_quickstart_shapes(Path(args["root"]).parent)
        factory = getattr(D, entry["factory"], None)
        if factory is None:
            raise DataError(f"dataset '{dataset_name}' needs a {entry['factory']} reader, which "
                            "atss_core does not provide; convert it to COCO json and name it "
                            "'coco:IMG_DIR:ANN_FILE'")
        if entry["factory"] == "COCODataset":
            args["remove_images_without_annotations"] = is_train and not keep_empty_images
        args["transforms"] = transforms
        dataset = factory(**args)
        if entry["factory"] == "COCODataset":
            dataset.check_image_files()
        datasets.append(dataset)

    if not is_train:
        return datasets
    if sum(len(dataset) for dataset in datasets) == 0:
        raise DataError(f"the training data {list(dataset_list)} has no image with a usable box "
                        "(non-crowd, more than 1 pixel wide and tall inside the image); check the "
                        "annotation files")
    return [datasets[0] if len(datasets) == 1 else D.ConcatDataset(datasets)]


def check_num_classes(cfg, dataset):
    """Raise when MODEL.ATSS.NUM_CLASSES is not the data set's category count + 1 (background).

    Data sets whose json lists no categories (image-only test files) cannot be checked and pass.
    """
    parts = dataset.datasets if isinstance(dataset, D.ConcatDataset) else [dataset]
    for part in parts:
        num_categories = len(getattr(part, "json_category_id_to_contiguous_id", {}))
        if num_categories and cfg.MODEL.ATSS.NUM_CLASSES != num_categories + 1:
            source = getattr(part, "ann_file", type(part).__name__)
            raise DataError(f"MODEL.ATSS.NUM_CLASSES is {cfg.MODEL.ATSS.NUM_CLASSES} but {source} has "
                            f"{num_categories} categories; set MODEL.ATSS.NUM_CLASSES {num_categories + 1} "
                            "(categories + background)")


def check_test_datasets(cfg):
    """Build every DATASETS.TEST set once, without reading an image, so that what would stop the
    evaluation after training (unknown name, bad json, missing image file, NUM_CLASSES not fitting
    the categories) raises its DataError before training starts."""
    catalog = import_file("atss_core.config.paths_catalog", cfg.PATHS_CATALOG, True).DatasetCatalog
    for dataset in build_dataset(cfg.DATASETS.TEST, None, catalog, is_train=False):
        check_num_classes(cfg, dataset)


def make_data_sampler(dataset, shuffle, distributed, seed=0):
    """Sampler of one process.

    Shuffled sampling is always the seeded, epoch-aware ``DistributedSampler`` (with one
    replica when not distributed) so that a resumed run replays the same order.
    """
    if distributed:
        return samplers.DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    if shuffle:
        return samplers.DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    return torch.utils.data.SequentialSampler(dataset)


def _quantize(values, bin_edges):
    """Bin number of every value: how many edges are <= it."""
    edges = sorted(bin_edges)
    return [bisect.bisect_right(edges, value) for value in values]


def _compute_aspect_ratios(dataset):
    """Height / width of every image, from the annotation file (no image is opened)."""
    infos = (dataset.get_img_info(i) for i in range(len(dataset)))
    return [float(info["height"]) / float(info["width"]) for info in infos]


def make_batch_data_sampler(dataset, sampler, aspect_grouping, images_per_batch, num_iters=None,
                            start_iter=0, augment_seed=None):
    """Batch sampler; grouped by aspect-ratio bins when ``aspect_grouping`` lists bin edges,
    and iteration-based (``num_iters`` batches, resuming after ``start_iter``, entries seeded
    for augmentation when ``augment_seed`` is given) when ``num_iters`` is given."""
    if aspect_grouping:
        edges = aspect_grouping if isinstance(aspect_grouping, (list, tuple)) else [aspect_grouping]
        group_ids = _quantize(_compute_aspect_ratios(dataset), edges)
        batch_sampler = samplers.GroupedBatchSampler(sampler, group_ids, images_per_batch, drop_uneven=False)
    else:
        batch_sampler = torch.utils.data.BatchSampler(sampler, images_per_batch, drop_last=False)
    if num_iters is not None:
        batch_sampler = samplers.IterationBasedBatchSampler(
            batch_sampler, num_iters, start_iter, augment_seed, get_rank(), get_world_size())
    return batch_sampler


def _images_per_process(images_per_batch, key):
    num_processes = get_world_size()
    if images_per_batch <= 0 or images_per_batch % num_processes:
        raise ValueError(f"{key} ({images_per_batch}) must be a positive multiple of the number of "
                         f"processes ({num_processes}); change {key} or the number of processes")
    return images_per_batch // num_processes


def make_data_loader(cfg, is_train=True, is_distributed=False, start_iter=0):
    """Data loader(s) of ``cfg``.

    Training: one loader over DATASETS.TRAIN (concatenated) that yields SOLVER.MAX_ITER batches
    of SOLVER.IMS_PER_BATCH / world-size images, shuffled by a seeded order (config key SEED);
    with ``start_iter`` it continues exactly where an uninterrupted run would be. Test: a list
    with one loader per DATASETS.TEST entry, TEST.IMS_PER_BATCH / world-size images per batch,
    in dataset order (shuffled across processes when distributed, as the original).

    Each batch is ``(ImageList, targets tuple, dataset indices tuple)``.
    """
    if is_train:
        images_per_process = _images_per_process(cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH")
        shuffle = True
        num_iters = cfg.SOLVER.MAX_ITER
    else:
        images_per_process = _images_per_process(cfg.TEST.IMS_PER_BATCH, "TEST.IMS_PER_BATCH")
        shuffle = is_distributed
        num_iters = None
        start_iter = 0
    if images_per_process > 1:
        logging.getLogger(__name__).info(
            "%d images per process; on out-of-memory errors lower %s (and, for training, scale "
            "SOLVER.BASE_LR and the schedule by the linear scaling rule)", images_per_process,
            "SOLVER.IMS_PER_BATCH" if is_train else "TEST.IMS_PER_BATCH")

    # Portrait (h/w > 1) and landscape images go to different batches, which saves padding.
    aspect_grouping = [1] if cfg.DATALOADER.ASPECT_RATIO_GROUPING else []

    paths_catalog = import_file("atss_core.config.paths_catalog", cfg.PATHS_CATALOG, True)
    dataset_list = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
    test_time_augmentation = not is_train and cfg.TEST.BBOX_AUG.ENABLED
    # Test-time augmentation transforms each image itself, several times.
    transforms = None if test_time_augmentation else build_transforms(cfg, is_train)
    datasets = build_dataset(dataset_list, transforms, paths_catalog.DatasetCatalog, is_train,
                             keep_empty_images=cfg.DATALOADER.KEEP_EMPTY_IMAGES)

    if test_time_augmentation:
        collator = BBoxAugCollator()
    else:
        collator = BatchCollator(cfg.DATALOADER.SIZE_DIVISIBILITY)
    data_loaders = []
    for dataset in datasets:
        check_num_classes(cfg, dataset)
        sampler = make_data_sampler(dataset, shuffle, is_distributed, seed=cfg.SEED)
        batch_sampler = make_batch_data_sampler(
            dataset, sampler, aspect_grouping, images_per_process, num_iters, start_iter,
            augment_seed=cfg.SEED if is_train else None)
        data_loaders.append(torch.utils.data.DataLoader(
            dataset, batch_sampler=batch_sampler, collate_fn=collator,
            num_workers=cfg.DATALOADER.NUM_WORKERS))
    return data_loaders[0] if is_train else data_loaders
