"""Quiet tools: the known third-party warnings that tell a d2dist user nothing, filtered.

PyTorch, fvcore, Detectron2, timm and setuptools warn about their own deprecations and internals
on every run (``torch.jit.script`` is deprecated, ``torch.meshgrid`` will need ``indexing``,
``is_fx_tracing`` ...): nothing a user of d2dist can or should act on. The tools' entry points call
:func:`quiet_third_party_warnings` first, which filters exactly these, each by category and
message (any other warning, a d2dist warning included, is shown as before). The library never
installs these filters for a process: a user's own script sees every warning, except the
``torch.jit.script`` deprecation raised while ``import d2dist`` imports Detectron2 (fvcore scripts
its losses at import), which :func:`ignoring_import_warnings` hides for that import only.

    from d2dist.cli._warnings import quiet_third_party_warnings
    quiet_third_party_warnings()  # first thing in an entry point
"""

import contextlib
import logging
import re
import warnings

__all__ = [
    "THIRD_PARTY_LOG_RECORDS",
    "THIRD_PARTY_WARNINGS",
    "ignoring_import_warnings",
    "quiet_third_party_warnings",
    "quietly",
]

# (category, start of the message as a regular expression, whose and why it says nothing).
THIRD_PARTY_WARNINGS = (
    # fvcore and Detectron2 script functions with torch.jit.script at import; PyTorch deprecates it.
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    # Detectron2's anchor generator calls torch.meshgrid without `indexing` (its result is right).
    (UserWarning, r"torch\.meshgrid: in an upcoming release, it will be required to pass the "),
    # detectron2.model_zoo imports pkg_resources (kept working by the setuptools<81 pin).
    (UserWarning, r"pkg_resources is deprecated as an API"),
    (DeprecationWarning, r"pkg_resources is deprecated as an API"),
    # Detectron2's ViT backbone (ViTDet teachers) imports timm.models.layers, timm's old path.
    (FutureWarning, r"Importing from timm\.models\.layers is deprecated"),
)
# (logger, start of the message): records PyTorch logs as warnings on every run.
THIRD_PARTY_LOG_RECORDS = (
    # Detectron2's RoI pooler asks is_fx_tracing(); PyTorch notes its meaning changed.
    ("torch.fx._symbolic_trace", r"is_fx_tracing will return true for both"),
    # Detectron2's environment report (default_setup) on a machine with CUDA files but no GPU.
    ("torch.utils.cpp_extension", r"No CUDA runtime is found"),
)
# The torch.jit.script deprecation is the one a bare `import d2dist` raises (see the docstring).
_IMPORT_WARNINGS = THIRD_PARTY_WARNINGS[:1]


class _DropRecords(logging.Filter):
    """Drops the log records whose message starts with ``pattern``."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


# One filter object per logger, so that a second call adds nothing (Logger.addFilter skips it).
_LOG_FILTERS = tuple((name, _DropRecords(pattern)) for name, pattern in THIRD_PARTY_LOG_RECORDS)


def _filter_warnings(table) -> None:
    for category, message in table:
        warnings.filterwarnings("ignore", message=message, category=category)


def quiet_third_party_warnings() -> None:
    """Hide :data:`THIRD_PARTY_WARNINGS` and :data:`THIRD_PARTY_LOG_RECORDS` in this process.

    For entry points only (the tools' ``console_main``, the demo, the study): the filters stay
    installed for the process. Calling it again changes nothing.
    """
    _filter_warnings(THIRD_PARTY_WARNINGS)
    for name, record_filter in _LOG_FILTERS:
        logging.getLogger(name).addFilter(record_filter)


def quietly(main, *args):
    """``main(*args)`` after :func:`quiet_third_party_warnings`: the function a tool hands to
    Detectron2's ``launch`` (as ``functools.partial(quietly, main)``), so that each process it
    starts is quiet too."""
    quiet_third_party_warnings()
    return main(*args)


@contextlib.contextmanager
def ignoring_import_warnings():
    """Inside the block only: hide the third-party deprecation raised by importing Detectron2.

    ``import d2dist`` imports Detectron2 inside it; the warning filters are restored on leaving.
    """
    with warnings.catch_warnings():
        _filter_warnings(_IMPORT_WARNINGS)
        yield
