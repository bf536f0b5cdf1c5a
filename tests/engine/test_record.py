"""The run record's coverage of the teacher's files, and its comparison (d2dist.checkpoint.record)."""

import os

import pytest

from d2dist.checkpoint.record import check_resume, config_changes, config_files, file_sha256
from d2dist.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPES = os.path.join(REPO, "configs", "Shapes-Detection")


def _record(files, weights_sha="w" * 64, config=None):
    teacher = {"source": "t", "weights": "t.pth", "weights_sha256": weights_sha}
    teacher["config_sha256"] = files[0][1] if files else ""
    teacher["config_files"] = [list(f) for f in files]
    return {"config": config or {"A.B": "1"}, "teacher": teacher}


def test_the_files_of_a_yacs_config_follow_its_base_chain(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("MODEL: {}\n")
    (tmp_path / "sub" / "a.yaml").write_text('_BASE_: "../root.yaml"\n')
    (tmp_path / "b.yaml").write_text("SOLVER: {BASE_LR: !!python/tuple [1]}\n")
    top = tmp_path / "top.yaml"
    top.write_text(f'_BASE_: ["sub/a.yaml", "{tmp_path / "b.yaml"}"]\n')
    assert config_files(str(top)) == [
        str(top),
        str(tmp_path / "sub" / "a.yaml"),
        str(tmp_path / "sub" / ".." / "root.yaml"),
        str(tmp_path / "b.yaml"),
    ]
    shipped = config_files(os.path.join(SHAPES, "faster_rcnn_R50_FPN_3x.yaml"))
    assert [os.path.basename(f) for f in shipped] == [
        "faster_rcnn_R50_FPN_3x.yaml",
        "Base-Shapes-RCNN-FPN.yaml",
        "Base-RCNN-FPN.yaml",
    ]


def test_the_files_of_a_lazy_config_are_those_it_imports():
    files = config_files(os.path.join(SHAPES, "distplus_mask_rcnn_R18_from_ViTDet_tiny_1x.py"))
    names = [os.path.basename(f) for f in files]
    assert names == [
        "distplus_mask_rcnn_R18_from_ViTDet_tiny_1x.py",
        "mask_rcnn_R18_FPN_1x.py",
        "common_lazy.py",
    ]


def test_teacher_files_are_compared_each_under_its_own_path(tmp_path):
    config, base = str(tmp_path / "t.yaml"), str(tmp_path / "base.yaml")
    before = _record([(config, "a" * 64), (base, "b" * 64)])
    assert config_changes(before, before) == []
    moved = _record([(str(tmp_path / "moved.yaml"), "a" * 64), (base, "b" * 64)])
    assert config_changes(before, moved) == []  # a file may move: its contents are compared
    changed = _record([(config, "a" * 64), (base, "c" * 64)])
    assert config_changes(before, changed) == [
        f"teacher config's _BASE_ file {base!r} (contents): bbbbbbbbbbbb -> cccccccccccc"
    ]
    edited = _record([(config, "d" * 64), (base, "b" * 64)], weights_sha="x" * 64)
    changes = config_changes(before, edited)
    assert changes[0].startswith("teacher weights (contents): wwwwwwwwwwww -> xxxxxxxxxxxx")
    assert changes[1] == f"teacher config file {config!r} (contents): aaaaaaaaaaaa -> dddddddddddd"


def test_a_record_of_an_earlier_d2dist_compares_the_config_file_alone(tmp_path):
    config = str(tmp_path / "t.yaml")
    old = _record([(config, "a" * 64)])
    del old["teacher"]["config_files"]
    now = _record([(config, "a" * 64), (str(tmp_path / "base.yaml"), "b" * 64)])
    assert config_changes(old, now) == []
    now["teacher"]["config_files"][0][1] = "e" * 64
    assert config_changes(old, now) == [
        f"teacher config file {config!r} (contents): aaaaaaaaaaaa -> eeeeeeeeeeee"
    ]


@pytest.mark.parametrize(
    "garbled,problem",
    [
        ("text", r"a str, not a mapping"),
        ({"teacher": None}, r"its 'config' is a NoneType, not a mapping"),
        ({"config": {"A": 1}}, r"config entries that are not text: \['A'\]"),
        ({"config": {}, "teacher": [1]}, r"its 'teacher' is a list, not a mapping"),
        ({"config": {}, "teacher": {"weights_sha256": 3}}, r"teacher's 'weights_sha256' is an int"),
        ({"config": {}, "teacher": {"config_files": ["x"]}}, r"not a list of \[path, sha256\]"),
    ],
)
def test_a_garbled_record_is_an_error_naming_the_checkpoint(garbled, problem):
    with pytest.raises(
        ConfigError, match=r"the run record of 'ck.pth' .*is garbled \(.*" + problem
    ):
        check_resume(garbled, _record([]), "ck.pth")


def test_file_sha256_is_of_the_contents(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("same")
    b.write_text("same")
    assert file_sha256(str(a)) == file_sha256(str(b))
