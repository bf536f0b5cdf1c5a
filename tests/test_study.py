"""The study (d2dist.study; tools/study.py and tools/demo.py are thin): reading runs, planning and
fingerprints, aggregation, the report (one seed reads as one seed), running (progress, threads,
stored results), and --quick end to end: the study, then the demo on its runs."""

import json
import math
import os
import shlex
import subprocess
import sys

import pytest

from d2dist.errors import ConfigError
from d2dist.study import (
    DEMO_METHODS,
    DEMO_TASKS,
    QUICK_ITERS,
    TASKS,
    Job,
    StudyError,
    aggregate,
    code_fingerprint,
    default_output_dir,
    demo_main,
    plan,
    runner,
    study_main,
    table,
    write_report,
)
from d2dist.study.report import METRICS
from d2dist.study.runner import (
    Progress,
    describe_threads,
    read_finished,
    run_jobs,
    thread_env,
    threads_per_run,
)
from d2dist.study.runs import loss_curves, max_iter, read_metrics, training_minutes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "MODEL.DEVICE", "cpu",
    "DATASETS.TRAIN", "('d2dist_shapes_tiny_train',)",
    "DATASETS.TEST", "('d2dist_shapes_tiny_val',)",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
]  # fmt: skip


# ---- reading a run's files while it writes them ----------------------------------------------
def test_max_iter_is_none_until_config_is_written(tmp_path):
    assert max_iter(str(tmp_path)) is None  # no file yet
    (tmp_path / "config.yaml").write_text("")  # truncated, about to be written
    assert max_iter(str(tmp_path)) is None
    (tmp_path / "config.yaml").write_text("SOLVER:\n  MAX_IT")  # half written
    assert max_iter(str(tmp_path)) is None
    (tmp_path / "config.yaml").write_text("SOLVER:\n  MAX_ITER: 1000\n")
    assert max_iter(str(tmp_path)) == 1000


def test_metrics_reader_stops_at_a_line_being_written(tmp_path):
    (tmp_path / "metrics.json").write_text('{"iteration": 19}\n{"iteration": 39}\n{"itera')
    assert read_metrics(str(tmp_path)) == [{"iteration": 19}, {"iteration": 39}]


def test_training_minutes_add_up_every_start_of_a_run(tmp_path):
    assert training_minutes(str(tmp_path)) == 0.0
    (tmp_path / "log.txt").write_text(
        "[11/22 03:46:11] d2.engine.hooks INFO: Total training time: 0:07:36 (0:00:00 on hooks)\n"
        "[11/22 03:58:14] d2.engine.hooks INFO: Total training time: 1:00:30 (0:00:00 on hooks)\n"
    )
    assert abs(training_minutes(str(tmp_path)) - (7.6 + 60.5)) < 1e-9


def test_loss_curves_split_student_and_distillation_losses(tmp_path):
    records = [
        {"iteration": 19, "loss_cls": 1.0, "loss_box_reg": 0.5, "loss_distill_dist": 0.25},
        {"iteration": 39, "loss_cls": 0.5, "loss_box_reg": 0.25, "loss_distill_dist": 0.125},
        {"bbox/AP": 3.0},
    ]
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    curves = loss_curves(str(tmp_path))
    assert curves == {"detection": [(19, 1.5), (39, 0.75)], "distill": [(19, 0.25), (39, 0.125)]}


# ---- tasks and planning -------------------------------------------------------------------------
def test_every_task_and_method_names_an_existing_config():
    assert list(TASKS) == ["faster_rcnn", "retinanet"]
    faster, retina = TASKS["faster_rcnn"].by_name, TASKS["retinanet"].by_name
    assert {"mgd", "fgd", "distplus_head", "distplus_acclim"} <= set(faster)
    assert {"dist", "crosskd", "fgd", "mgd", "pkd"} <= set(retina)
    for task in TASKS.values():
        assert task.methods[0].name == "baseline" and not task.methods[0].distill
        assert os.path.isfile(os.path.join(REPO, task.teacher)), task.teacher
        for m in task.methods:
            assert os.path.isfile(os.path.join(REPO, m.config)), m.config
    assert DEMO_TASKS == ("faster_rcnn",)
    # The strongest two of the study (docs/results.md: PKD +4.7, MGD +4.6) and DIST, the method
    # d2dist was built around.
    assert DEMO_METHODS == ("baseline", "pkd", "mgd", "dist")


