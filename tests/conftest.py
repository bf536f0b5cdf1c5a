"""Test-session set-up: generated datasets go to a temporary root, never into the checkout."""

import os
import shutil
import sys
import tempfile

# Must happen before d2dist is imported: its built-in datasets read the root at registration,
# exactly as Detectron2's own built-in datasets do.
_DATASETS_ROOT = tempfile.mkdtemp(prefix="d2dist-test-datasets-")
os.environ["DETECTRON2_DATASETS"] = _DATASETS_ROOT

import pytest  # noqa: E402

from d2dist.engine.subnormals import flush_subnormals  # noqa: E402

# As d2dist's CPU runs do, and before any computation starts PyTorch's thread pool (whose threads
# inherit the mode): subnormal floats are flushed to zero in every test, unless
# D2DIST_FLUSH_DENORMAL=0 (then kept, as for a run).
FLUSHED = flush_subnormals("cpu")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/_tiny.py


@pytest.fixture(scope="session")
def datasets_root() -> str:
    """The root under which the built-in datasets are generated during this test session."""
    return _DATASETS_ROOT


def pytest_report_header(config):
    """The disk the session writes to, in the log's first lines (a full disk fails tests late)."""
    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    return f"temporary files: {tempfile.gettempdir()} ({free:.1f} GiB free)"


@pytest.fixture(scope="module", autouse=True)
def _module_temp_dirs_removed(request, tmp_path_factory):
    """The directories a test module's fixtures made (a trained tiny teacher, a run: often hundreds
    of MB of checkpoints) are removed when the module ends, unless one of its tests failed.

    With ``tmp_path_retention_policy = failed`` (pytest.ini) a passing test's own ``tmp_path`` goes
    as soon as the test ends; without both, a session left 14 GB behind, more than CI's disk held.
    """
    basetemp = tmp_path_factory.getbasetemp()
    before = set(basetemp.iterdir())
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed == failed_before:
        for path in set(basetemp.iterdir()) - before:
            if path.is_symlink():  # pytest's "<name>current" link to the newest folder of a name
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_DATASETS_ROOT, ignore_errors=True)
