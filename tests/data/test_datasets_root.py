"""The built-in datasets' root is one folder whatever the working directory: $DETECTRON2_DATASETS,
else the checkout's datasets/, else (an installed d2dist) the user's cache; never a new ./datasets
in the folder a run starts from."""

import os
import subprocess
import sys

import pytest

from d2dist import file_io
from d2dist.data.builtin import datasets_root

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_root_is_the_variable_else_the_checkouts_datasets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", "~/somewhere")
    assert datasets_root() == os.path.expanduser("~/somewhere")
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert datasets_root() == os.path.join(REPO, "datasets")


def test_an_installed_d2dist_uses_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    monkeypatch.setattr(file_io, "CHECKOUT", str(tmp_path / "site-packages"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert datasets_root() == str(tmp_path / "cache" / "d2dist" / "datasets")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets_root() == str(tmp_path / "home" / ".cache" / "d2dist" / "datasets")


@pytest.mark.slow  # two fresh Python processes import d2dist
def test_runs_from_two_folders_register_the_same_files(tmp_path):
    code = (
        "import d2dist; from detectron2.data import MetadataCatalog; "
        "print(MetadataCatalog.get('d2dist_shapes_tiny_train').json_file)"
    )
    env = {k: v for k, v in os.environ.items() if k != "DETECTRON2_DATASETS"}
    seen = []
    for folder in (tmp_path / "a", tmp_path / "a" / "b"):
        folder.mkdir()
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        seen.append(done.stdout.strip().splitlines()[-1])
        assert not (folder / "datasets").exists()
    expected = os.path.join(REPO, "datasets", "d2dist_shapes_tiny", "annotations")
    assert seen == [os.path.join(expected, "instances_train.json")] * 2
