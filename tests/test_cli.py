"""d2dist.cli: the console scripts setup.py declares exist, tools/*.py are thin wrappers of them,
and the tools' entry points filter the known third-party warnings (only those)."""

import ast
import importlib
import logging
import os
import subprocess
import sys
import warnings

import pytest

from d2dist.cli import _warnings
from d2dist.cli._warnings import quiet_third_party_warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = {  # tools/<name>.py -> its console script
    "train_net": "d2dist-train",
    "lazyconfig_train_net": "d2dist-train-lazy",
    "export_student": "d2dist-export",
    "label_images": "d2dist-label",
    "benchmark": "d2dist-benchmark",
    "loss_scale": "d2dist-loss-scale",
    "convert_torchvision_to_d2": "d2dist-convert-torchvision",
}


def _console_scripts():
    """``{script: "module:function"}`` as setup.py declares them (read with ast, not run)."""
    with open(os.path.join(REPO, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "CONSOLE_SCRIPTS":
            entries = ast.literal_eval(node.value)
            return dict(tuple(p.strip() for p in e.split("=")) for e in entries)
    raise AssertionError("setup.py declares no CONSOLE_SCRIPTS")


def test_every_console_script_names_a_function_of_d2dist_cli():
    scripts = _console_scripts()
    assert set(TOOLS.values()) | {"d2dist-demo", "d2dist-study", "d2dist-visualize"} == set(scripts)
    for script, target in scripts.items():
        module, function = target.split(":")
        assert module.startswith("d2dist.cli."), script
        assert callable(getattr(importlib.import_module(module), function)), script


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_the_tool_scripts_are_thin_wrappers_of_their_console_script(tool):
    scripts = _console_scripts()
    with open(os.path.join(REPO, "tools", f"{tool}.py")) as f:
        source = f.read()
    tree = ast.parse(source)
    code = [n for n in tree.body if not isinstance(n, ast.Expr)]  # all but the docstring
    assert len(code) <= 4, f"tools/{tool}.py holds code of its own"
    imports = [n for n in code if isinstance(n, ast.ImportFrom)]
    assert [n.module for n in imports] == [scripts[TOOLS[tool]].split(":")[0]]


def test_the_filters_hide_the_known_third_party_warnings_only():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    fx = logging.getLogger("torch.fx._symbolic_trace")
    fx.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            quiet_third_party_warnings()
            quiet_third_party_warnings()  # a second call changes nothing
            meshgrid = "torch.meshgrid: in an upcoming release, it will be required to pass the "
            warnings.warn(meshgrid + "indexing argument.", UserWarning)
            warnings.warn("`torch.jit.script` is deprecated. Please switch to", FutureWarning)
            warnings.warn("pkg_resources is deprecated as an API. See", UserWarning)
            warnings.warn("something else is deprecated", FutureWarning)
            warnings.warn(meshgrid + "indexing argument.", DeprecationWarning)  # another category
            fx.warning("is_fx_tracing will return true for both fx.symbolic_trace and ...")
            fx.warning("another record of this logger")
    finally:
        fx.removeHandler(handler)
        for name, record_filter in _warnings._LOG_FILTERS:
            logging.getLogger(name).removeFilter(record_filter)
    shown = [str(w.message) for w in seen]
    assert shown == ["something else is deprecated", meshgrid + "indexing argument."]
    assert [r.getMessage() for r in records] == ["another record of this logger"]
    assert fx.filters == []


def test_ignoring_import_warnings_restores_the_filters():
    before = list(warnings.filters)
    with _warnings.ignoring_import_warnings():
        assert warnings.filters != before
    assert warnings.filters == before


@pytest.mark.slow  # a fresh Python process imports d2dist and Detectron2
def test_importing_d2dist_shows_no_torch_jit_warning_and_installs_no_filter(tmp_path):
    code = (
        "import warnings; n = len(warnings.filters); import d2dist.cli.train_net; "
        "assert len(warnings.filters) == n, warnings.filters; "
        "warnings.warn('`torch.jit.script` is deprecated', FutureWarning)"  # shown after it
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("torch.jit.script") == 1, done.stderr[-3000:]
