"""The README is a landing page: short, its links and anchors (and those of docs/*.md) exist, its
test command is what CI runs, and its quick start runs as written (on a tiny dataset, with
overrides appended that make the models tiny)."""

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TEACHER_TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
MAX_WORDS = 1500


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _prose(text):
    """Markdown without fenced code blocks and inline code (whose brackets are not links)."""
    text = re.sub(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading, seen):
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed (but `-` and
    `_`), spaces to `-`; a repeated anchor gets `-1`, `-2`, ..."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
    n = seen.get(text, 0)
    seen[text] = n + 1
    return text if n == 0 else f"{text}-{n}"


def anchors(path):
    seen = {}
    text = re.sub(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", "", _read(path), flags=re.M | re.S)
    return {slug(h, seen) for h in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M)}


def links(path):
    """The relative link targets of a Markdown page: ``[text](target)``, images, ``src=``."""
    prose = _prose(_read(path))
    found = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)
    found += re.findall(r"""<(?:img|a)\s[^>]*?(?:src|href)=["']([^"']+)["']""", prose)
    return [t for t in found if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # no http:, mailto:


def test_readme_is_a_landing_page():
    words = len(_read(README).split())  # as `wc -w` counts
    assert words < MAX_WORDS, f"README.md has {words} words (at most {MAX_WORDS - 1})"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_relative_links_and_anchors_exist(page):
    bad = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(full):
            bad.append(f"{target}: no file {os.path.relpath(full, REPO)}")
        elif anchor and full.endswith(".md") and not re.fullmatch(r"L\d+(-L\d+)?", anchor):
            if anchor not in anchors(full):
                bad.append(f"{target}: no heading with anchor #{anchor}")
    assert not bad, f"{os.path.relpath(page, REPO)}: " + "; ".join(bad)


def test_the_readme_names_the_two_commands_and_ci_runs_its_test_command():
    block = re.search(r"## The two commands\n+```bash\n(.*?)```", _read(README), flags=re.S)
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]
    ci = [line.strip() for line in _read(os.path.join(REPO, ".ci", "run")).splitlines()]
    ci = [line for line in ci if line and not line.startswith("#")]
    assert ci[-1] == "make test", ".ci/run must end with the README's test command"
    assert not any("pytest" in line or "make " in line for line in ci[:-1])
    makefile = _read(os.path.join(REPO, "Makefile"))
    assert re.search(r"^demo:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)


# --- the quick start, run ---------------------------------------------------------------------

# Overrides appended to each `python tools/train_net.py` command of the quick start, by its config
# file: the tiny data pipeline and widths of tests/_tiny.py, 2 iterations, no downloads (no
# ImageNet weights). The distilled run's teacher is built from the teacher run's config.yaml,
# which holds the teacher's tiny widths already.
_FAST = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip
_R50_TINY = ["MODEL.RESNETS.RES2_OUT_CHANNELS", "16", "MODEL.RESNETS.WIDTH_PER_GROUP", "4"]
TINY = {
    "teacher.yaml": _FAST + SHAPES_TEACHER_TINY,
    "student.yaml": _FAST + SHAPES_STUDENT_TINY + _R50_TINY,
    "distill.yaml": _FAST + SHAPES_STUDENT_TINY + _R50_TINY,
}


def quickstart(text):
    """The README's quick start: ``{file name: content}`` of the blocks marked
    ``<!-- quickstart-file: NAME -->`` and the commands of the block marked ``<!-- quickstart -->``
    (one string per command, continuation lines joined)."""
    fence = r"\s*```[a-z]*\n(.*?)```"
    files = dict(re.findall(r"<!-- quickstart-file: (\S+) -->" + fence, text, flags=re.S))
    blocks = re.findall(r"<!-- quickstart -->" + fence, text, flags=re.S)
    assert files and len(blocks) == 1, "mark the quick start's blocks in the README"
    script = blocks[0].replace("\\\n", " ")
    return files, [line.strip() for line in script.splitlines() if line.strip()]


def _tiny_coco(root):
    """my_data/{train,val}.json and image folders: d2dist's tiny COCO files (two images with a
    person, a car and a dog), keeping the categories they use."""
    from d2dist.data.real_formats import write_tiny_coco

    write_tiny_coco(str(root / "raw"))
    (root / "my_data").mkdir()
    for split, name in (("train2017", "train"), ("val2017", "val")):
        with open(root / "raw" / "coco" / "annotations" / f"instances_{split}.json") as f:
            data = json.load(f)
        used = {a["category_id"] for a in data["annotations"]}
        data["categories"] = [c for c in data["categories"] if c["id"] in used]
        with open(root / "my_data" / f"{name}.json", "w") as f:
            json.dump(data, f)
        shutil.copytree(root / "raw" / "coco" / split, root / "my_data" / name)
    return len(data["categories"])


def test_quickstart_blocks_are_found_and_tiny_overrides_cover_its_runs():
    files, commands = quickstart(_read(README))
    train = [c for c in commands if c.startswith("python tools/train_net.py ")]
    configs = [shlex.split(c)[shlex.split(c).index("--config-file") + 1] for c in train]
    assert sorted(configs) == sorted(TINY) and set(configs) <= set(files)
    assert any(c.startswith("python tools/export_student.py ") for c in commands)


@pytest.mark.slow
def test_quickstart_runs_as_written(tmp_path):
    files, commands = quickstart(_read(README))
    classes = _tiny_coco(tmp_path)
    for name, content in files.items():
        assert f"NUM_CLASSES: {classes}}}" in content or "NUM_CLASSES" not in content, name
        (tmp_path / name).write_text(content)
    os.symlink(os.path.join(REPO, "tools"), tmp_path / "tools")  # `python tools/...` of a checkout
    script = ["set -euo pipefail"]
    for command in commands:
        words = shlex.split(command, comments=True)
        if words[:2] == ["python", "tools/train_net.py"]:
            config = words[words.index("--config-file") + 1]
            command += " " + " ".join(shlex.quote(w) for w in TINY[config])
        script.append(command)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # `python`: this one
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, "\n".join(script) + "\n" + done.stderr[-5000:]
    for run in ("teacher", "student", "distilled"):
        assert (tmp_path / "output" / run / "model_final.pth").is_file(), run
    assert (tmp_path / "output" / "distilled" / "student.pth").is_file()
    assert "DISTILL" not in (tmp_path / "output" / "distilled" / "student.yaml").read_text()
