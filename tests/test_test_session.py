"""The test session's own footprint: what a session leaves on disk.

A CI run failed with "No space left on device" half-way through: every test's ``tmp_path`` and
every module fixture's folder (tiny teachers and runs, 87 MB per checkpoint) stayed until the end,
14 GB in all. Here a small session runs with the suite's own conftest and pytest.ini.
"""

import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)

_TEACHER = """
import pytest

@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    d = tmp_path_factory.mktemp("{name}")
    (d / "teacher.pth").write_bytes(b"0" * 4096)
    return d
"""

_PASSING = _TEACHER.format(name="passing_teacher") + """
def test_trains(teacher, tmp_path):
    (tmp_path / "model_final.pth").write_bytes(b"1" * 4096)

def test_evaluates(teacher, tmp_path):
    assert (teacher / "teacher.pth").exists()
"""

_FAILING = _TEACHER.format(name="failing_teacher") + """
def test_passes(teacher, tmp_path):
    (tmp_path / "model_final.pth").write_bytes(b"1")

def test_fails(teacher, tmp_path):
    (tmp_path / "model_final.pth").write_bytes(b"1")
    assert False, "kept for reading"
"""


def test_a_session_keeps_only_the_folders_of_what_failed(tmp_path):
    tests = tmp_path / "session"
    tests.mkdir()
    (tests / "test_passing_module.py").write_text(_PASSING)
    (tests / "test_failing_module.py").write_text(_FAILING)
    basetemp = tmp_path / "basetemp"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", os.path.join(REPO, "pytest.ini"), "-p", "conftest",
         "-p", "no:cacheprovider", "-p", "no:xdist", "--basetemp", str(basetemp), "-q",
         str(tests / "test_failing_module.py"), str(tests / "test_passing_module.py")],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
        env={**os.environ, "PYTHONPATH": TESTS},
    )  # fmt: skip
    assert proc.returncode == 1 and "1 failed, 3 passed" in proc.stdout, proc.stdout + proc.stderr
    # The passing module's fixture folder and its tests' tmp_paths are gone; the failing module's
    # fixture and the failing test's tmp_path are kept, the passing test's beside it is not.
    # (pytest's "<name>current" links to the newest of a name are not folders of their own.)
    kept = sorted(p.name for p in basetemp.iterdir() if not p.is_symlink())
    assert kept == ["failing_teacher0", "test_fails0"]
