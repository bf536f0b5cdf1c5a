"""Tests of d2dist.data.checks (and its config side, d2dist.engine.data_checks): every policy of
the datasets' checks on tiny datasets written here, the summary of dropped boxes and its limit."""

import json
import logging
import os
import types

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from omegaconf import OmegaConf
from PIL import Image

from d2dist.config import get_cfg
from d2dist.data import checks
from d2dist.data.checks import (
    check_dataset_dicts,
    check_image_files,
    check_num_classes,
    check_same_classes,
    checked_dataset_dicts,
    coco_json_faults,
    dataset_classes,
    register_coco_format,
)
from d2dist.engine import data_checks
from d2dist.errors import ConfigError, DataError

W, H = 64, 48
CLASSES3 = ["a", "b", "c"]
XYWH = BoxMode.XYWH_ABS


def _register(name, records=(), **meta):
    """Register (again) a dataset returning ``records``, with metadata ``meta``."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(**meta)
    return name


def _jpeg(path, size=(W, H), seed=0, exif=None):
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if exif is None:
        image.save(path, "JPEG")
    else:
        image.save(path, "JPEG", exif=exif)
    return str(path)


def _ann(box, cat=0, mode=XYWH, **extra):
    return {"bbox": box, "bbox_mode": mode, "category_id": cat, "iscrowd": 0, **extra}


def _record(tmp_path, i, anns, **extra):
    path = tmp_path / f"{i}.jpg"
    if not path.exists():
        _jpeg(path, seed=i)
    return {"file_name": str(path), "image_id": i, "height": H, "width": W,
            "annotations": anns, **extra}  # fmt: skip


@pytest.fixture
def three(tmp_path):
    """A dataset of 3 classes; ``records(n)`` makes n images with one good box each."""
    name = _register("checks_three", thing_classes=CLASSES3, json_file=str(tmp_path / "x.json"))

    def records(n=4):
        return [
            _record(tmp_path, i, [_ann([4, 4, 20, 10], cat=i % 3, id=100 + i)]) for i in range(n)
        ]

    return name, records


# ---- refused -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ann, message",
    [
        (_ann([1, 2, 3, 4], cat=3),
         r"category_id=3 is not among the dataset's 3 classes \(0-2: \['a'"),
        (_ann([1, 2, 3, 4], cat=-1), r"category_id=-1 is not a class index"),
        (_ann([1, 2, 3, 4], cat=1.0), r"category_id=1.0 is not a class index"),
        (_ann([1, 2, 3]), r"bbox=\[1, 2, 3\] is not four finite numbers"),
        (_ann([1, 2, float("nan"), 4]), r"bbox=\[1, 2, nan, 4\] is not four finite numbers"),
        (_ann(["1", 2, 3, 4]), r"is not four finite numbers"),
        (_ann([1, 2, 3, 4], mode=BoxMode.XYXY_REL), r"bbox_mode=<BoxMode.XYXY_REL: 2>"),
        (_ann([10, 2, -3, 4]), r"bbox=\[10, 2, -3, 4\] \(XYWH_ABS\) has a negative width or "
                               r"height \(-3 x 4\); d2dist does not mirror it"),
        (_ann([10, 2, 5, 8], mode=BoxMode.XYXY_ABS), r"\(XYXY_ABS\) has a negative width"),
        (_ann([1, 2, 3, 4], segmentation=[[1, 2, 3, 4, 5]]), r"polygon #0 \(5 values\) is not"),
        (_ann([1, 2, 3, 4], segmentation=[[1, 2, 3, 4]]), r"polygon #0 \(4 values\) .*3 points"),
        (_ann([1, 2, 3, 4], segmentation={"counts": "x", "size": [9, 9]}),
         r"RLE segmentation is of size \[9, 9\], the image \[48, 64\]"),
        (_ann([1, 2, 3, 4], segmentation={"size": [H, W]}), r"an RLE needs 'counts' and 'size'"),
        (_ann([1, 2, 3, 4], segmentation="poly"), r"its segmentation is a str"),
    ],
)  # fmt: skip
def test_faults_are_refused_with_the_dataset_file_image_and_annotation(three, ann, message):
    name, records = three
    dicts = records()
    dicts[2]["annotations"].append({**ann, "id": 7})
    with pytest.raises(DataError, match=message) as e:
        check_dataset_dicts(dicts, name)
    where = f"dataset 'checks_three' ({MetadataCatalog.get(name).json_file}): image id 2 ("
    assert str(e.value).startswith(where), str(e.value)
    assert "2.jpg), annotation #1 (id 7): " in str(e.value)


def test_records_without_file_name_or_with_bad_sizes_are_refused(three):
    name, records = three
    dicts = records()
    del dicts[1]["file_name"]
    with pytest.raises(DataError, match=r"record #1 has no 'file_name' \(it has \['annotations'"):
        check_dataset_dicts(dicts, name)
    dicts = records()
    dicts[0]["height"] = 0
    with pytest.raises(DataError, match=r"image id 0 .*: height=0 is not a positive integer"):
        check_dataset_dicts(dicts, name)


def test_images_are_checked_from_their_headers(three, tmp_path):
    name, records = three
    dicts = records()
    os.remove(dicts[0]["file_name"])
    (tmp_path / "1.jpg").write_bytes(b"junk")
    Image.fromarray(np.zeros((H, W), np.uint16)).save(tmp_path / "2.png")
    dicts[2]["file_name"] = str(tmp_path / "2.png")
    _jpeg(tmp_path / "3.jpg", size=(W, W))
    with pytest.raises(DataError) as e:
        check_dataset_dicts(dicts, name)
    message = str(e.value)
    assert "image id 0 (" in message and "0.jpg): the image file does not exist" in message
    assert "1.jpg): the image file cannot be read as an image (UnidentifiedImageError" in message
    assert "2.png): the image is of PIL mode 'I;16' (more than 8 bits" in message
    assert "3.jpg): the image is 64x64 (width x height), but its record says 64x48" in message
    # without the image check, the same records pass
    assert len(check_dataset_dicts(dicts, name, check_images=False)) == 4


def test_grey_palette_and_rotated_images_are_accepted(three, tmp_path):
    name, records = three
    dicts = records(3)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "0.png")  # grey: 3 equal channels
    dicts[0]["file_name"] = str(tmp_path / "0.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).convert("P").save(tmp_path / "1.png")
    dicts[1]["file_name"] = str(tmp_path / "1.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 48x64, shown (and read by Detectron2) rotated: 64x48
    dicts[2]["file_name"] = _jpeg(tmp_path / "rotated.jpg", size=(H, W), exif=exif)
    assert check_dataset_dicts(dicts, name) == dicts


def test_semantic_labels_are_one_channel_of_ids_of_the_image_size(tmp_path):
    name = _register("checks_sem_seg", stuff_classes=CLASSES3)
    image = _jpeg(tmp_path / "im.jpg")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "ok.png")
    ok = [{"file_name": image, "sem_seg_file_name": str(tmp_path / "ok.png")}]
    assert check_dataset_dicts(ok, name, training=False) == ok
    bad = {
        "colour.png": (np.zeros((H, W, 3), np.uint8), r"are of PIL mode 'RGB'; Detectron2 reads"),
        "small.png": (np.zeros((H // 2, W), np.uint8), r"are 64x24, the image 64x48"),
    }
    for file, (pixels, message) in bad.items():
        Image.fromarray(pixels).save(tmp_path / file)
        records = [{"file_name": image, "sem_seg_file_name": str(tmp_path / file)}]
        with pytest.raises(DataError, match=message):
            check_dataset_dicts(records, name)
    palette = Image.fromarray(np.zeros((H, W), np.uint8)).convert("P")
    palette.putpalette([255, 0, 0] * 256)
    palette.save(tmp_path / "palette.png")
    records = [{"file_name": image, "sem_seg_file_name": str(tmp_path / "palette.png")}]
    with pytest.raises(DataError, match=r"of PIL mode 'P \(a colour palette\)'"):
        check_dataset_dicts(records, name)


# ---- dropped, counted, limited -----------------------------------------------------------------
def _outside(tmp_path, n_good, n_out, n_zero=0):
    anns = [_ann([4, 4, 20, 10], id=i) for i in range(n_good)]
    anns += [_ann([W + 5, 4, 20, 10], id=1000 + i) for i in range(n_out)]
    anns += [_ann([4, 4, 0, 10], id=2000 + i) for i in range(n_zero)]
    return [_record(tmp_path, 0, anns)]


def test_boxes_outside_or_of_zero_size_are_dropped_and_counted(three, tmp_path, caplog):
    name, _ = three
    dicts = _outside(tmp_path, n_good=98, n_out=1, n_zero=1)
    before = [dict(a) for a in dicts[0]["annotations"]]
    with caplog.at_level(logging.WARNING, logger="d2dist.data.checks"):
        out = check_dataset_dicts(dicts, name, max_dropped=0.05)
    assert [a["id"] for a in out[0]["annotations"]] == list(range(98))
    assert dicts[0]["annotations"] == before  # the input is not changed
    summary = caplog.text
    assert (
        "2 of its 100 boxes (2.0%) cannot be trained on (1 entirely outside the 64x48 image, "
        "1 zero width or height)" in summary
    )
    assert "annotation #98 (id 1000) bbox=[69, 4, 20, 10]: entirely outside" in summary
    assert "dropped before training; at most 5% may be (D2DIST_MAX_DROPPED)" in summary
    # a test set keeps them (its evaluator reads its own ground truth), counted the same
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="d2dist.data.checks"):
        out = check_dataset_dicts(dicts, name, training=False, max_dropped=0.05)
    assert out == dicts and "kept (the evaluator reads its own files)" in caplog.text


def test_boxes_partly_outside_are_kept_for_detectron2_to_clip(three, tmp_path, caplog):
    name, _ = three
    dicts = [_record(tmp_path, 0, [_ann([-5, 40, 20, 20]), _ann([4, 4, 20, 10])])]
    with caplog.at_level(logging.INFO, logger="d2dist.data.checks"):
        assert check_dataset_dicts(dicts, name) == dicts
    assert (
        "1 of 2 boxes lie partly outside their image; Detectron2's transforms clip" in caplog.text
    )


def test_more_dropped_boxes_than_the_limit_are_refused(three, tmp_path, monkeypatch):
    name, _ = three
    dicts = _outside(tmp_path, n_good=90, n_out=10)
    with pytest.raises(
        DataError,
        match=r"10 of its 100 boxes \(10.0%\) .*more than d2dist "
        r"drops \(1% .*D2DIST_MAX_DROPPED=FRACTION \(e.g. 0.1\)",
    ):
        check_dataset_dicts(dicts, name)
    monkeypatch.setenv("D2DIST_MAX_DROPPED", "0.1")
    assert len(check_dataset_dicts(dicts, name)[0]["annotations"]) == 90
    monkeypatch.setenv("D2DIST_MAX_DROPPED", "lots")
    with pytest.raises(ConfigError, match=r"D2DIST_MAX_DROPPED='lots': expected a fraction"):
        check_dataset_dicts(dicts, name)


def test_a_training_set_left_without_boxes_is_refused(three, tmp_path):
    name, _ = three
    dicts = _outside(tmp_path, n_good=0, n_out=3)
    with pytest.raises(DataError, match=r"3 of its 3 boxes .*No box of the training set is left"):
        check_dataset_dicts(dicts, name, max_dropped=1.0)


# ---- test sets -----------------------------------------------------------------------------
def test_a_test_set_without_annotations_cannot_be_scored(three, tmp_path):
    name, records = three
    dicts = [dict(r, annotations=[]) for r in records()]
    assert check_dataset_dicts(dicts, name, training=True) == dicts  # filtered later, not here
    with pytest.raises(ConfigError, match=r"the test set 'checks_three' has no annotations"):
        check_dataset_dicts(dicts, name, training=False)


def test_a_coco_image_info_file_is_not_scored_but_accepted(tmp_path, caplog):
    info = tmp_path / "image_info.json"
    _jpeg(tmp_path / "1.jpg")
    info.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.jpg", "height": H,
                                            "width": W}], "categories": []}))  # fmt: skip
    name = _register("checks_info", json_file=str(info), evaluator_type="coco")
    dicts = [{"file_name": str(tmp_path / "1.jpg"), "image_id": 1, "height": H, "width": W,
              "annotations": []}]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="d2dist.data.checks"):
        assert check_dataset_dicts(dicts, name, training=False) == dicts
    assert "has no annotations (an image-info file)" in caplog.text


# ---- COCO-format files ---------------------------------------------------------------------
def _coco_file(tmp_path, edit=None):
    images, anns = [], []
    for i in range(1, 4):
        _jpeg(tmp_path / f"{i}.jpg", seed=i)
        images.append({"id": i, "file_name": f"{i}.jpg", "height": H, "width": W})
        anns.append({"id": 10 + i, "image_id": i, "category_id": 1 + i % 2, "bbox": [4, 4, 20, 10],
                     "area": 200, "iscrowd": 0})  # fmt: skip
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}  # fmt: skip
    text = edit(data) if edit else None
    path = tmp_path / "instances.json"
    path.write_text(text if isinstance(text, str) else json.dumps(data))
    return str(path)


def _registered_coco(name, tmp_path, edit=None):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_format(name, _coco_file(tmp_path, edit), str(tmp_path))
    return name


def test_a_coco_format_dataset_keeps_annotation_ids_and_its_classes(tmp_path):
    name = _registered_coco("checks_coco", tmp_path)
    assert dataset_classes(name, "thing_classes") == ["cat", "dog"]  # from the file, not loaded
    dicts = checked_dataset_dicts([name], key="DATASETS.TRAIN")
    assert [a["id"] for d in dicts for a in d["annotations"]] == [11, 12, 13]
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "coco" and meta.thing_classes == ["cat", "dog"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: json.dumps(d)[:100], r"instances.json is not valid JSON: .* at line 1, column"),
        (lambda d: d["images"][1].pop("file_name") and None,
         r"\(KeyError: 'file_name'\): .*instances.json: images\[1\] \(id 2\) has no 'file_name'"),
        (lambda d: d["annotations"][2].update(category_id=7),
         r"annotations\[2\] \(id 13, image_id 3\) has category_id=7, which is not among the "
         r"file's categories \(ids \[1, 2\]\)"),
        (lambda d: d["annotations"][2].update(id=11),
         r"annotations\[2\] \(id 11, image_id 3\): another annotation has this id"),
    ],
)  # fmt: skip
def test_a_coco_file_that_cannot_be_loaded_is_named_with_the_entry(tmp_path, edit, message):
    name = _registered_coco("checks_coco_bad", tmp_path, edit)
    with pytest.raises(
        DataError, match=rf"dataset 'checks_coco_bad': .*instances.json .*{message}"
    ):
        DatasetCatalog.get(name)
    # a dataset of Detectron2's own registration: the same explanation, when d2dist loads it
    other = _register("checks_coco_plain", json_file=MetadataCatalog.get(name).json_file,
                      evaluator_type="coco")  # fmt: skip
    DatasetCatalog.remove(other)
    from detectron2.data.datasets import load_coco_json

    path = MetadataCatalog.get(name).json_file
    DatasetCatalog.register(other, lambda: load_coco_json(path, str(tmp_path), other))
    with pytest.raises(DataError, match=r"dataset 'checks_coco_plain' \(.*\) cannot be loaded"):
        checked_dataset_dicts([other])


def test_coco_json_faults_finds_nothing_in_a_good_file(tmp_path):
    assert coco_json_faults(_coco_file(tmp_path)) == []


def test_a_bug_in_a_loader_keeps_its_traceback(tmp_path):
    name = _register("checks_buggy", json_file=_coco_file(tmp_path))
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: {}["a bug"])
    with pytest.raises(KeyError, match="a bug"):  # the file is fine: not explained away
        checked_dataset_dicts([name])


# ---- loading as Detectron2's get_detection_dataset_dicts -----------------------------------
def test_loading_filters_like_detectron2_and_checks_only_the_images_used(three, tmp_path):
    name, records = three
    dicts = records(3) + [_record(tmp_path, 5, [])]
    os.remove(dicts[-1]["file_name"])  # filtered out (no annotations): never read, not checked
    _register(name, dicts, thing_classes=CLASSES3)
    out = checked_dataset_dicts([name], key="DATASETS.TRAIN")
    assert [d["image_id"] for d in out] == [0, 1, 2]
    with pytest.raises(DataError, match="5.jpg\\): the image file does not exist"):
        checked_dataset_dicts([name], filter_empty=False)
    per = checked_dataset_dicts([name, name], per_dataset=True)  # twice: sampled twice as often
    assert [(n, len(d)) for n, d in per] == [(name, 3), (name, 3)]
    assert len(checked_dataset_dicts([name, name])) == 6


def test_an_empty_dataset_and_one_without_annotations_name_the_key(tmp_path):
    empty = _register("checks_empty", [])
    with pytest.raises(
        ConfigError,
        match=r"DATASETS.TRAIN=\('checks_empty',\) gives no training "
        r"images: dataset 'checks_empty' is empty",
    ):
        checked_dataset_dicts([empty], key="DATASETS.TRAIN")
    bare = _register("checks_bare", [{"file_name": "x.jpg", "annotations": []}])
    with pytest.raises(ConfigError, match=r"no image has usable annotations, and F=True drops"):
        checked_dataset_dicts([bare], filter_key="F")


def test_training_sets_of_other_classes_are_refused(three, tmp_path):
    name, records = three
    _register(name, records(), thing_classes=CLASSES3)
    other = _register("checks_other", records(), thing_classes=["a", "c", "b"])
    with pytest.raises(
        ConfigError,
        match=r"K 'checks_three' and K 'checks_other' have different "
        r"thing_classes \(class 1 is 'b' in the one, 'c'",
    ):
        checked_dataset_dicts([name, other], key="K")


# ---- Cityscapes folders --------------------------------------------------------------------
def _cityscapes(tmp_path, name, kind="cityscapes_sem_seg"):
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
    from detectron2.data.datasets.cityscapes import (
        load_cityscapes_instances,
        load_cityscapes_semantic,
    )

    images, gt = tmp_path / "leftImg8bit" / "val", tmp_path / "gtFine" / "val"
    for city in ("aachen", "bonn"):
        (images / city).mkdir(parents=True)
        (gt / city).mkdir(parents=True)
        stem = f"{city}_000000_000019"
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
            images / city / f"{stem}_leftImg8bit.png"
        )
        car = {"label": "car", "polygon": [[4, 4], [30, 4], [30, 20], [4, 20]]}
        (gt / city / f"{stem}_gtFine_polygons.json").write_text(
            json.dumps({"imgHeight": H, "imgWidth": W, "objects": [car]})
        )
        for suffix in ("labelIds", "instanceIds", "labelTrainIds"):
            Image.fromarray(np.zeros((H, W), np.uint8)).save(
                gt / city / f"{stem}_gtFine_{suffix}.png"
            )
    load = load_cityscapes_semantic if kind == "cityscapes_sem_seg" else load_cityscapes_instances
    _register(name, image_dir=str(images), gt_dir=str(gt), evaluator_type=kind,
              **_get_builtin_metadata("cityscapes"))  # fmt: skip
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load(str(images), str(gt)))
    return name, images, gt


def test_a_cityscapes_layout_is_checked_before_detectron2_reads_it(tmp_path):
    name, images, gt = _cityscapes(tmp_path, "checks_cityscapes")
    assert len(checked_dataset_dicts([name], training=False)) == 2
    os.remove(gt / "bonn" / "bonn_000000_000019_gtFine_labelIds.png")  # what its evaluator reads
    with pytest.raises(
        DataError,
        match=r"1 ground-truth file\(s\) of its 2 images are missing: "
        r".*bonn_000000_000019_gtFine_labelIds.png. Restore them",
    ):
        checked_dataset_dicts([name], training=False)
    os.remove(gt / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png")
    with pytest.raises(
        DataError,
        match=r"aachen_000000_000019_gtFine_labelTrainIds.png.*"
        r"CITYSCAPES_DATASET=/path/to/cityscapes python -m "
        r"cityscapesscripts.preparation.createTrainIdLabelImgs",
    ):
        checked_dataset_dicts([name])
    (images / "aachen" / "notes.txt").write_text("")
    with pytest.raises(DataError, match=r"notes.txt in the image folder do not end in "):
        checked_dataset_dicts([name])
    os.rename(gt, tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"its ground-truth split folder .*gtFine/val does not "):
        checked_dataset_dicts([name])


@pytest.mark.parametrize("kind", ["cityscapes_sem_seg", "cityscapes_instance"])
def test_a_corrupt_cityscapes_polygons_file_is_named(tmp_path, kind):
    name, images, gt = _cityscapes(tmp_path, f"checks_cityscapes_{kind}", kind)
    path = gt / "bonn" / "bonn_000000_000019_gtFine_polygons.json"
    path.write_text('{"imgHeight": 48, "imgWid')
    with pytest.raises(
        DataError,
        match=r"cannot be loaded \(JSONDecodeError.*bonn_000000_000019"
        r"_gtFine_polygons.json is not valid JSON",
    ):
        checked_dataset_dicts([name])
    if kind == "cityscapes_sem_seg":
        return  # its loader reads the image size alone from the polygons file
    path.write_text(
        json.dumps(
            {
                "imgHeight": H,
                "imgWidth": W,
                "objects": [{"label": "spaceship", "polygon": [[1, 2]]}],
            }
        )
    )
    with pytest.raises(
        DataError,
        match=r"objects\[0\] \(label 'spaceship'\) needs a Cityscapes "
        r"label and a polygon of at least 3",
    ):
        checked_dataset_dicts([name])


# ---- classes -------------------------------------------------------------------------------
def test_class_names_and_counts_are_compared(three):
    name, records = three
    _register("checks_same", thing_classes=list(CLASSES3))
    _register("checks_more", thing_classes=CLASSES3 + ["d"])
    _register("checks_unknown")
    check_same_classes([("T", name), ("V", "checks_same"), ("V", "checks_unknown")])
    with pytest.raises(
        ConfigError,
        match=r"T 'checks_three' and V 'checks_more' have different "
        r"thing_classes \(3 classes vs 4\)",
    ):
        check_same_classes([("T", name), ("V", "checks_more")])
    heads = [("MODEL.ROI_HEADS.NUM_CLASSES", 3, "thing_classes")]
    check_num_classes(heads, [("T", name), ("T", "checks_unknown")])
    with pytest.raises(
        ConfigError,
        match=r"NUM_CLASSES=3 \(the student's\) is below the 4 "
        r"classes of V 'checks_more'.*classes 3-3 would be past",
    ):
        check_num_classes(heads, [("V", "checks_more")], "the student's")


def test_a_run_s_classes_agree_before_training(three, caplog):
    name, _ = three
    _register("checks_more", thing_classes=CLASSES3 + ["d"])
    cfg = get_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (name,), ()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    data_checks.check_dataset_classes(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    with caplog.at_level(logging.WARNING, logger="d2dist.engine.data_checks"):
        data_checks.check_dataset_classes(cfg)  # more than the dataset's: logged
    assert "the head predicts 5 classes, DATASETS.TRAIN 'checks_three' has 3" in caplog.text
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.RETINANET.NUM_CLASSES = 2
    with pytest.raises(ConfigError, match=r"MODEL.RETINANET.NUM_CLASSES=2 is below the 3"):
        data_checks.check_dataset_classes(cfg)
    cfg.MODEL.META_ARCHITECTURE = "SomeoneElsesModel"  # not known: its heads are not compared
    data_checks.check_dataset_classes(cfg)
    cfg.DATASETS.TEST = ("checks_more",)
    with pytest.raises(
        ConfigError,
        match=r"DATASETS.TRAIN 'checks_three' and DATASETS.TEST "
        r"'checks_more' have different thing_classes",
    ):
        data_checks.check_dataset_classes(cfg)


def _distiller(kinds, teacher_train, classes=3):
    tcfg = get_cfg()
    tcfg.MODEL.ROI_HEADS.NUM_CLASSES = classes
    tcfg.DATASETS.TRAIN = (teacher_train,)
    teacher = types.SimpleNamespace(cfg=tcfg, config_path="teacher.yaml", source="teacher.yaml")
    extractor = types.SimpleNamespace(kinds={k: None for k in kinds})
    return types.SimpleNamespace(teacher_wrapper=teacher, extractor=extractor)


def test_a_teacher_trained_on_other_classes_is_refused_for_logit_targets(three, caplog):
    name, _ = three
    _register("checks_reversed", thing_classes=CLASSES3[::-1])
    cfg = get_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (name,), ()
    cfg.MODEL.META_ARCHITECTURE = "Distiller"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    data_checks.check_dataset_classes(cfg, _distiller(["roi"], name))
    with pytest.raises(
        ConfigError,
        match=r"the teacher \(teacher.yaml\) predicts 3 classes .* "
        r"trained on 'checks_reversed' \['c', 'b', 'a'\].*"
        r"logits would teach the wrong class",
    ):
        data_checks.check_dataset_classes(cfg, _distiller(["roi", "features"], "checks_reversed"))
    with caplog.at_level(logging.INFO, logger="d2dist.engine.data_checks"):
        data_checks.check_dataset_classes(cfg, _distiller(["features"], "checks_reversed", 5))
    assert "only its features are distilled" in caplog.text


def test_the_weighted_samplers_use_the_checked_records(three):
    name, records = three
    per = [(name, records(4)), ("checks_b", records(2))]
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (name, "checks_b")
    cfg.DATASETS.TRAIN_REPEAT_FACTOR = [["checks_b", 2.0]]
    cfg.DATALOADER.SAMPLER_TRAIN = "WeightedTrainingSampler"
    sampler = data_checks.weighted_sampler(cfg, per)
    assert torch.equal(sampler._frac_part + sampler._int_part, torch.tensor([1.0] * 4 + [2.0] * 2))
    cfg.DATASETS.TRAIN_REPEAT_FACTOR = [["nope", 2.0]]
    with pytest.raises(ConfigError, match=r"TRAIN_REPEAT_FACTOR names \['nope'\]"):
        data_checks.weighted_sampler(cfg, per)


def test_a_lazy_config_s_classes_agree(three):
    name, _ = three
    _register("checks_more", thing_classes=CLASSES3 + ["d"])
    cfg = OmegaConf.create({
        "dataloader": {"train": {"dataset": {"names": name}},
                       "test": {"dataset": {"names": [name]}}},
        "model": {"roi_heads": {"num_classes": 3}},
    })  # fmt: skip
    data_checks.check_lazy_classes(cfg)
    cfg.model.roi_heads.num_classes = 2
    with pytest.raises(
        ConfigError,
        match=r"model.roi_heads.num_classes=2 is below the 3 classes "
        r"of dataloader.train 'checks_three'",
    ):
        data_checks.check_lazy_classes(cfg)
    cfg.model.roi_heads.num_classes = 3
    cfg.dataloader.test.dataset.names = "checks_more"
    with pytest.raises(ConfigError, match=r"dataloader.train 'checks_three' and dataloader.test"):
        data_checks.check_lazy_classes(cfg)


def test_the_image_check_runs_in_threads_on_many_images(three, tmp_path):
    name, _ = three
    path = _jpeg(tmp_path / "one.jpg")
    records = [{"file_name": path, "image_id": i, "height": H, "width": W} for i in range(300)]
    check_image_files(records, name)
    records[250] = dict(records[250], file_name=str(tmp_path / "gone.jpg"))
    with pytest.raises(DataError, match=r"image id 250 \(.*gone.jpg\): the image file does not"):
        check_image_files(records, name)
    assert checks.MAX_DROPPED == 0.01
