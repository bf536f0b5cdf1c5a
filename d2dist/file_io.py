"""``d2dist://`` paths: d2dist's own files, from any working directory, in a checkout or installed.

Detectron2 names files of its own namespace ``detectron2://...`` through a handler of its
``PathManager``; d2dist registers one more, with iopath's public ``register_handler``:

- ``d2dist://configs/<path>``: a config d2dist ships. In a checkout (d2dist run from its source
  tree: ``make env``, ``pip install -e .``, ``PYTHONPATH``) the checkout's ``configs/``; in an
  installed d2dist (a wheel, ``pip install d2dist``) the copy inside the package,
  ``<site-packages>/d2dist/configs``, which setup.py puts there at build time, as Detectron2 ships
  its model-zoo configs.
- ``d2dist://<other path>``, e.g. ``d2dist://output/study/faster_rcnn/teacher/model_final.pth``
  (the teacher ``make demo`` writes): in a checkout, that file of the checkout, whatever the
  working directory; in an installed d2dist, which has no folder of its own to write to, that
  file of the working directory (where ``d2dist-demo`` and ``d2dist-train``, run there, write
  their ``output/``). :func:`project_dir` is that folder.

The shipped configs name their teachers (config file and weights) this way, so they run from
anywhere, through d2dist's tools and a user's own ``train_net.py`` alike (Detectron2's config
merge and checkpointer read through its ``PathManager``); a config's ``_BASE_`` may be a
``d2dist://`` path too (:class:`d2dist.config.CfgNode`).

A relative path without a prefix keeps Detectron2's meaning: relative to the working directory.
"""

import os
from typing import Optional

from detectron2.utils.file_io import PathHandler, PathManager

__all__ = [
    "CHECKOUT",
    "PACKAGE",
    "PREFIX",
    "D2DistHandler",
    "checkout",
    "local_path",
    "project_dir",
]

PREFIX = "d2dist://"
# The package's folder (d2dist/), and the folder above it: a checkout when d2dist runs from one.
PACKAGE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(PACKAGE)
# The folder of d2dist:// that an installed d2dist ships inside the package.
SHIPPED = "configs"


def checkout() -> Optional[str]:
    """The d2dist checkout this d2dist runs from (its ``setup.py`` and ``configs/`` beside the
    package), or None for an installed d2dist."""
    is_checkout = os.path.isfile(os.path.join(CHECKOUT, "setup.py")) and os.path.isdir(
        os.path.join(CHECKOUT, SHIPPED)
    )
    return CHECKOUT if is_checkout else None


def project_dir() -> str:
    """What ``d2dist://<path>`` is relative to (but ``d2dist://configs``): the checkout, or the
    working directory of an installed d2dist."""
    return checkout() or os.getcwd()


def local_path(path: str) -> str:
    """The file a ``d2dist://`` path names (see the module docstring); other paths are returned
    as given.

    Raises ``FileNotFoundError`` for ``d2dist://configs/...`` when d2dist runs from no checkout
    and its package has no configs (a copy installed without them), naming both places.
    """
    if not path.startswith(PREFIX):
        return path
    rest = path[len(PREFIX) :]
    root = checkout()
    if root is not None:
        return os.path.normpath(os.path.join(root, rest))
    if rest.split("/", 1)[0] != SHIPPED:
        return os.path.normpath(os.path.join(os.getcwd(), rest))
    if not os.path.isdir(os.path.join(PACKAGE, SHIPPED)):
        raise FileNotFoundError(
            f"{path!r}: {PREFIX}configs names the configs of a d2dist checkout or of an installed "
            f"d2dist's package, but this d2dist is installed at {PACKAGE} without one (no "
            f"configs/ in it, and no checkout at {CHECKOUT}). Reinstall d2dist from a wheel "
            "built by its setup.py (`pip install <checkout>`), install it from its checkout "
            "(`make env` or `pip install -e .`), or give the file's own path."
        )
    return os.path.normpath(os.path.join(PACKAGE, rest))


class D2DistHandler(PathHandler):
    """Resolves ``d2dist://<path>`` with :func:`local_path` (see the module docstring)."""

    def _get_supported_prefixes(self):
        return [PREFIX]

    def _get_local_path(self, path, **kwargs):
        return local_path(path)

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        return PathManager.open(local_path(path), mode, buffering=buffering, **kwargs)

    def _exists(self, path, **kwargs):
        return os.path.exists(local_path(path))

    def _isfile(self, path, **kwargs):
        return os.path.isfile(local_path(path))

    def _isdir(self, path, **kwargs):
        return os.path.isdir(local_path(path))

    def _ls(self, path, **kwargs):
        return os.listdir(local_path(path))

    def _mkdirs(self, path, **kwargs):
        os.makedirs(local_path(path), exist_ok=True)


PathManager.register_handler(D2DistHandler())  # a second registration (a reload) replaces it