def test_plan_trains_each_teacher_once_then_every_method_per_seed(tmp_path):
    jobs = plan(["faster_rcnn", "retinanet"], ["baseline", "dist", "crosskd"], [1, 2],
                str(tmp_path), False, ["A", "1"])  # fmt: skip
    names = [j.name for j in jobs]
    assert names == (["faster_rcnn/teacher"]
                     + [f"faster_rcnn/{m}/seed{s}" for s in (1, 2) for m in ("baseline", "dist")]
                     + ["retinanet/teacher"]
                     + [f"retinanet/{m}/seed{s}" for s in (1, 2)
                        for m in ("baseline", "dist", "crosskd")])  # fmt: skip
    weights = {t: os.path.join(str(tmp_path), t, "teacher", "model_final.pth") for t in TASKS}
    for job in jobs:
        if job.method is None:
            assert job.opts == ["A", "1"]
            continue
        assert job.opts[:4] == ["A", "1", "SEED", str(job.seed)]
        distilled = job.method.name != "baseline"
        assert job.needs_teacher == distilled and job.teacher_name == f"{job.task}/teacher"
        if distilled:
            assert job.opts[-2:] == ["MODEL.DISTILL.TEACHER.WEIGHTS", weights[job.task]]
    # Runs differ by seed; a retrained (other) teacher changes every distilled run.
    assert len({j.fingerprint for j in jobs}) == len(jobs)
    other = plan(["faster_rcnn"], ["baseline", "dist"], [1], str(tmp_path), False, ["A", "2"])
    again = plan(["faster_rcnn"], ["baseline", "dist"], [1], str(tmp_path), False, ["A", "1"])
    assert other[2].fingerprint != jobs[2].fingerprint
    assert again[2].fingerprint == jobs[2].fingerprint


@pytest.mark.slow
def test_the_fingerprint_covers_the_code_that_trains(tmp_path, monkeypatch):
    """Changing any file of the package (here: a copy of it) changes every fingerprint."""
    import d2dist.study.planning as plan_module

    first = code_fingerprint()
    assert first == code_fingerprint()  # computed once per process, and stable
    package = tmp_path / "d2dist"
    subprocess.run(["cp", "-r", os.path.join(REPO, "d2dist"), str(package)], check=True)
    monkeypatch.setattr(plan_module, "__file__", str(package / "study" / "plan.py"))
    plan_module.code_fingerprint.cache_clear()
    try:
        assert plan_module.code_fingerprint() == first  # the same files
        with open(package / "modeling" / "terms" / "kd.py", "a") as f:
            f.write("\n# a change\n")
        plan_module.code_fingerprint.cache_clear()
        assert plan_module.code_fingerprint() != first
    finally:
        plan_module.code_fingerprint.cache_clear()


def test_plan_without_distillation_has_no_teacher_and_quick_shortens(tmp_path):
    jobs = plan(["faster_rcnn"], ["baseline"], [5], str(tmp_path), True, [])
    assert [j.name for j in jobs] == ["faster_rcnn/baseline/seed5"]
    opts = dict(zip(jobs[0].opts[::2], jobs[0].opts[1::2]))
    assert opts["SOLVER.MAX_ITER"] == str(QUICK_ITERS["student"])
    assert opts["SEED"] == "5"


def test_quick_runs_never_share_the_study_directory():
    assert default_output_dir(False).endswith(os.path.join("output", "study"))
    assert default_output_dir(True) != default_output_dir(False)


def test_by_default_each_chosen_task_runs_all_its_own_methods(tmp_path):
    jobs = plan(["retinanet"], None, [1], str(tmp_path), False, [])
    assert [j.name for j in jobs] == ["retinanet/teacher"] + [
        f"retinanet/{m.name}/seed1" for m in TASKS["retinanet"].methods
    ]
    both = plan(list(TASKS), None, [1], str(tmp_path), False, [])
    assert len(both) == sum(1 + len(t.methods) for t in TASKS.values())


