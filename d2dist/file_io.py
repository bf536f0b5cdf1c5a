"""``d2dist://`` paths: files of the d2dist checkout, from any working directory.

Detectron2 names files of its own namespace ``detectron2://...`` through a handler of its
``PathManager``; d2dist registers one more, with iopath's public ``register_handler``, for the
checkout d2dist runs from: ``d2dist://configs/Shapes-Detection/faster_rcnn_R50_FPN_3x.yaml`` is that
config file and ``d2dist://output/study/faster_rcnn/teacher/model_final.pth`` the teacher that ``make demo``
writes, whatever the working directory. The shipped configs name their teachers this way, so they
run from anywhere, through d2dist's tools and a user's own ``train_net.py`` alike (Detectron2's
config merge and checkpointer read through its ``PathManager``).

A relative path without a prefix keeps Detectron2's meaning: relative to the working directory.
"""

import os

from detectron2.utils.file_io import PathHandler, PathManager

__all__ = ["CHECKOUT", "PREFIX", "D2DistHandler", "local_path"]

PREFIX = "d2dist://"
# The checkout: the directory holding the d2dist package (an editable install, `make env`).
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def local_path(path: str) -> str:
    """The file a ``d2dist://`` path names in the checkout (other paths are returned as given).

    Raises ``FileNotFoundError`` when d2dist is not run from a checkout (an installed copy has
    no ``configs/`` beside it), naming the checkout it looked for.
    """
    if not path.startswith(PREFIX):
        return path
    if not os.path.isdir(os.path.join(CHECKOUT, "configs")):
        raise FileNotFoundError(
            f"{path!r}: {PREFIX} paths name files of a d2dist checkout, but this d2dist is "
            f"installed at {CHECKOUT} without one (no configs/ there). Install d2dist from its "
            "checkout (`make env` or `pip install -e .`), or give the file's own path."
        )
    return os.path.normpath(os.path.join(CHECKOUT, path[len(PREFIX) :]))


class D2DistHandler(PathHandler):
    """Resolves ``d2dist://<path>`` to ``<checkout>/<path>`` (see the module docstring)."""

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


PathManager.register_handler(D2DistHandler())  # a second registration (a reload) replaces it
