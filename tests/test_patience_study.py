"""The study of patience and consistency (d2dist.study.patience): its plan (arms, schedules,
seeds, in the order that matters when cut short), the offline labels made once per teacher with
the real tool, and its section of docs/results.md (kept when the accuracy study rewrites it)."""

import json
import os
import shlex

import pytest
import torch
from _tiny import SHAPES_TEACHER_TINY, SHAPES_TINY_DATA

from d2dist.engine import Trainer, for_evaluation, load_config
from d2dist.errors import ConfigError
from d2dist.study import patience
from d2dist.study.planning import Job, run_dir
from d2dist.study.report import write_report
from d2dist.study.runs import store_results
from d2dist.study.tasks import TASKS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ["labeled", "offline", "online", "mixup"]


def test_the_plan_runs_every_arm_schedule_and_seed_seed_one_first(tmp_path):
    jobs = patience.plan_patience(ARMS, ["1x", "2x", "4x"], [1, 2, 3], str(tmp_path))
    teacher, students = jobs[0], jobs[1:]
    assert teacher.name == "faster_rcnn/teacher" and teacher.method is None
    assert len(students) == 4 * 3 * 3 and len({j.fingerprint for j in jobs}) == len(jobs)
    order = [(j.seed, j.name.split("/")[2].split("_")[1]) for j in students]
    assert order[:12] == [(1, s) for s in ("1x", "2x", "4x") for _ in ARMS]  # seed 1, all
    assert {s for _, s in order[12:28]} == {"1x", "2x"} and {s for _, s in order[28:]} == {"4x"}
    for job in students:
        opts = dict(zip(job.opts[::2], job.opts[1::2]))
        factor = {"1x": 1, "2x": 2, "4x": 4}[job.name.split("/")[2].split("_")[1]]
        assert opts["SOLVER.MAX_ITER"] == str(600 * factor)
        assert opts["SOLVER.STEPS"] == f"({480 * factor},{570 * factor})"
        assert opts["MODEL.DISTILL.TEACHER.WEIGHTS"].endswith("faster_rcnn/teacher/model_final.pth")
        assert job.needs_teacher and os.path.isfile(os.path.join(REPO, job.config))
        offline = job.args[:2] == ["--coco-dataset", patience.PSEUDO]
        assert offline == job.name.split("/")[2].startswith("offline")
    # the study's own teacher: the same run as the accuracy study's
    assert teacher.config == TASKS["faster_rcnn"].teacher
    # the default: the later seeds at 1x and 2x only (seed 1's 4x runs alone)
    short = patience.plan_patience(ARMS, ["1x", "2x", "4x"], [1, 2, 3], str(tmp_path),
                                   later_schedules=["1x", "2x"])  # fmt: skip
    assert [j.name for j in short] == [j.name for j in jobs if "_4x" not in j.name or j.seed == 1]
    with pytest.raises(ConfigError, match=r"\['3x'\]"):
        patience.plan_patience(ARMS, ["1x"], [1, 2], str(tmp_path), later_schedules=["3x"])


def test_the_arms_configs_differ_only_in_their_data_labels_and_mixup():
    cfgs = {a.name: load_config(os.path.join(REPO, a.config), ["MODEL.DEVICE", "cpu"],
                                coco_datasets=[]) if a.name != "offline" else None
            for a in patience.ARMS}  # fmt: skip
    assert cfgs["labeled"].DATASETS.TRAIN == ("d2dist_shapes_train",)
    assert cfgs["online"].DATASETS.TRAIN == ("d2dist_shapes_train", "d2dist_shapes_unlabeled")
    assert cfgs["online"].MODEL.DISTILL.TEACHER_LABELS.SCORE_THRESHOLD == patience.SCORE_THRESHOLD
    assert (
        cfgs["mixup"].MODEL.DISTILL.MIXUP.PROB == 0.5
        and cfgs["online"].MODEL.DISTILL.MIXUP.PROB == 0
    )
    for name in ("online", "mixup"):
        assert cfgs[name].MODEL.DISTILL.LOSSES == cfgs["labeled"].MODEL.DISTILL.LOSSES == ["PKD"]
        assert cfgs[name].SOLVER.MAX_ITER == cfgs["labeled"].SOLVER.MAX_ITER