def test_plan_rejects_unknown_tasks_methods_and_no_seeds(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown method\(s\) \['dsit'\]"):
        plan(["faster_rcnn"], ["dsit"], [1], str(tmp_path), False, [])
    with pytest.raises(ConfigError, match=r"unknown method\(s\) \['crosskd'\] for task"):
        plan(["faster_rcnn"], ["crosskd"], [1], str(tmp_path), False, [])
    with pytest.raises(ConfigError, match=r"unknown task\(s\) \['yolo'\]"):
        plan(["yolo"], ["baseline"], [1], str(tmp_path), False, [])
    with pytest.raises(ConfigError, match="--seeds is empty"):
        plan(["faster_rcnn"], ["baseline"], [], str(tmp_path), False, [])


@pytest.mark.slow
def test_the_tools_are_thin_and_fail_with_status_2_on_bad_arguments():
    for tool in ("study", "demo", "visualize"):
        with open(os.path.join(REPO, "tools", f"{tool}.py")) as f:
            text = f.read()
        assert "sys.path" not in text and len(text.splitlines()) < 30
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", "study.py"), "--tasks",
                           "yolo"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "study.py: error: unknown task(s) ['yolo']" in done.stderr
    assert "Traceback" not in done.stderr


# ---- aggregation and report ---------------------------------------------------------------------
def _job(method, seed, ap, task="faster_rcnn"):
    m = TASKS[task].by_name[method]
    job = Job(f"{task}/{method}/seed{seed}", task, m.config, ["SEED", str(seed)], m, seed)
    job.results = {"time_min": 2.0, **{f"bbox/{k}": ap for k in METRICS}}
    return job


def test_aggregate_means_stds_gains_and_honest_verdicts():
    jobs = [
        *(_job("baseline", s, ap) for s, ap in [(1, 10.0), (2, 11.0), (3, 12.0)]),
        *(_job("dist", s, ap) for s, ap in [(1, 14.0), (2, 15.0), (3, 16.0)]),
        *(_job("kd", s, ap) for s, ap in [(1, 9.0), (2, 12.0), (3, 13.0)]),
        *(_job("pkd", s, ap) for s, ap in [(1, 5.0), (2, 6.0), (3, 7.0)]),
        _job("baseline", 1, 99.0, task="retinanet"),  # another task: not mixed in
    ]
    rows = {r["method"]: r for r in aggregate(jobs, "faster_rcnn")}
    assert rows["baseline"]["mean"] == pytest.approx(11.0)
    assert rows["baseline"]["std"] == pytest.approx(1.0)
    assert "gain" not in rows["baseline"]
    assert rows["dist"]["gain"] == pytest.approx(4.0)
    assert rows["dist"]["verdict"] == "helps"  # 4 > 2 * sqrt(1/3 + 1/3)
    assert rows["kd"]["gain"] == pytest.approx(1 / 3)
    assert rows["kd"]["verdict"] == "within noise"
    assert rows["pkd"]["verdict"] == "hurts"
    assert rows["dist"]["ap"] == [14.0, 15.0, 16.0] and rows["dist"]["seeds"] == [1, 2, 3]
    tiny_loss = aggregate([_job("baseline", 1, 10.0), _job("kd", 1, 9.96)], "faster_rcnn")
    assert "| +0.0 " in table(tiny_loss)  # no "-0.0"
    one = aggregate([_job("baseline", 1, 10.0), _job("dist", 1, 12.0)], "faster_rcnn")
    assert one[1]["verdict"] == "one seed" and math.isnan(one[1]["std"])


def test_report_has_a_section_per_task_the_charts_and_commands_that_paste(tmp_path):
    out = tmp_path / "runs"
    jobs = []
    for task in ("faster_rcnn", "retinanet"):
        teacher = Job(f"{task}/teacher", task, TASKS[task].teacher, [])
        teacher.results = {"time_min": 5.0, "bbox/AP": 20.0 if task == "faster_rcnn" else 30.0}
        jobs.append(teacher)
        jobs += [_job(m, s, ap, task) for m, aps in [("baseline", (10.0, 12.0)),
                                                     ("reviewkd", (15.0, 15.5))]
                 for s, ap in zip((1, 2), aps)]  # fmt: skip
    for job in jobs:
        os.makedirs(out / job.name)
        (out / job.name / "metrics.json").write_text(
            json.dumps({"iteration": 19, "loss_cls": 1.0, "loss_distill_reviewkd": 0.5}) + "\n"
        )
        (out / job.name / "config.yaml").write_text(
            "DATASETS:\n  TEST: [d2dist_shapes_tiny_val]\nSOLVER:\n  MAX_ITER: 600\n"
            "  IMS_PER_BATCH: 4\n  BASE_LR: 0.02\n  STEPS: [480, 570]\n"
        )
    job = jobs[1]
    job.opts = ["SOLVER.STEPS", "(1,)", "DATASETS.TEST", "('d2dist_shapes_tiny_val',)"]
    path = write_report(jobs, str(out), str(tmp_path / "report"), prefix="results",
                        invocation="python tools/study.py --seeds 1 2", wall_min=3.0,
                        parallel=2)  # fmt: skip
    text = open(path).read()
    assert "## Faster R-CNN R18-FPN from R50-FPN" in text and "## RetinaNet" in text
    assert "box AP **20.0**" in text and "box AP **30.0**" in text  # each task's teacher
    assert "Box AP on `d2dist_shapes_tiny_val`" in text  # the dataset the runs used
    assert "600 iterations of 4 images, SGD lr 0.02 (x0.1 at 480, 570)" in text
    assert "| ReviewKD" in text and "+4.2" in text and "15.0 / 15.5" in text
    assert "python tools/study.py --seeds 1 2" in text
    assert "report rewritten" not in text  # a timed run
    commands = text[text.index("```\n") + 4 : text.rindex("```")].strip().splitlines()
    assert len(commands) == len(jobs)
    argv = shlex.split(commands[1])  # pastes into a shell: tuples quoted
    assert argv[:3] == ["python", "tools/train_net.py", "--config-file"]
    assert argv[argv.index("SOLVER.STEPS") + 1] == "(1,)"
    assert argv[argv.index("DATASETS.TEST") + 1] == "('d2dist_shapes_tiny_val',)"
    for png in ("results_faster_rcnn_ap.png", "results_faster_rcnn_loss_curves.png",
                "results_retinanet_ap.png", "results_retinanet_loss_curves.png"):  # fmt: skip
        assert f"]({png})" in text
        with open(tmp_path / "report" / png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_chart_legend_sits_beside_the_bars(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from d2dist.study.report import plot

    legends = []
    original = plt.Figure.savefig

    def capture(fig, *args, **kwargs):
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None and ax.patches:  # the bar chart
                fig.canvas.draw()
                box = legend.get_window_extent()
                bars = [p.get_window_extent() for p in ax.patches]
                legends.append(not any(box.overlaps(b) for b in bars))
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", capture)
    rows = aggregate([_job("baseline", 1, 10.0), _job("dist", 1, 30.0)], "faster_rcnn")
    plot(rows, 35.0, [], str(tmp_path), str(tmp_path), "x", "title")
    assert legends == [True]


def test_one_seed_reads_as_one_seed_in_the_table_report_and_chart(tmp_path, monkeypatch):
    """One run per method: its AP, no mean, spread, verdict or error bars (the study keeps them)."""
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    charts = []
    original = plt.Figure.savefig

    def capture(fig, *args, **kwargs):
        for ax in fig.axes:
            if ax.patches:  # the bar chart
                errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
                charts.append((len(errorbars), [t.get_text() for t in ax.get_legend().texts]))
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", capture)
    jobs = [_job("baseline", 1, 10.0), _job("pkd", 1, 14.0)]
    text = table(aggregate(jobs, "faster_rcnn"))
    header = text.splitlines()[0]
    assert "box AP " in header and "mean" not in header and "std" not in header
    assert "verdict" not in header and "per seed" not in header
    assert "| +4.0 " in text
    path = write_report(jobs, str(tmp_path / "runs"), str(tmp_path / "report"), prefix="demo",
                        invocation="d2dist-demo", wall_min=1.0, parallel=2,
                        threads="1 thread(s) per run", next_steps=["- Export it."])  # fmt: skip
    report = open(path).read()
    assert "One seed (1)" in report and "(1 thread(s) per run)" in report
    assert "mean" not in report and "±" not in report and "std" not in report
    assert "## Next steps\n\n- Export it.\n" in report
    assert charts == [(0, ["students (seed 1)"])]
    # Several seeds keep the spread: error bars, and the mean ± std legend.
    charts.clear()
    jobs += [_job("baseline", 2, 11.0), _job("pkd", 2, 15.0)]
    write_report(jobs, str(tmp_path / "runs"), str(tmp_path / "report"), prefix="study",
                 invocation="d2dist-study", wall_min=1.0, parallel=2)  # fmt: skip
    assert charts == [(1, ["students (mean ± std over seeds)"])]
    assert "box AP mean" in table(aggregate(jobs, "faster_rcnn"))


# ---- running: progress, threads, stored results --------------------------------------------------
def test_progress_moves_between_records_at_a_steady_pace():
    """metrics.json gets a record every 20 iterations; the bar moves on at the recorded pace in
    between, never past the next record nor backwards, with a time left that does not swing."""
    progress = Progress(total=100)
    assert progress.estimate(0.0) == (0, "starting")  # building the model, loading the data
    progress.observe([{"iteration": 19, "time": 0.5}], now=30.0)  # a slow start does not count
    assert progress.estimate(30.0) == (20, "00:40 left, 0.50 s/it")
    assert progress.estimate(32.0) == (24, "00:38 left, 0.50 s/it")  # every poll, it moves
    assert progress.estimate(60.0)[0] == 39  # never past the next record
    progress.observe([{"iteration": 19, "time": 0.5}, {"iteration": 39, "time": 0.5}], now=61.0)
    assert progress.estimate(61.0) == (40, "00:30 left, 0.50 s/it")
    progress.observe([{"iteration": 59, "time": 0.5}], now=62.0)  # a record arrives early
    assert progress.estimate(62.0)[0] == 60
    slower = [{"iteration": i, "time": 0.5} for i in (19, 39, 59)] + [{"iteration": 79, "time": 2}]
    progress.observe(slower, now=70.0)  # one slow window: the median pace holds
    assert progress.estimate(70.0) == (80, "00:10 left, 0.50 s/it")
    progress.observe([{"iteration": 99, "time": 0.5}], now=80.0)
    assert progress.estimate(80.0) == (100, "evaluating")
    # Without step times: the wall clock between records; a resumed run starts where it was.
    plain = Progress(total=100)
    plain.observe([{"iteration": 19}], now=0.0)
    assert plain.estimate(5.0) == (20, "")
    plain.observe([{"iteration": 19}, {"iteration": 39}], now=10.0)
    assert plain.estimate(11.0) == (42, "00:29 left, 0.50 s/it")
    resumed = Progress(total=100, earlier=1)
    resumed.observe([{"iteration": 59, "time": 0.5}], now=0.0)
    assert resumed.estimate(5.0) == (60, "starting")
    finished = Progress(total=100, earlier=1)  # an earlier run that finished: only evaluated
    finished.observe([{"iteration": 99, "time": 0.5}], now=0.0)
    assert finished.estimate(5.0) == (100, "evaluating")


def test_parallel_runs_split_the_cores_unless_the_user_chose(monkeypatch):
    monkeypatch.setattr(runner, "cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert threads_per_run(2) == (4, 8) and threads_per_run(16) == (1, 8)
    env = thread_env(4)
    assert env["OMP_NUM_THREADS"] == "4" and env["MKL_NUM_THREADS"] == "4"
    assert describe_threads(2).startswith("4 thread(s) per run side by side (8 cores / 2 run(s)")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_env(4)["OMP_NUM_THREADS"] == "3" and "MKL_NUM_THREADS" not in thread_env(4)
    assert describe_threads(2) == "every run with OMP_NUM_THREADS=3, as set in the environment"


FAKE_TRAIN_NET = """
import json, os, sys
out, resume = sys.argv[1], sys.argv[2] == "1"
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "calls.txt"), "a") as f:
    f.write(("evaluate" if resume else "train") + " " + os.environ["OMP_NUM_THREADS"] + "\\n")
final = os.path.join(out, "model_final.pth")
with open(os.path.join(out, "config.yaml"), "w") as f:  # as every start of a run writes it
    f.write("SOLVER:\\n  MAX_ITER: 40\\n")
if not resume:
    with open(os.path.join(out, "metrics.json"), "a") as f:
        for it in (19, 39):
            f.write(json.dumps({"iteration": it, "time": 0.01, "loss_cls": 1.0}) + "\\n")
    with open(final, "wb") as f:
        f.write(b"weights")
with open(final, "rb") as f:
    ap = float(len(f.read()))  # the model's "AP": its checkpoint's size
with open(os.path.join(out, "metrics.json"), "a") as f:
    f.write(json.dumps({"bbox/AP": ap, **{f"bbox/{k}": ap for k in METRICS}}) + "\\n")
"""


def test_finished_runs_are_read_not_evaluated_again_unless_config_or_checkpoint_changed(
    tmp_path, monkeypatch, capsys
):
    """Each run is a tools/train_net.py stand-in that counts its calls: a finished run's stored
    results are read while its config.yaml and model_final.pth are unchanged."""
    script = tmp_path / "fake_train_net.py"
    script.write_text(f"METRICS = {METRICS!r}\n" + FAKE_TRAIN_NET)

    def command(job, root, resume=False):
        return [sys.executable, str(script), os.path.join(root, job.name), str(int(resume))]

    monkeypatch.setattr(runner, "command", command)
    monkeypatch.setattr(runner, "POLL_S", 0.05)
    monkeypatch.setattr(runner, "cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out = tmp_path / "runs"

    def jobs():
        teacher = Job("faster_rcnn/teacher", "faster_rcnn", "t.yaml", [], fingerprint="t1")
        student = _job("dist", 1, 0.0)
        student.results, student.needs_teacher, student.fingerprint = {}, True, "s1"
        return [teacher, student]

    def calls(name):
        return (out / name / "calls.txt").read_text().splitlines()

    first = jobs()
    run_jobs(first, str(out), parallel=2, fresh=False)
    assert [j.results["bbox/AP"] for j in first] == [7.0, 7.0]
    assert calls("faster_rcnn/teacher") == ["train 4"]  # alone: every core
    assert calls("faster_rcnn/dist/seed1") == ["train 2"]  # side by side: its share
    capsys.readouterr()

    again = jobs()
    run_jobs(again, str(out), parallel=2, fresh=False)
    assert [j.results for j in again] == [j.results for j in first]
    assert calls("faster_rcnn/teacher") == ["train 4"] and calls("faster_rcnn/dist/seed1") == [
        "train 2"
    ]  # nothing ran
    assert "2 of 2 run(s) finished earlier" in capsys.readouterr().out
    read = jobs()
    read_finished(read, str(out))  # --report-only reads the same
    assert [j.results for j in read] == [j.results for j in first]

    # A checkpoint with other bytes is evaluated again; one merely touched is not.
    with open(out / "faster_rcnn/teacher/model_final.pth", "wb") as f:
        f.write(b"other weights")
    os.utime(out / "faster_rcnn/dist/seed1/model_final.pth", ns=(0, 0))
    changed = jobs()
    run_jobs(changed, str(out), parallel=2, fresh=False)
    assert calls("faster_rcnn/teacher") == ["train 4", "evaluate 4"]
    assert changed[0].results["bbox/AP"] == 13.0
    assert calls("faster_rcnn/dist/seed1") == ["train 2"]
    # A changed config.yaml is evaluated again (the run rewrites it from the job's config).
    with open(out / "faster_rcnn/dist/seed1/config.yaml", "a") as f:
        f.write("SEED: 5\n")
    run_jobs(jobs(), str(out), parallel=2, fresh=False)
    assert calls("faster_rcnn/dist/seed1") == ["train 2", "evaluate 2"]
    assert calls("faster_rcnn/teacher") == ["train 4", "evaluate 4"]
    # Another run of the job (other code, config, seed or teacher) trains anew.
    other = jobs()
    other[1].fingerprint = "s2"
    run_jobs(other, str(out), parallel=2, fresh=False)
    assert calls("faster_rcnn/dist/seed1") == ["train 2"]  # a new directory
    assert calls("faster_rcnn/teacher") == ["train 4", "evaluate 4"]


# ---- --quick, end to end (real runs of two iterations) ------------------------------------------
QUICK = ["--quick", "--tasks", "faster_rcnn", "--methods", "baseline", "dist"]


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    """A --quick study of two seeds (so one seed) of the teacher, the baseline and DIST, run once
    for the tests below: ``(runs folder, report folder, its jobs)``."""
    root = tmp_path_factory.mktemp("quick")
    out, report = root / "runs", root / "report"
    jobs = study_main([*QUICK, "--seeds", "4", "5", "--jobs", "2", "--output-dir", str(out),
                       "--report", str(report), *TINY])  # fmt: skip
    return out, report, jobs


def _logs(out, jobs):
    """The size of each run's logs: a run started again (trained or evaluated) makes them grow."""
    return {j.name: [os.path.getsize(out / j.name / f) for f in ("stdout.txt", "log.txt")]
            for j in jobs}  # fmt: skip


@pytest.mark.slow
def test_quick_study_trains_the_teacher_then_the_runs_and_writes_the_report(quick_study):
    out, report, jobs = quick_study
    assert [j.name for j in jobs] == ["faster_rcnn/teacher", "faster_rcnn/baseline/seed4",
                                      "faster_rcnn/dist/seed4"]  # one seed  # fmt: skip
    for job in jobs:
        assert "bbox/AP" in job.results, job.name
        assert os.path.isfile(out / job.name / "model_final.pth")
        with open(out / job.name / "log.txt") as f:
            assert "\x1b[" not in f.read()  # no terminal colour codes in the log
    first = {j.name: j.results["bbox/AP"] for j in jobs}
    text = (report / "results_quick.md").read_text()
    assert "| student baseline" in text and "| DIST (RoI logits)" in text
    assert (report / "results_quick_faster_rcnn_ap.png").is_file()
    # A second study reads the finished runs' stored results: no run starts again, not even to
    # evaluate (their logs do not grow).
    mtime = os.path.getmtime(out / "faster_rcnn/dist/seed4" / "model_final.pth")
    logs = _logs(out, jobs)
    again = study_main([*QUICK, "--seeds", "4", "--output-dir", str(out), "--report", str(report),
                        *TINY])  # fmt: skip
    assert {j.name: j.results["bbox/AP"] for j in again} == first
    assert os.path.getmtime(out / "faster_rcnn/dist/seed4" / "model_final.pth") == mtime
    assert _logs(out, jobs) == logs
    # --report-only reads the finished runs and trains nothing; unfinished runs are named.
    args = ["--quick", "--tasks", "faster_rcnn", "--output-dir", str(out), "--report",
            str(report / "again"), *TINY]  # fmt: skip
    jobs = study_main(["--methods", "baseline", "dist", "--seeds", "4", "--report-only", *args])
    assert {j.name: j.results["bbox/AP"] for j in jobs} == first
    assert (
        "rewritten from them by `--report-only`" in (report / "again/results_quick.md").read_text()
    )
    with pytest.raises(StudyError, match=r"have not finished .*\['faster_rcnn/kd/seed1'\]"):
        study_main(["--methods", "kd", "--seeds", "1", "--report-only", *args])


@pytest.mark.slow
def test_the_demo_reads_one_seed_with_pictures_and_next_steps(quick_study, tmp_path, capsys):
    """The demo on the study's finished runs: it reads their stored results (starts nothing),
    speaks of one seed, draws the predictions and closes with the next steps."""
    out, _, jobs = quick_study
    first = {j.name: j.results["bbox/AP"] for j in jobs}
    logs = _logs(out, jobs)
    capsys.readouterr()
    demo = demo_main(["--quick", "--methods", "baseline", "dist", "--seeds", "4", "--output-dir",
                      str(out), "--report", str(tmp_path), *TINY])  # fmt: skip
    assert {j.name: j.results["bbox/AP"] for j in demo} == first
    assert _logs(out, jobs) == logs
    printed = capsys.readouterr().out
    text = (tmp_path / "demo.md").read_text()
    for shown in (printed, text):
        assert "box AP mean" not in shown and "mean ± std" not in shown and "| std" not in shown
        assert "verdict" not in shown and "per seed" not in shown
        assert "d2dist-export --run-dir" in shown and "python tools/export_student.py" in shown
        assert "docs/getting_started.md" in shown
    assert "One seed (4)" in text
    assert "thread(s) per run" in text or "OMP_NUM_THREADS=" in text  # the threads of the runs
    assert "Next steps:" in printed and str(out / "faster_rcnn/dist/seed4") in printed
    assert "## Next steps" in text and "## Predictions" in text
    pictures = [tmp_path / f"demo_predictions_{k}.png" for k in (1, 2, 3)]
    for png in pictures:
        assert f"]({png.name})" in text
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "study_results.json" in printed  # says that it read stored results


@pytest.mark.slow
def test_the_demo_runs_the_demo_defaults(monkeypatch):
    seen = {}
    monkeypatch.setattr("d2dist.study.cli.study_main",
                        lambda argv, defaults: seen.update(defaults, argv=argv))  # fmt: skip
    demo_main(["--jobs", "1"])
    assert seen["tasks"] == DEMO_TASKS and seen["methods"] == DEMO_METHODS
    assert seen["seeds"] == [1] and seen["argv"] == ["--jobs", "1"]
    assert seen["pictures"] and seen["next_steps"]  # closes with pictures and next steps
