"""Running the study's jobs: side by side on the CPU cores, each a ``tools/train_net.py`` process
with a progress bar; runs of the same job are reused (re-evaluated) or resumed."""

import os
import subprocess
import time
from typing import List

from tqdm import tqdm

from ..file_io import CHECKOUT
from .planning import Job, StudyError, command, run_dir
from .runs import final_results, max_iter, read_metrics

__all__ = ["read_finished", "run_jobs"]


def _stamp(out: str) -> str:
    return os.path.join(out, "study_fingerprint.txt")


def holds_same_run(job: Job, out: str) -> bool:
    """Whether ``out`` holds a run of exactly this job (its fingerprint stamp matches)."""
    stamp = _stamp(out)
    if not os.path.isfile(stamp):
        return False
    with open(stamp) as f:
        return f.read().strip() == job.fingerprint


def _prepare(job: Job, out_root: str, fresh: bool) -> bool:
    """Make the job's directory; True when it holds an earlier run of the same job to resume.
    A directory holding another run (another config, code, seed or teacher) is moved aside."""
    out = run_dir(job, out_root)
    resume = False
    if os.path.isdir(out):
        if holds_same_run(job, out) and not fresh:
            resume = True
        else:
            aside = f"{out}.old-{time.strftime('%Y%m%d-%H%M%S')}"
            os.rename(out, aside)
            tqdm.write(f"[{job.name}] earlier run moved aside to {aside}")
    os.makedirs(out, exist_ok=True)
    with open(_stamp(out), "w") as f:
        f.write(job.fingerprint + "\n")
    return resume


class _Running:
    def __init__(self, job: Job, out_root: str, fresh: bool, threads: int, slot: int):
        self.job, self.out, self.slot = job, run_dir(job, out_root), slot
        resume = _prepare(job, out_root, fresh)
        self.cmd = command(job, out_root, resume)
        self.log_path = os.path.join(self.out, "stdout.txt")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            self.cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=CHECKOUT, env=env
        )
        self.bar = tqdm(desc=f"{job.name:>30}", unit="it", position=slot, leave=True)

    def update(self) -> None:
        self.bar.total = self.bar.total or max_iter(self.out)
        records = [r for r in read_metrics(self.out) if "iteration" in r]
        if records:
            self.bar.n = min(records[-1]["iteration"] + 1, self.bar.total or float("inf"))
            self.bar.refresh()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        self.log.close()
        self.bar.close()


def run_jobs(jobs: List[Job], out_root: str, *, parallel: int, fresh: bool) -> None:
    """Run the jobs, ``parallel`` at a time (a task's distilled runs wait for its teacher, which
    trains alone on all cores); fills each job's ``results``. A failed run stops the others and
    raises :class:`StudyError` with its command and the tail of its log."""
    cores = os.cpu_count() or 1
    pending, running, done = list(jobs), [], set()
    try:
        while pending or running:
            for job in list(pending):
                alone = job.method is None  # a teacher: every distilled run of its task waits
                if len(running) >= parallel or (running and alone):
                    break
                if any(r.job.method is None for r in running):
                    break
                if job.needs_teacher and job.teacher_name not in done:
                    continue
                pending.remove(job)
                free = min(set(range(parallel)) - {r.slot for r in running})
                threads = cores if alone else max(1, cores // parallel)
                running.append(_Running(job, out_root, fresh, threads, free))
            time.sleep(2)
            for r in list(running):
                r.update()
                if r.proc.poll() is None:
                    continue
                running.remove(r)
                r.stop()
                if r.proc.returncode != 0:
                    with open(r.log_path) as f:
                        tail = f.read().splitlines()[-30:]
                    raise StudyError(
                        f"run {r.job.name!r} failed (exit {r.proc.returncode}); command:\n"
                        f"  {' '.join(r.cmd)}\nlast lines of {r.log_path}:\n" + "\n".join(tail)
                    )
                r.job.results = final_results(r.out)
                if not r.job.results:
                    raise StudyError(f"run {r.job.name!r} ended without COCO results in {r.out}")
                done.add(r.job.name)
    finally:  # never leave a training run behind (Ctrl-C, or an error here)
        for r in running:
            r.stop()


def read_finished(jobs: List[Job], out_root: str) -> None:
    """Fill each job's ``results`` from its finished run; raise naming the runs that are not."""
    missing = []
    for job in jobs:
        out = run_dir(job, out_root)
        job.results = final_results(out) if holds_same_run(job, out) else {}
        if not job.results:
            missing.append(job.name)
    if missing:
        raise StudyError(
            f"--report-only, but these runs have not finished (with this code, config, seed and "
            f"teacher) in {out_root}: {missing}. Run the study without --report-only first."
        )
