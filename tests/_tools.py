"""The scripts under tools/ (not a package), imported as modules for in-process tests."""

import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")


def load_tool(name: str):
    """``tools/<name>.py`` as a fresh module (its ``main`` is then called with an argv list)."""
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)  # tools import each other (demo.py imports study)
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
