"""Tests of the synthetic shapes dataset: generator, files on disk, registration, CLI."""

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

import d2dist  # noqa: F401  registers the built-in datasets
from d2dist.data import (
    CLASSES,
    ShapesSpec,
    ensure_generated,
    generate_shapes,
    register_shapes,
    shapes,
)

REPO = Path(__file__).resolve().parents[2]
SMALL = ShapesSpec(image_size=64, num_train=8, num_val=4, max_objects=6, max_size=30, distractors=3)
_ids = itertools.count()


def unique_name(prefix: str = "test_shapes") -> str:
    """A dataset name not used before in this process (the catalogs are global)."""
    return f"{prefix}_{os.getpid()}_{next(_ids)}"


def read_tree(path: Path) -> dict:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A small dataset generated once for the read-only tests."""
    return Path(generate_shapes(str(tmp_path_factory.mktemp("shapes")), SMALL, "small"))


def decode(ann: dict, height: int, width: int) -> np.ndarray:
    rles = mask_util.frPyObjects(ann["segmentation"], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_train=0), r"num_train=0 .*>= 1"),
        (dict(min_size=20, max_size=12), r"max_size=12 .*min_size=20"),
        (dict(image_size=64, max_size=64), r"max_size=64 .*image_size=64"),
        (dict(min_objects=3, max_objects=2), r"max_objects=2 .*min_objects=3"),
        (dict(min_visible=0.0), r"min_visible=0.0 .*\(0, 1\]"),
        (dict(min_visible=1.5), r"min_visible=1.5"),
        (dict(max_aspect=0.5), r"max_aspect=0.5 .*\[1, 10\]"),
        (dict(jpeg_quality=101), r"jpeg_quality=101"),
        (dict(num_val=2.5), r"num_val must be an integer"),
        (dict(lines=-1), r"lines=-1 .*>= 0"),
        (dict(textured=1), r"textured must be True or False"),
    ],
)
def test_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesSpec(**kwargs)


def test_spec_to_dict_roundtrip():
    spec = ShapesSpec(seed=3, max_aspect=2)
    assert isinstance(spec.max_aspect, float)
    assert ShapesSpec(**json.loads(json.dumps(spec.to_dict()))) == spec


# ---------------------------------------------------------------------------------------------
# Content
# ---------------------------------------------------------------------------------------------


def test_layout_and_manifest(small):
    manifest = json.loads((small / "manifest.json").read_text())
    assert manifest["generator_version"] == shapes.GENERATOR_VERSION
    assert manifest["spec"] == SMALL.to_dict()
    for split, n in (("train", SMALL.num_train), ("val", SMALL.num_val)):
        assert len(list((small / split).glob("*.jpg"))) == n
        assert len(list((small / "sem_seg" / split).glob("*.png"))) == n
        coco = json.loads((small / "annotations" / f"instances_{split}.json").read_text())
        assert manifest["splits"][split] == {"images": n, "instances": len(coco["annotations"])}
        assert coco["info"]["generator_version"] == shapes.GENERATOR_VERSION


def test_determinism(tmp_path, small):
    again = Path(generate_shapes(str(tmp_path), SMALL, "small"))
    assert read_tree(again) == read_tree(small)

    other = Path(generate_shapes(str(tmp_path), dataclasses.replace(SMALL, seed=1), "other"))
    for split in ("train", "val"):
        assert (other / split / "000001.jpg").read_bytes() != (
            small / split / "000001.jpg"
        ).read_bytes()
    # splits are drawn from different streams
    assert (small / "train" / "000001.jpg").read_bytes() != (
        small / "val" / "000001.jpg"
    ).read_bytes()


def test_render_image_is_reproducible_alone():
    a = shapes.render_image(SMALL, 0, 5)
    b = shapes.render_image(SMALL, 0, 5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


def test_untextured_objects_are_one_colour_and_lines_can_be_turned_off():
    plain = dataclasses.replace(SMALL, min_objects=1, max_objects=1, textured=False, lines=0)
    found = 0
    for index in range(6):
        image, label, objects = shapes.render_image(plain, 0, index)
        if objects:
            found += 1
            pixels = image[label > 0].astype(int)
            # one colour, plus the low-amplitude sensor noise (at most +-12 per channel)
            assert (pixels.max(0) - pixels.min(0) <= 24).all()
    assert found >= 4
    textured = dataclasses.replace(plain, textured=True)
    ranges = [
        np.ptp(img[lab > 0].astype(int), axis=0).max()
        for img, lab, objs in (shapes.render_image(textured, 0, i) for i in range(6))
        if objs
    ]
    assert max(ranges) > 24  # textures vary inside an object


def test_default_spec_renders_generator_version_1_images():
    """The knobs added later (textured, lines) leave the default images byte-identical."""
    image = shapes.render_image(ShapesSpec(), 1, 7)[0]
    digest = hashlib.sha256(image.tobytes()).hexdigest()
    assert digest == "65280474a4e9840259d49ceef9b290609cf876b0c3442565ddbf865690a9091d"


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_annotations(small, split):
    coco = COCO(str(small / "annotations" / f"instances_{split}.json"))
    assert sorted(coco.getCatIds()) == list(range(1, len(CLASSES) + 1))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    ann_ids = coco.getAnnIds()
    assert len(set(ann_ids)) == len(ann_ids)
    for img in coco.loadImgs(coco.getImgIds()):
        assert (img["height"], img["width"]) == (SMALL.image_size, SMALL.image_size)
        image = cv2.imread(str(small / split / img["file_name"]))
        assert image.shape == (SMALL.image_size, SMALL.image_size, 3)
    for ann in coco.loadAnns(ann_ids):
        assert ann["iscrowd"] == 0
        assert 1 <= ann["category_id"] <= len(CLASSES)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
        m = coco.annToMask(ann).astype(bool)
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0
        inside = np.zeros_like(m)
        inside[int(y) : int(y + h), int(x) : int(x + w)] = True
        assert not (m & ~inside).any(), "polygon mask leaves its bbox"
        assert abs(m.sum() - ann["area"]) <= max(2.0, 0.02 * ann["area"])
        assert ann["area"] >= 20


def test_coco_statistics(small):
    coco = COCO(str(small / "annotations" / "instances_train.json"))
    per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
    assert max(per_image) >= 2
    classes = {a["category_id"] for a in coco.loadAnns(coco.getAnnIds())}
    assert len(classes) >= 4


@pytest.mark.parametrize("split", ["train", "val"])
def test_semantic_labels_match_instances(small, split):
    coco = json.loads((small / "annotations" / f"instances_{split}.json").read_text())
    by_image = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    kernel = np.ones((3, 3), np.uint8)
    for img in coco["images"]:
        stem = os.path.splitext(img["file_name"])[0]
        label = cv2.imread(str(small / "sem_seg" / split / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert label.dtype == np.uint8 and label.shape == (img["height"], img["width"])
        assert label.max() <= len(CLASSES)
        union = np.zeros(label.shape, bool)
        for ann in by_image[img["id"]]:
            m = decode(ann, img["height"], img["width"])
            union |= m
            interior = cv2.erode(m.astype(np.uint8), kernel).astype(bool)
            if interior.any():
                agree = (label[interior] == ann["category_id"]).mean()
                assert agree >= 0.95, f"{split}/{stem}: instance {ann['id']} agrees {agree:.2f}"
        # the label is the union of the visible masks: anything else is background
        interior_bg = cv2.erode((~union).astype(np.uint8), kernel).astype(bool)
        assert (label[interior_bg] == 0).mean() >= 0.95


# ---------------------------------------------------------------------------------------------
# Writing to disk
# ---------------------------------------------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch, error):
    real_write = shapes._write_image
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(args[0])
        if len(calls) > 5:
            raise error("interrupted")
        real_write(*args, **kwargs)

    monkeypatch.setattr(shapes, "_write_image", failing_write)
    with pytest.raises(error):
        generate_shapes(str(tmp_path), SMALL, "ds")
    assert os.listdir(tmp_path) == []  # neither ds/ nor a temporary directory

    monkeypatch.setattr(shapes, "_write_image", real_write)
    path = Path(generate_shapes(str(tmp_path), SMALL, "ds"))
    assert os.listdir(tmp_path) == ["ds"]
    assert len(list((path / "train").glob("*.jpg"))) == SMALL.num_train


def test_second_call_does_not_rewrite(tmp_path, monkeypatch):
    path = Path(generate_shapes(str(tmp_path), SMALL, "ds"))
    stamps = {
        p: p.stat().st_mtime_ns for p in (path / "manifest.json", path / "train" / "000001.jpg")
    }

    def fail(*args, **kwargs):
        raise AssertionError("regenerated an up-to-date dataset")

    monkeypatch.setattr(shapes, "_write_dataset", fail)
    assert generate_shapes(str(tmp_path), SMALL, "ds") == str(path)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.parametrize(
    "manifest, reason",
    [
        (None, "no readable manifest"),
        ({"generator_version": 0, "spec": SMALL.to_dict()}, "generator version 0"),
        (
            {"generator_version": shapes.GENERATOR_VERSION, "spec": {**SMALL.to_dict(), "seed": 7}},
            "seed: 7 -> 0",
        ),
    ],
)
def test_stale_directory_is_replaced(tmp_path, caplog, manifest, reason):
    stale = tmp_path / "ds"
    stale.mkdir()
    (stale / "junk.txt").write_text("old")
    if manifest is not None:
        (stale / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger=shapes.__name__):
        path = Path(generate_shapes(str(tmp_path), SMALL, "ds"))
    assert reason in caplog.text
    assert not (path / "junk.txt").exists()
    assert json.loads((path / "manifest.json").read_text())["spec"] == SMALL.to_dict()
    assert os.listdir(tmp_path) == ["ds"]


def test_concurrent_winner_is_kept(tmp_path, monkeypatch):
    """If another process completes the same dataset first, ours is discarded and theirs used."""
    real = shapes._write_dataset

    def write_and_lose_the_race(out, spec, name):
        manifest = real(out, spec, name)
        theirs = tmp_path / name
        theirs.mkdir()
        (theirs / "manifest.json").write_text(json.dumps(manifest))
        (theirs / "theirs.txt").write_text("")
        return manifest

    monkeypatch.setattr(shapes, "_write_dataset", write_and_lose_the_race)
    path = Path(generate_shapes(str(tmp_path), SMALL, "ds"))
    assert (path / "theirs.txt").exists()
    assert os.listdir(tmp_path) == ["ds"]


def test_unwritable_root(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    root = blocker / "datasets"  # under a regular file: fails even for root
    with pytest.raises(OSError, match=r"(?s)a_file/datasets.*DETECTRON2_DATASETS"):
        generate_shapes(str(root), SMALL, "ds")


def test_invalid_arguments(tmp_path):
    with pytest.raises(TypeError, match="ShapesSpec"):
        generate_shapes(str(tmp_path), SMALL.to_dict(), "ds")
    with pytest.raises(ValueError, match="invalid dataset name"):
        generate_shapes(str(tmp_path), SMALL, "a/b")


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------


def test_builtin_datasets_are_registered():
    registered = DatasetCatalog.list()
    for base in ("d2dist_shapes", "d2dist_shapes_tiny"):
        for suffix in ("train", "val", "train_sem_seg", "val_sem_seg"):
            assert f"{base}_{suffix}" in registered
    meta = MetadataCatalog.get("d2dist_shapes_train")
    assert meta.thing_classes == list(CLASSES)
    assert meta.evaluator_type == "coco"
    assert MetadataCatalog.get("d2dist_shapes_val_sem_seg").evaluator_type == "sem_seg"


def test_register_and_load(tmp_path):
    name = unique_name()
    register_shapes(name, str(tmp_path), SMALL)
    assert not (tmp_path / name).exists(), "registration must not generate"
    register_shapes(name, str(tmp_path), SMALL)  # identical: no-op

    dicts = DatasetCatalog.get(f"{name}_train")
    assert len(dicts) == SMALL.num_train
    n_anns = 0
    for d in dicts:
        assert os.path.isfile(d["file_name"])
        assert (d["height"], d["width"]) == (SMALL.image_size, SMALL.image_size)
        for ann in d["annotations"]:
            n_anns += 1
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= ann["category_id"] < len(CLASSES)
            assert isinstance(ann["segmentation"], list) and len(ann["segmentation"][0]) >= 6
    assert n_anns > 0

    meta = MetadataCatalog.get(f"{name}_val")
    assert meta.thing_classes == list(CLASSES)
    assert len(meta.thing_colors) == len(CLASSES)
    assert len({tuple(c) for c in meta.thing_colors}) == len(CLASSES)
    assert meta.evaluator_type == "coco"
    assert os.path.isfile(meta.json_file) and os.path.isdir(meta.image_root)
    assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(len(CLASSES))}

    sem = DatasetCatalog.get(f"{name}_val_sem_seg")
    assert len(sem) == SMALL.num_val
    for d in sem:
        assert os.path.isfile(d["file_name"]) and os.path.isfile(d["sem_seg_file_name"])
    meta = MetadataCatalog.get(f"{name}_val_sem_seg")
    assert meta.stuff_classes == ["background", *CLASSES]
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    assert os.path.isdir(meta.sem_seg_root) and os.path.isdir(meta.image_root)


def test_reregistration_conflicts(tmp_path):
    name = unique_name()
    register_shapes(name, str(tmp_path), SMALL)
    with pytest.raises(ValueError, match=f"{name}.*already registered"):
        register_shapes(name, str(tmp_path), dataclasses.replace(SMALL, seed=1))
    with pytest.raises(ValueError, match="already registered"):
        register_shapes(name, str(tmp_path / "elsewhere"), SMALL)

    foreign = unique_name()
    DatasetCatalog.register(f"{foreign}_val_sem_seg", lambda: [])
    with pytest.raises(AssertionError, match="already registered"):
        register_shapes(foreign, str(tmp_path), SMALL)
    assert f"{foreign}_train" not in DatasetCatalog  # nothing half-registered


def test_ensure_generated(tmp_path):
    name = unique_name()
    register_shapes(name, str(tmp_path), SMALL)
    ensure_generated("coco_2017_val")  # not ours: nothing happens
    assert not (tmp_path / name).exists()
    ensure_generated(f"{name}_val")
    assert os.path.isfile(MetadataCatalog.get(f"{name}_val").json_file)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_prepare_shapes_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "prepare_shapes", REPO / "datasets" / "prepare_shapes.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    assert cli.main(["--root", str(tmp_path), "--tiny", "--num-train", "3", "--name", "cli"]) == 0
    out = capsys.readouterr().out
    assert "cli" in out and "train: 3 images" in out
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert manifest["spec"]["image_size"] == 64 and manifest["spec"]["num_train"] == 3

    assert cli.main(["--root", str(tmp_path), "--num-train", "0", "--name", "bad"]) == 2
    assert "num_train" in capsys.readouterr().err
