"""Forward hooks that record what named submodules compute, by their ``named_modules()`` path."""

from typing import Any, Dict, Iterable, Optional

from torch import nn

__all__ = ["Recorder", "RecorderError", "StopForward"]


class RecorderError(RuntimeError):
    """A recorded source is missing, did not fire, or fired more often than allowed."""


class StopForward(Exception):
    """Raised by a :class:`Recorder` hook to end a forward pass once its last source fired.

    Lets a caller run a network only as far as it needs (e.g. a teacher up to its semantic
    predictor) without knowing the network's code. Caught by :meth:`Recorder.run`.
    """


class Recorder:
    """Record the inputs or outputs of named submodules of a model during a forward pass.

    Use as a context manager: hooks are registered on entry and always removed on exit. After
    the forward pass, ``recorder[path]`` is the list of values each source produced, in call
    order (one entry per call: e.g. three for a Cascade R-CNN box pooler).

    Args:
        model: the module whose submodules are recorded.
        outputs: ``named_modules()`` paths whose forward output is recorded.
        inputs: paths whose positional forward inputs (a tuple) are recorded.
        stop_after: a path in ``outputs``; after it fires, the forward pass is ended with
            :class:`StopForward` (see :meth:`run`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        outputs: Iterable[str] = (),
        inputs: Iterable[str] = (),
        stop_after: Optional[str] = None,
    ):
        self.model = model
        self.outputs = tuple(dict.fromkeys(outputs))
        self.inputs = tuple(dict.fromkeys(inputs))
        if stop_after is not None and stop_after not in self.outputs:
            raise ValueError(f"stop_after={stop_after!r} must be one of outputs={self.outputs}")
        self.stop_after = stop_after
        modules = dict(model.named_modules())
        missing = [p for p in self.outputs + self.inputs if p not in modules]
        if missing:
            near = sorted(p for p in modules if p and p.count(".") <= 2)
            raise RecorderError(
                f"{type(model).__name__} has no submodule {missing}; its submodules include "
                f"{near[:40]}"
            )
        self._modules = modules
        self._handles = []
        self.records: Dict[str, list] = {}

    def _output_hook(self, path):
        def hook(module, args, output):
            self.records[("out", path)].append(output)
            if path == self.stop_after:
                raise StopForward(path)

        return hook

    def _input_hook(self, path):
        def hook(module, args):
            self.records[("in", path)].append(args)

        return hook

    def __enter__(self) -> "Recorder":
        self.records = {("out", p): [] for p in self.outputs}
        self.records.update({("in", p): [] for p in self.inputs})
        try:
            for p in self.outputs:
                h = self._modules[p].register_forward_hook(self._output_hook(p))
                self._handles.append(h)
            for p in self.inputs:
                h = self._modules[p].register_forward_pre_hook(self._input_hook(p))
                self._handles.append(h)
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def run(self, fn, *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)``, ended early (returning None) if ``stop_after`` fired."""
        try:
            return fn(*args, **kwargs)
        except StopForward:
            return None

    def output(self, path: str, index: int = -1) -> Any:
        """The ``index``-th recorded output of ``path`` (default: the last call)."""
        return self._get(("out", path), index)

    def input(self, path: str, index: int = -1) -> tuple:
        """The ``index``-th recorded positional inputs of ``path`` (default: the last call)."""
        return self._get(("in", path), index)

    def ran(self, path: str) -> bool:
        """Whether the recorded source ``path`` fired at least once (never an error)."""
        return any(self.records.get((kind, path)) for kind in ("out", "in"))

    def all_outputs(self, path: str) -> list:
        return self._check(("out", path))

    def all_inputs(self, path: str) -> list:
        return self._check(("in", path))

    def _check(self, key) -> list:
        if key not in self.records:
            raise RecorderError(f"{key[1]!r} was not recorded; recorded: {sorted(self.records)}")
        values = self.records[key]
        if not values:
            raise RecorderError(
                f"{type(self.model).__name__}.{key[1]} did not run during the forward pass, so "
                "there is nothing to distill from it. Does this model use that module in "
                "training mode with this config?"
            )
        return values

    def _get(self, key, index):
        return self._check(key)[index]
