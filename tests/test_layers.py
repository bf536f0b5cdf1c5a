"""The package's layers (docs/architecture.md): read from the source with ``ast``, every
first-party import points down the layers, none forms a circle, none is placed inside a function,
and no module of the model or run layer grows past 400 lines."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "d2dist")

# Lowest first. A module may import modules of its own layer and of the layers below it.
LAYERS = [
    ["d2dist.errors", "d2dist.file_io"],
    ["d2dist.data"],
    ["d2dist.config"],
    ["d2dist.modeling", "d2dist.evaluation", "d2dist.convert"],
    ["d2dist.checkpoint"],
    ["d2dist.engine"],
    ["d2dist.study"],
    ["d2dist.cli"],  # the tools' code (console scripts); nothing below imports it
    ["d2dist"],  # the package itself: what `import d2dist` loads
]
# Inside the run layer, lowest first: the run directory, faults and checks; the trainer; what
# builds on it; what every run shares; the two entry points; the package's names.
ENGINE = [
    ["rundir", "runlock", "faults", "subnormals", "configs", "data_checks", "lazy_checks", "optim"],
    ["steps", "loaders", "teacher_eval"],
    ["trainer"],
    ["export", "benchmark", "loss_scale"],
    ["run"],
    ["defaults", "lazy"],
    ["__init__"],
]
MAX_LINES = 400


def _modules():
    """``{dotted name: path}`` of every module of the package."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                found[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return found


MODULES = _modules()


def _imports(module: str, path: str):
    """``(imported module, line, at the top level)`` of each first-party import of ``module``."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    top = {id(node) for node in tree.body}
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("d2dist"):
                continue
            names = [f"{target}.{a.name}" for a in node.names]
            submodules = [n for n in names if n in MODULES]  # from . import terms
            for imported in submodules or [target]:
                yield imported, node.lineno, id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("d2dist"):
                    yield alias.name, node.lineno, id(node) in top


def _rank(module: str):
    """The module's place: its layer, then (in the run layer) its place there."""
    for i, names in enumerate(LAYERS):
        for name in names:
            if module == name or (name != "d2dist" and module.startswith(name + ".")):
                if name == "d2dist.engine":
                    leaf = "__init__" if module == name else module.split(".")[2]
                    inner = next(j for j, group in enumerate(ENGINE) if leaf in group)
                    return (i, inner)
                return (i, 0)
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it there")


GRAPH = {m: sorted({t for t, _, _ in _imports(m, p)} - {m}) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    for module in MODULES:
        _rank(module)


def test_imports_only_point_down():
    upward = []
    for module, path in MODULES.items():
        for target, line, _ in _imports(module, path):
            if target in MODULES and _rank(target) > _rank(module):
                upward.append(f"{os.path.relpath(path, ROOT)}:{line}: {module} -> {target}")
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_no_first_party_import_inside_a_function():
    inner = []
    for module, path in MODULES.items():
        with open(path) as f:
            lines = f.read().split("\n")
        for target, line, at_top in _imports(module, path):
            if not at_top and "# optional dependency" not in lines[line - 1]:
                inner.append(f"{os.path.relpath(path, ROOT)}:{line}: {target}")
    assert not inner, "first-party imports inside functions:\n" + "\n".join(inner)


def _circle():
    """A circle of imports among the package's modules, or None."""
    state = {}

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for target in GRAPH.get(module, ()):
            # A package's own __init__ runs before its modules: a module importing a sibling
            # through its package (`from . import x`) is an edge to that sibling, listed above.
            if module.startswith(target + ".") and MODULES[target].endswith("__init__.py"):
                continue
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target in GRAPH and target not in state:
                found = visit(target, stack)
                if found:
                    return found
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(GRAPH):
        if module not in state:
            found = visit(module, [])
            if found:
                return found
    return None


def test_no_import_circle():
    circle = _circle()
    assert circle is None, "an import circle: " + " -> ".join(circle)


def test_the_walk_finds_a_circle_and_an_upward_import():
    """The checks above can fail: a made-up circle and an upward import are found."""
    GRAPH["d2dist.engine.runlock"].append("d2dist.engine.trainer")
    try:
        assert _circle() is not None
        assert _rank("d2dist.engine.trainer") > _rank("d2dist.engine.runlock")
    finally:
        GRAPH["d2dist.engine.runlock"].remove("d2dist.engine.trainer")
    assert _circle() is None


@pytest.mark.parametrize("layer", ["modeling", "engine", "checkpoint"])
def test_modules_of_the_model_and_run_layers_stay_short(layer):
    long = []
    for module, path in MODULES.items():
        if module.startswith(f"d2dist.{layer}"):
            with open(path) as f:
                count = sum(1 for _ in f)
            if count > MAX_LINES:
                long.append(f"{os.path.relpath(path, ROOT)}: {count} lines")
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)
