"""The data loaders of d2dist's :class:`~d2dist.engine.Trainer`: Detectron2's, with the
datasets checked when loaded (:mod:`d2dist.data.checks`), an unusable training image named
(:class:`~d2dist.engine.faults.CheckedMapper`), and the DeepLab project's augmentations for
semantic segmentation with crops."""

import detectron2.data.transforms as T
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader

from .configs import student_meta_architecture
from .data_checks import test_dataset_dicts, train_dataset_dicts, weighted_sampler
from .faults import CheckedMapper

__all__ = ["sem_seg_train_augmentations", "test_loader", "train_loader"]


def train_loader(cfg):
    """Detectron2's loader; for semantic segmentation with ``INPUT.CROP``, with the DeepLab
    project's augmentations (:func:`sem_seg_train_augmentations`) as its train_net uses.
    ``DATASETS.TRAIN`` is loaded once and checked before training (:mod:`d2dist.data.checks`:
    faults named, boxes outside the images dropped and counted)."""
    if cfg.INPUT.CROP.ENABLED and student_meta_architecture(cfg) == "SemanticSegmentor":
        augmentations = sem_seg_train_augmentations(cfg)
        mapper = DatasetMapper(cfg, is_train=True, augmentations=augmentations)
    else:
        mapper = DatasetMapper(cfg, is_train=True)
    # an image that cannot be used stops the run, named (d2dist.engine.faults)
    mapper = CheckedMapper(mapper, cfg.DATASETS.TRAIN)
    sampler = None
    if cfg.DATALOADER.SAMPLER_TRAIN in ("WeightedTrainingSampler",
                                        "WeightedCategoryTrainingSampler"):  # fmt: skip
        per_dataset = train_dataset_dicts(cfg, per_dataset=True)
        dicts = [d for _, records in per_dataset for d in records]
        sampler = weighted_sampler(cfg, per_dataset)
    else:
        dicts = train_dataset_dicts(cfg)
    return build_detection_train_loader(cfg, mapper=mapper, dataset=dicts, sampler=sampler)


def test_loader(cfg, dataset_name: str):
    """Detectron2's test loader of ``dataset_name``, whose records are checked before evaluation
    (:mod:`d2dist.data.checks`; a test set without annotations cannot be scored) and whose
    classes the model's heads must predict."""
    dicts = test_dataset_dicts(cfg, dataset_name)
    mapper = DatasetMapper(cfg, is_train=False)
    return build_detection_test_loader(dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)


def sem_seg_train_augmentations(cfg):
    """The training augmentations of Detectron2's DeepLab project (its train_net's
    ``build_sem_seg_train_aug``): resize the shortest edge (``INPUT.MIN_SIZE_TRAIN``, multi-scale),
    *then* crop to ``INPUT.CROP.SIZE`` (avoiding crops of mostly one category), then flip. So every
    training image has the crop's size, which a DeepLab head's fixed ASPP pooling kernel needs
    (Detectron2's default mapper crops before resizing, which gives images of other sizes)."""
    augs = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        ),
        T.RandomCrop_CategoryAreaConstraint(
            cfg.INPUT.CROP.TYPE,
            cfg.INPUT.CROP.SIZE,
            cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
            cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        ),
        T.RandomFlip(),
    ]
    return augs
