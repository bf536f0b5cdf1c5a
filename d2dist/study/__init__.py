"""The seeded accuracy study on the built-in dataset, and its short version, the demo.

``tools/study.py`` and ``tools/demo.py`` call :func:`main` with :func:`study_main` or
:func:`demo_main`; the pieces: the tasks and methods (:mod:`.tasks`), planning and fingerprints
(:mod:`.planning`), running (:mod:`.runner`), reading runs (:mod:`.runs`), the report (:mod:`.report`).
"""

from .cli import demo_main, main, study_main
from .planning import QUICK_ITERS, Job, StudyError, code_fingerprint, default_output_dir, plan
from .report import aggregate, table, write_report
from .tasks import DEMO_METHODS, DEMO_TASKS, TASKS, Method, Task

__all__ = [
    "DEMO_METHODS",
    "DEMO_TASKS",
    "Job",
    "Method",
    "QUICK_ITERS",
    "StudyError",
    "TASKS",
    "Task",
    "aggregate",
    "code_fingerprint",
    "default_output_dir",
    "demo_main",
    "main",
    "plan",
    "study_main",
    "table",
    "write_report",
]
