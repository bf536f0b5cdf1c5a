"""The study (d2dist.study; tools/study.py and tools/demo.py are thin): reading runs, planning and
fingerprints, aggregation, the report, and --quick end to end."""

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
    plan,
    study_main,
    table,
    write_report,
)
from d2dist.study.report import METRICS
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
    assert DEMO_METHODS == ("baseline", "reviewkd", "dist", "distplus")


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
    for tool in ("study", "demo"):
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


# ---- --quick, end to end (real runs of two iterations) ------------------------------------------
@pytest.mark.slow
def test_quick_study_trains_the_teacher_then_the_runs_and_writes_the_report(tmp_path):
    out, report = tmp_path / "runs", tmp_path / "report"
    jobs = study_main(["--quick", "--tasks", "faster_rcnn", "--seeds", "4", "5", "--methods",
                       "baseline", "dist", "--jobs", "2", "--output-dir", str(out), "--report",
                       str(report), *TINY])  # fmt: skip
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
    # A second study reuses the finished runs: it only re-evaluates them.
    mtime = os.path.getmtime(out / "faster_rcnn/dist/seed4" / "model_final.pth")
    again = study_main(["--quick", "--tasks", "faster_rcnn", "--seeds", "4", "--methods",
                        "baseline", "dist", "--output-dir", str(out), "--report", str(report),
                        *TINY])  # fmt: skip
    assert {j.name: j.results["bbox/AP"] for j in again} == first
    assert os.path.getmtime(out / "faster_rcnn/dist/seed4" / "model_final.pth") == mtime
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
def test_the_demo_runs_the_demo_defaults(monkeypatch):
    seen = {}
    monkeypatch.setattr("d2dist.study.cli.study_main",
                        lambda argv, defaults: seen.update(defaults, argv=argv))  # fmt: skip
    from d2dist.study import demo_main

    demo_main(["--jobs", "1"])
    assert seen["tasks"] == DEMO_TASKS and seen["methods"] == DEMO_METHODS
    assert seen["seeds"] == [1] and seen["argv"] == ["--jobs", "1"]
