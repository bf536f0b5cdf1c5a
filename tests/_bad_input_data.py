"""Rows of tests/test_bad_input.py: datasets checked when they are loaded (issue 22).

Each row is ``(what, run(ctx, capsys), expected)`` as in test_bad_input.CASES: ``expected`` is a
regular expression the :class:`~d2dist.errors.ConfigError` (or DataError) message must match, or
a callable that checks the result of a row that works.

The faulty datasets are copies of the built-in tiny one (COCO format, written by the row and
registered with ``--coco-dataset``) or tiny Cityscapes folders in the real layout; the runs go
through tools/train_net.py as a user runs it (:func:`_run`: exit status 2, one message, no
traceback), one step at most.
"""

import json
import os
import re
import shutil

import numpy as np
import torch
from _bad_input import CONFIGS, DISTILL_CFG, FIVE_CLASSES, TEACHER_OPTS, _one_message
from _tiny import LAZY_TINY_DATA
from _tools import load_tool
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from d2dist.data import CLASSES, ensure_generated, register_coco_format
from d2dist.engine import argument_parser, launch_cli

TEST_64 = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"]

# A dataset whose classes are the built-in ones in the reverse order (metadata only): what a
# teacher's config names as its training set in the row of a teacher trained on other classes.
if "bad_input_reversed_classes" not in DatasetCatalog.list():
    DatasetCatalog.register("bad_input_reversed_classes", lambda: [])
    MetadataCatalog.get("bad_input_reversed_classes").thing_classes = list(CLASSES[::-1])


def _run(ctx, capsys, *extra, coco=(), flags=(), teacher_opts=TEACHER_OPTS, env=None):
    """tools/train_net.py through ``launch_cli``, as a user runs it: its OUTPUT_DIR if it trained;
    else status 2 and a message without a traceback, raised as a ConfigError for the table."""
    argv = [*flags, *coco, "--config-file", DISTILL_CFG]
    argv += ctx.opts(*extra, teacher_opts=teacher_opts)
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        status = launch_cli(load_tool("train_net").main, argument_parser().parse_args(argv))
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    if status == 0:
        return argv[argv.index("OUTPUT_DIR") + 1]
    _one_message(status, capsys)


def _coco(ctx, name, edit=None, split="train"):
    """``--coco-dataset NAME JSON IMAGES`` of a copy of the tiny built-in dataset's ``split``
    under the row's directory; ``edit(data, images)`` changes its JSON (in place, or returns
    the text to write instead) and its image folder."""
    source = MetadataCatalog.get(f"d2dist_shapes_tiny_{split}")
    ensure_generated(source.name)
    images = ctx.tmp / name / "images"
    shutil.copytree(source.image_root, images)
    with open(source.json_file) as f:
        data = json.load(f)
    text = edit(data, images) if edit else None
    path = ctx.tmp / name / "instances.json"
    path.write_text(text if isinstance(text, str) else json.dumps(data))
    return ["--coco-dataset", name, str(path), str(images)]


def _train_on(ctx, capsys, name, edit, *extra, **kwargs):
    """One step on a faulty copy of the tiny training set named ``name``."""
    coco = _coco(ctx, name, edit)
    return _run(ctx, capsys, "DATASETS.TRAIN", f"('{name}',)", *extra, coco=coco, **kwargs)


def _test_on(ctx, capsys, name, edit):
    """One step on the tiny training set, then evaluation on a faulty copy of its test set."""
    coco = _coco(ctx, name, edit, split="val")
    return _run(ctx, capsys, "DATASETS.TEST", f"('{name}',)", *TEST_64, coco=coco)


def _set(key, value, index=0):
    def edit(data, images):
        data["annotations"][index][key] = value(data["annotations"][index][key])

    return edit


def _mirrored(b):  # the box's right edge and a negative width: the same box, mirrored
    return [b[0] + b[2], b[1], -b[2], b[3]]


def _unknown_category(data, images):
    data["annotations"][3]["category_id"] = 99


def _without_file_name(data, images):
    del data["images"][2]["file_name"]