@pytest.mark.parametrize("argv, message", [
    (["--arms", "nope"], "unknown arm(s) or schedule(s) ['nope']"),
    (["--schedules", "8x"], "['8x']"),
    (["--jobs", "0"], "--jobs 0"),
])  # fmt: skip
def test_bad_arguments_are_refused_with_status_2(argv, message, capsys):
    assert patience.main(argv + ["--report-only"]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(ConfigError) as e:
        patience.patience_main(argv + ["--report-only"])
    assert message in str(e.value)


@pytest.mark.slow
def test_offline_labels_are_made_once_per_teacher_with_the_tool(tmp_path, monkeypatch):
    from detectron2.data import DatasetCatalog

    folder = tmp_path / "images"
    folder.mkdir()
    for r in DatasetCatalog.get("d2dist_shapes_tiny_train")[:3]:
        os.link(r["file_name"], folder / os.path.basename(r["file_name"]))
    monkeypatch.setattr(patience, "unlabeled_dir", lambda: str(folder))
    out = tmp_path / "runs"
    teacher = patience.plan_patience(["offline"], ["1x"], [1], str(out),
                                     SHAPES_TINY_DATA + SHAPES_TEACHER_TINY)[0]  # fmt: skip
    cfg = load_config(os.path.join(REPO, teacher.config), teacher.opts, training=False)
    os.makedirs(run_dir(teacher, str(out)))
    torch.save({"model": Trainer.build_model(for_evaluation(cfg)).state_dict()},
               os.path.join(run_dir(teacher, str(out)), "model_final.pth"))  # fmt: skip
    path = patience.make_offline_labels(teacher, str(out))
    with open(path) as f:
        data = json.load(f)
    assert len(data["images"]) == 3 and data["info"]["score_threshold"] == patience.SCORE_THRESHOLD
    mtime = os.path.getmtime(path)
    assert patience.make_offline_labels(teacher, str(out)) == path  # the same teacher: kept
    assert os.path.getmtime(path) == mtime
    teacher.fingerprint = "another"
    patience.make_offline_labels(teacher, str(out))  # another teacher: labelled again
    assert os.path.getmtime(path) >= mtime and open(path + ".teacher").read().strip() == "another"


def _finished(jobs, out, aps):
    for job, ap in zip(jobs, aps):
        os.makedirs(out / job.name, exist_ok=True)
        (out / job.name / "config.yaml").write_text("SOLVER:\n  MAX_ITER: 600\n")
        job.results = {"bbox/AP": ap, "time_min": 2.0}
        store_results(str(out / job.name), job.fingerprint, job.results)


def test_the_report_section_has_every_cell_with_its_seeds_and_survives_the_study_report(tmp_path):
    out, report = tmp_path / "runs", tmp_path / "docs"
    jobs = patience.plan_patience(ARMS, ["1x", "2x"], [1, 2], str(out))
    aps = [10.0] + [float(i) for i in range(1, len(jobs))]
    done = jobs[:-2]  # the last two runs (seed 2, 2x) did not finish
    _finished(done, out, aps)
    report.mkdir()
    (report / "results.md").write_text("# d2dist study\n\nthe accuracy study's report\n")
    path = patience.write_patience_report(
        done,
        str(out),
        str(report),
        invocation="python " "tools/patience_study.py --seeds 1 2",
        wall_min=None,
    )
    text = open(path).read()
    assert text.startswith("# d2dist study") and "the accuracy study's report" in text
    section = text[text.index(patience.START) :]
    assert "box AP **10.0**" in section  # the teacher's line
    assert "| (a) labeled only | 5.0 ± 5.7 (n=2, 2.0 min) | 9.0 ± 5.7 (n=2, 2.0 min) |" in section
    assert "| 7.0 (n=1, 2.0 min) |" in section  # unfinished cells: fewer seeds, said
    assert os.path.isfile(report / "results_patience_ap.png")
    commands = section[section.index("```\n") + 4 : section.rindex("```")].strip().splitlines()
    assert len(commands) == len(done)
    assert "--coco-dataset" in shlex.split(commands[2])  # the offline arm's command
    # written again: replaced, not appended
    patience.write_patience_report(done, str(out), str(report), invocation="x", wall_min=1.0)
    assert open(path).read().count(patience.START) == 1
    # the accuracy study rewrites results.md and keeps the section
    teacher = Job("faster_rcnn/teacher", "faster_rcnn", TASKS["faster_rcnn"].teacher, [])
    teacher.results = {"bbox/AP": 10.0, "time_min": 5.0}
    (out / "faster_rcnn" / "teacher" / "metrics.json").write_text(json.dumps({"iteration": 1}))
    write_report([teacher], str(out), str(report), prefix="results", invocation="study",
                 wall_min=1.0, parallel=1)  # fmt: skip
    assert open(path).read().count(patience.START) == 1 and "(n=2" in open(path).read()
