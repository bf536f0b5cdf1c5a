"""Datasets of unlabeled images: registration, loading, checks, the share of unlabeled images in
a batch (d2dist.data.unlabeled) and the --image-folder option of both entry points."""

import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from d2dist.data import (
    checked_dataset_dicts,
    is_unlabeled,
    load_image_folder,
    register_image_folder,
    repeat_factors_for_fraction,
)
from d2dist.engine.defaults import argument_parser, load_config
from d2dist.engine.lazy import lazy_argument_parser
from d2dist.errors import ConfigError, DataError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_images(folder, n=3, size=64):
    os.makedirs(os.path.join(folder, "sub"), exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        name = os.path.join(
            folder, "sub" if i == n - 1 else "", f"im{i}.{'png' if i % 2 else 'jpg'}"
        )
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(name)
        paths.append(name)
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image")
    return sorted(paths)


def test_a_folder_loads_as_records_without_annotations(tmp_path):
    paths = write_images(str(tmp_path))
    records = load_image_folder(str(tmp_path))
    assert [r["file_name"] for r in records] == paths  # sorted, sub-folders, no .txt
    assert [r["image_id"] for r in records] == [0, 1, 2]
    assert all("annotations" not in r for r in records)


@pytest.mark.parametrize("layout, message", [("missing", "does not exist"),
                                             ("empty", "it is empty"),
                                             ("text", r"holds no image \(it holds 1 other")])  # fmt: skip
def test_a_folder_without_images_is_refused(tmp_path, layout, message):
    folder = tmp_path / "f"
    if layout != "missing":
        folder.mkdir()
    if layout == "text":
        (folder / "a.txt").write_text("x")
    with pytest.raises(DataError, match=message):
        load_image_folder(str(folder), "mine")


def test_register_image_folder_marks_it_unlabeled_and_refuses_other_uses_of_the_name(tmp_path):
    write_images(str(tmp_path))
    register_image_folder("test_unlabeled_reg", str(tmp_path), {"thing_classes": ["a", "b"]})
    register_image_folder("test_unlabeled_reg", str(tmp_path))  # the same again: nothing
    assert is_unlabeled("test_unlabeled_reg") and not is_unlabeled("d2dist_shapes_tiny_train")
    assert MetadataCatalog.get("test_unlabeled_reg").thing_classes == ["a", "b"]
    assert len(DatasetCatalog.get("test_unlabeled_reg")) == 3
    with pytest.raises(ConfigError, match="registered already"):
        register_image_folder("test_unlabeled_reg", str(tmp_path / "sub"))
    with pytest.raises(ConfigError, match="registered already"):
        register_image_folder("d2dist_shapes_tiny_train", str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        register_image_folder("test_unlabeled_nowhere", str(tmp_path / "nowhere"))


def test_labeled_and_unlabeled_datasets_join_with_only_the_labeled_ones_filtered(tmp_path):
    write_images(str(tmp_path))
    register_image_folder("test_unlabeled_join", str(tmp_path))
    labeled = checked_dataset_dicts(["d2dist_shapes_tiny_train"])
    for names in (["d2dist_shapes_tiny_train", "test_unlabeled_join"],
                  ["test_unlabeled_join", "d2dist_shapes_tiny_train"]):  # fmt: skip
        dicts = checked_dataset_dicts(names, key="DATASETS.TRAIN")  # Detectron2's alone: KeyError
        assert len(dicts) == len(labeled) + 3
        assert sum("annotations" not in d for d in dicts) == 3


def test_the_built_in_unlabeled_images_are_new_images_with_their_labels_withheld():
    records = DatasetCatalog.get("d2dist_shapes_unlabeled")
    assert len(records) == 4000 and all("annotations" not in r for r in records)
    train = {os.path.basename(r["file_name"]) for r in DatasetCatalog.get("d2dist_shapes_train")}
    first = Image.open(records[0]["file_name"])
    labeled = Image.open(DatasetCatalog.get("d2dist_shapes_train")[0]["file_name"])
    assert len(train) == 1000 and first.size == labeled.size == (64, 64)
    assert not np.array_equal(np.asarray(first), np.asarray(labeled))  # another seed


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.9])
def test_repeat_factors_give_the_fraction_of_unlabeled_images(fraction):
    sizes = [("a", 1000, False), ("u", 4000, True), ("b", 500, False)]
    factors = dict(repeat_factors_for_fraction(sizes, fraction))
    drawn = {n: k * factors[n] for n, k, _ in sizes}
    assert drawn["u"] / sum(drawn.values()) == pytest.approx(fraction, rel=1e-5)
    assert min(factors.values()) == 1.0 and factors["a"] == factors["b"]


@pytest.mark.parametrize("sizes, fraction, message", [
    ([("a", 10, False), ("u", 10, True)], 1.0, "strictly between 0 and 1"),
    ([("a", 10, False), ("u", 10, True)], 0.0, "strictly between 0 and 1"),
    ([("a", 10, False)], 0.5, "only one kind"),
])  # fmt: skip
def test_repeat_factors_refuse_what_cannot_be_done(sizes, fraction, message):
    with pytest.raises(ConfigError, match=message):
        repeat_factors_for_fraction(sizes, fraction)


def test_the_repeat_factor_key_is_declared_for_config_files():
    cfg = load_config(
        os.path.join(
            REPO, "configs/Shapes-Detection/pkd_faster_rcnn_R18_from_R50_FPN_online_labels_1x.yaml"
        ),
        ["MODEL.DEVICE", "cpu"],
    )
    assert dict(cfg.DATASETS.TRAIN_REPEAT_FACTOR) == {"d2dist_shapes_train": 4.0,
                                                      "d2dist_shapes_unlabeled": 1.0}  # fmt: skip
    assert cfg.MODEL.DISTILL.TEACHER_LABELS.SCORE_THRESHOLD == 0.3


@pytest.mark.parametrize("parser", [argument_parser, lazy_argument_parser])
def test_both_entry_points_take_image_folders(parser):
    args = parser().parse_args(["--image-folder", "a", "/x", "--image-folder", "b", "/y"])
    assert args.image_folder == [["a", "/x"], ["b", "/y"]]


def test_load_config_registers_image_folders_before_checking_the_datasets(tmp_path):
    write_images(str(tmp_path))
    cfg = load_config(
        os.path.join(REPO, "configs/Shapes-Detection/faster_rcnn_R18_FPN_1x.yaml"),
        ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('test_unlabeled_cli',)"],
        image_folders=[("test_unlabeled_cli", str(tmp_path))],
    )
    assert cfg.DATASETS.TRAIN == ("test_unlabeled_cli",) and is_unlabeled("test_unlabeled_cli")