def _cut_short(data, images):
    text = json.dumps(data)
    return text[: len(text) // 2]


def _all_outside(data, images):
    for ann in data["annotations"]:
        ann["bbox"][0] += 1000  # x past the 64-pixel images


def _one_outside(data, images):
    data["annotations"][0]["bbox"][1] = -500.0  # above the image


def _no_annotations(data, images):
    data["annotations"] = []


def _reversed_classes(data, images):
    names = [c["name"] for c in data["categories"]][::-1]
    for cat, name in zip(data["categories"], names):
        cat["name"] = name


def _sixteen_bit_image(data, images):
    image = data["images"][3]
    path = images / image["file_name"]
    path.unlink()
    image["file_name"] = path.with_suffix(".png").name
    levels = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(levels).save(images / image["file_name"])


def _junk_image(data, images):
    (images / data["images"][2]["file_name"]).write_bytes(b"not an image at all")


def _dropped_and_counted(out):
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert re.search(r"1 of its \d+ boxes .* entirely outside the 64x64 image.*dropped before", log)


# ---- Cityscapes folders in the real layout (two images of one city, semantic labels) ----------
def _cityscapes(ctx, name, damage):
    """A tiny Cityscapes semantic dataset registered as Detectron2 registers its own
    (``cityscapes_fine_sem_seg_*``), its folders changed by ``damage(root)``."""
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
    from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

    root = ctx.tmp / name
    images, gt = root / "leftImg8bit" / "train", root / "gtFine" / "train"
    for i in range(2):
        stem = f"tinycity_000000_{i:06d}"
        (images / "tinycity").mkdir(parents=True, exist_ok=True)
        (gt / "tinycity").mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 255, (64, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / "tinycity" / f"{stem}_leftImg8bit.png")
        road = {"label": "road", "polygon": [[0, 32], [127, 32], [127, 63], [0, 63]]}
        polygons = {"imgHeight": 64, "imgWidth": 128, "objects": [road]}
        (gt / "tinycity" / f"{stem}_gtFine_polygons.json").write_text(json.dumps(polygons))
        labels = np.zeros((64, 128), np.uint8)
        for suffix in ("labelIds", "instanceIds", "labelTrainIds"):
            Image.fromarray(labels).save(gt / "tinycity" / f"{stem}_gtFine_{suffix}.png")
    damage(root)
    DatasetCatalog.register(name, lambda: load_cityscapes_semantic(str(images), str(gt)))
    MetadataCatalog.get(name).set(
        image_dir=str(images),
        gt_dir=str(gt),
        evaluator_type="cityscapes_sem_seg",
        ignore_label=255,
        **_get_builtin_metadata("cityscapes"),
    )
    return name


def _train_on_cityscapes(ctx, capsys, name, damage):
    return _run(ctx, capsys, "DATASETS.TRAIN", f"('{_cityscapes(ctx, name, damage)}',)")


def _without_train_ids(root):
    for path in root.glob("gtFine/*/*/*_labelTrainIds.png"):
        path.unlink()


def _without_image_split(root):
    shutil.rmtree(root / "leftImg8bit" / "train")


def _corrupt_polygons(root):
    path = next(iter(sorted(root.glob("gtFine/*/*/*_polygons.json"))))
    path.write_text(path.read_text()[:20])


DATA_ROWS = [
    # ---- COCO-format files: faults named where the file is read, with the entry at fault
    ("COCO format: a category_id not among the file's categories",
     lambda c, cap: _train_on(c, cap, "bad_coco_category", _unknown_category),
     r"dataset 'bad_coco_category': .*instances.json cannot be loaded \(KeyError.*annotations\[3\] "
     r"\(id \d+, image_id \d+\) has category_id=99, which is not among the file's categories"),
    ("COCO format: an image without file_name",
     lambda c, cap: _train_on(c, cap, "bad_coco_file_name", _without_file_name),
     r"instances.json cannot be loaded \(KeyError: 'file_name'\): .*instances.json: images\[2\] "
     r"\(id 3\) has no 'file_name'"),
    ("COCO format: invalid JSON",
     lambda c, cap: _train_on(c, cap, "bad_coco_json", _cut_short),
     r"instances.json is not valid JSON: .* at line 1, column \d+ \(a file cut short"),
    ("COCO format: a bbox of three numbers",
     lambda c, cap: _train_on(c, cap, "bad_coco_bbox", _set("bbox", lambda b: b[:3])),
     r"dataset 'bad_coco_bbox' \(.*instances.json\): image id 1 \(.*000001.jpg\), annotation #0 "
     r"\(id 1\): bbox=\[3.0, 17.0, 17.0\] is not four finite numbers"),
    ("a box of negative width",
     lambda c, cap: _train_on(c, cap, "bad_negative_width", _set("bbox", _mirrored)),
     r"image id 1 .*annotation #0 \(id 1\): bbox=\[20.0, 17.0, -17.0, 13.0\] \(XYWH_ABS\) has a "
     r"negative width or height \(-17 x 13\); d2dist does not mirror it"),
    ("every box outside its image",
     lambda c, cap: _train_on(c, cap, "bad_all_outside", _all_outside),
     r"'bad_all_outside' .*: \d+ of its \d+ boxes \(100.0%\) cannot be trained on \(\d+ entirely "
     r"outside the 64x64 image\).*No box of the training set is left"),
    ("one box outside its image, more than the limit of dropped boxes",
     lambda c, cap: _train_on(c, cap, "bad_one_outside", _one_outside),
     r"1 of its \d+ boxes \(.*%\) cannot be trained on.*more than d2dist drops \(1% of a "
     r"dataset's boxes, D2DIST_MAX_DROPPED\).*D2DIST_MAX_DROPPED=FRACTION \(e.g. 0.03\)"),
    ("one box outside its image, within D2DIST_MAX_DROPPED (works: dropped, counted)",
     lambda c, cap: _train_on(c, cap, "one_outside_allowed", _one_outside,
                              env={"D2DIST_MAX_DROPPED": "0.1"}),
     _dropped_and_counted),
    ("a training image that is not an image",
     lambda c, cap: _train_on(c, cap, "bad_junk_image", _junk_image),
     r"'bad_junk_image' .*: image id 3 \(.*000003.jpg\): the image file cannot be read as an "
     r"image \(UnidentifiedImageError"),
    ("a 16-bit training image",
     lambda c, cap: _train_on(c, cap, "bad_16_bit_image", _sixteen_bit_image),
     r"image id 4 \(.*000004.png\): the image is of PIL mode 'I;16' \(more than 8 bits a "
     r"channel\).*clips such values to 255"),
    # ---- test sets: refused before evaluation, classes compared before training
    ("a test set without annotations",
     lambda c, cap: _test_on(c, cap, "bad_test_unannotated", _no_annotations),
     r"the test set 'bad_test_unannotated' has no annotations .* cannot be scored"),
    ("train and test sets whose classes differ",
     lambda c, cap: _test_on(c, cap, "bad_test_classes", _reversed_classes),
     r"DATASETS.TRAIN 'd2dist_shapes_tiny_train' and DATASETS.TEST 'bad_test_classes' have "
     r"different thing_classes \(class 0 is 'circle' in the one, 'crescent' in the other\)"),
    # ---- the models' classes
    ("student NUM_CLASSES below the dataset's",
     lambda c, cap: _run(c, cap, "MODEL.ROI_HEADS.NUM_CLASSES", "5"),
     r"MODEL.ROI_HEADS.NUM_CLASSES=5 \(the student's\) is below the 8 classes of DATASETS.TRAIN "
     r"'d2dist_shapes_tiny_train'.*Set MODEL.ROI_HEADS.NUM_CLASSES 8"),
    ("a teacher trained on other classes of the same number, logit term",
     lambda c, cap: _run(c, cap, "MODEL.DISTILL.LOSSES", "['KD']", teacher_opts=TEACHER_OPTS + [
         "DATASETS.TRAIN", "('bad_input_reversed_classes',)"]),
     r"the teacher \(.*\) predicts 8 classes \(MODEL.ROI_HEADS.NUM_CLASSES\) trained on "
     r"'bad_input_reversed_classes' \['crescent'.*its logits would teach the wrong class"),
    ("--eval-teacher, a teacher of fewer classes than the test set",
     lambda c, cap: _run(c, cap, "DATASETS.TEST", "('d2dist_shapes_tiny_val',)", *TEST_64,
                         "MODEL.DISTILL.TEACHER.WEIGHTS", c.five_class_teacher,
                         teacher_opts=TEACHER_OPTS + FIVE_CLASSES, flags=["--eval-teacher"]),
     r"MODEL.ROI_HEADS.NUM_CLASSES=5 is below the 8 classes of DATASETS.TEST "
     r"'d2dist_shapes_tiny_val'"),
    # ---- Cityscapes folders with missing parts: named before Detectron2's loader runs
    ("Cityscapes: no labelTrainIds.png",
     lambda c, cap: _train_on_cityscapes(c, cap, "bad_cityscapes_train_ids", _without_train_ids),
     r"dataset 'bad_cityscapes_train_ids': 2 ground-truth file\(s\) of its 2 images are missing: "
     r".*tinycity_000000_000000_gtFine_labelTrainIds.png.*createTrainIdLabelImgs"),
    ("Cityscapes: a missing split folder",
     lambda c, cap: _train_on_cityscapes(c, cap, "bad_cityscapes_split", _without_image_split),
     r"dataset 'bad_cityscapes_split': its image split folder .*leftImg8bit/train does not "
     r"exist. Lay the dataset out as datasets/README.md says"),
    ("Cityscapes: a corrupt polygons JSON",
     lambda c, cap: _train_on_cityscapes(c, cap, "bad_cityscapes_json", _corrupt_polygons),
     r"dataset 'bad_cityscapes_json' \(.*gtFine/train\) cannot be loaded \(JSONDecodeError.*\): "
     r".*tinycity_000000_000000_gtFine_polygons.json is not valid JSON"),
]  # fmt: skip


def _lazy_test_set_without_annotations(ctx, capsys):
    """tools/lazyconfig_train_net.py --eval-only on a test set without annotations."""
    _, name, path, images = _coco(ctx, "lazy_no_annotations", _no_annotations, split="val")
    register_coco_format(name, path, images)
    config = os.path.join(CONFIGS, "mask_rcnn_R18_FPN_1x.py")
    weights = str(ctx.tmp / "student.pth")
    torch.save({"model": instantiate(LazyConfig.load(config).model).state_dict()}, weights)
    argv = ["--eval-only", "--config-file", config, *LAZY_TINY_DATA,
            f"dataloader.test.dataset.names={name}", f"train.init_checkpoint={weights}",
            f"train.output_dir={ctx.out()}"]  # fmt: skip
    status = launch_cli(load_tool("lazyconfig_train_net").lazy_main,
                        argument_parser().parse_args(argv))  # fmt: skip
    _one_message(status, capsys)


DATA_ROWS.append(
    ("LazyConfig: a test set without annotations", _lazy_test_set_without_annotations,
     r"lazy_no_annotations.*(no annotations|without annotations|cannot be scored)"),
)  # fmt: skip


def _unreadable_annotations(ctx, capsys):
    """A registered COCO-format dataset whose annotation file this user may not read. Root, who
    runs these tests here, may read any file: the refusal is injected where it is opened (by
    pycocotools, for Detectron2's load_coco_json)."""
    import builtins
    import errno

    import pycocotools.coco

    coco = _coco(ctx, "unreadable_json")
    path = coco[2]

    def refused(name, *args, **kwargs):
        if os.path.abspath(name) == os.path.abspath(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
        return builtins.open(name, *args, **kwargs)

    pycocotools.coco.open = refused  # (the module's name `open`, before the builtin)
    try:
        return _run(ctx, capsys, "DATASETS.TRAIN", "('unreadable_json',)", coco=coco)
    finally:
        del pycocotools.coco.open


DATA_ROWS.append(
    ("a dataset whose annotation file cannot be read", _unreadable_annotations,
     r"error: dataset 'unreadable_json' \(.*instances.json\) cannot be read: '.*instances.json': "
     r"permission denied"),
)  # fmt: skip
