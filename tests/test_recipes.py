"""Every shipped COCO and Cityscapes recipe runs: built at full size (the recipe's own student,
teacher and terms; random weights, norm statistics calibrated), two training iterations through
the trainer's optimizer on the tiny COCO / Cityscapes datasets written in their real formats
(d2dist/data/real_formats.py), every configured term giving a finite, non-zero loss.

Images are resized to a shorter side of 256 (the tiny images are 128 x 256) instead of the recipes'
640-1024, so that the layer stays within minutes; DeepLab recipes keep their training crop (their
teacher's ASPP pools with a kernel fixed by it), and the LazyConfig recipe its ViTDet teacher's
1024 px crops. ``tools/loss_scale.py --tiny-datasets`` runs the
same at the recipes' own sizes and prints the values (docs/recipes.md).
"""

import glob
import math
import os
import random

import numpy as np
import pytest
import torch

from d2dist.config import get_cfg
from d2dist.data.real_formats import write_tiny_cityscapes, write_tiny_coco
from d2dist.engine.lazy import load_lazy_config
from d2dist.engine.loss_scale import measure_loss_scale

pytestmark = pytest.mark.slow  # full-size models: seconds per iteration on a CPU

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("COCO-Detection", "COCO-InstanceSegmentation", "Cityscapes")


def _recipes():
    found = []
    for family in FAMILIES:
        for path in sorted(glob.glob(os.path.join(REPO, "configs", family, "*.yaml"))):
            cfg = get_cfg()
            cfg.merge_from_file(path)
            if cfg.MODEL.META_ARCHITECTURE == "Distiller":
                found.append(os.path.relpath(path, os.path.join(REPO, "configs")))
        for path in sorted(glob.glob(os.path.join(REPO, "configs", family, "*.py"))):
            with open(path) as f:
                if "L(Distiller)" in f.read():
                    found.append(os.path.relpath(path, os.path.join(REPO, "configs")))
    return found


RECIPES = _recipes()


def test_every_family_has_recipes():
    for family in FAMILIES:
        assert any(r.startswith(family + "/") for r in RECIPES), family
    assert "COCO-Detection/mgd_faster_rcnn_R50_from_R101_FPN_2x.yaml" in RECIPES
    assert "COCO-InstanceSegmentation/distplus_mask_rcnn_R50_from_ViTDet_B_LSJ_1x.py" in RECIPES


@pytest.fixture(scope="module")
def tiny_datasets(datasets_root):
    write_tiny_coco(datasets_root)
    write_tiny_cityscapes(datasets_root)
    return datasets_root


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_and_every_term_gives_a_finite_nonzero_loss(
    recipe, tiny_datasets, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)  # teachers named relative to the working directory
    # Every generator the step draws from (the weights: torch; the crops, flips and the sampler's
    # seed: numpy and Python's), so that each recipe sees the same data in any test order.
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    path = os.path.join(REPO, "configs", recipe)
    if recipe.endswith(".py"):  # a LazyConfig recipe (ViTDet teacher: its 1024 px LSJ crops)
        # one image per iteration: the ViT-B teacher at 1024 px is most of this layer's time
        cfg = load_lazy_config(path, ["train.device=cpu", "dataloader.train.total_batch_size=1",
                                      "dataloader.train.num_workers=0"])  # fmt: skip
        losses = list(cfg.model.terms)
    else:
        cfg = get_cfg()
        cfg.merge_from_file(path)
        cfg.merge_from_list(["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2",
                             "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path)])  # fmt: skip
        if not cfg.INPUT.CROP.ENABLED or cfg.MODEL.SEM_SEG_HEAD.NAME == "SemSegFPNHead":
            cfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MAX_SIZE_TRAIN", "512",
                                 "INPUT.CROP.ENABLED", "False"])  # fmt: skip
        cfg.freeze()
        losses = [{"name": n} for n in cfg.MODEL.DISTILL.LOSSES]
    result = measure_loss_scale(cfg, iters=2, random_weights=True)
    assert set(result.weighted) >= {f"loss_distill_{t['name'].lower()}" for t in losses}
    assert result.degenerate() == [], result.unweighted
    for key, values in result.weighted.items():
        assert all(math.isfinite(v) and v != 0.0 for v in values), (recipe, key, values)
    assert all(math.isfinite(v) for v in result.student_total())
