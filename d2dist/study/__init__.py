"""The seeded accuracy study on the built-in dataset, its short version, the demo, and pictures
of predictions.

The entry points (``d2dist.cli.study``, ``.demo``, ``.visualize``) call :func:`main` with
:func:`study_main`, :func:`demo_main` or :func:`visualize_main`; the pieces: the tasks and methods
(:mod:`.tasks`), planning and fingerprints (:mod:`.planning`), running (:mod:`.runner`), reading
runs and their stored results (:mod:`.runs`), the report (:mod:`.report`), pictures of
predictions (:mod:`.pictures`).
"""

from .cli import demo_main, main, study_main, visualize_main
from .pictures import PictureModel, draw_predictions, run_model
from .planning import QUICK_ITERS, Job, StudyError, code_fingerprint, default_output_dir, plan
from .report import aggregate, table, write_report
from .tasks import DEMO_METHODS, DEMO_TASKS, TASKS, Method, Task

__all__ = [
    "DEMO_METHODS",
    "DEMO_TASKS",
    "Job",
    "Method",
    "PictureModel",
    "QUICK_ITERS",
    "StudyError",
    "TASKS",
    "Task",
    "aggregate",
    "code_fingerprint",
    "default_output_dir",
    "demo_main",
    "draw_predictions",
    "main",
    "plan",
    "run_model",
    "study_main",
    "table",
    "visualize_main",
    "write_report",
]
