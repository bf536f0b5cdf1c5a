"""An exported student loaded by plain Detectron2 in a process where ``import d2dist`` fails, and
the same images through the distillation run's own model, for comparing their predictions."""

import os
import subprocess
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from d2dist.config import get_cfg

# Loads the exported student with d2dist unimportable and saves its predictions on fixed images.
PLAIN = """
import sys
sys.modules["d2dist"] = None  # `import d2dist` now fails
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
try:
    import d2dist  # noqa: F401
    raise SystemExit("d2dist is importable")
except ImportError:
    pass
cfg = get_cfg()
cfg.merge_from_file(sys.argv[1])  # no set_new_allowed
cfg.MODEL.DEVICE = "cpu"
model = build_model(cfg).eval()
DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
torch.manual_seed(0)
batch = [{"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64} for _ in range(2)]
with torch.no_grad():
    out = model(batch)
torch.save([o["instances"].get_fields() for o in out], sys.argv[2])
"""


def plain_predictions(student_yaml: str, tmp_path) -> list:
    """Predictions of the exported student (``student_yaml``) by plain Detectron2 alone."""
    script = tmp_path / "plain.py"
    script.write_text(PLAIN)
    got = str(tmp_path / "plain.pt")
    done = subprocess.run([sys.executable, str(script), student_yaml, got],
                          cwd=os.getcwd(), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(got, weights_only=False)


def run_predictions(run: str) -> list:
    """The same images through the distillation run's own model (a Distiller, in eval mode)."""
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(run, "config.yaml"))
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(os.path.join(run, "model_final.pth"))
    torch.manual_seed(0)
    batch = [{"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64} for _ in range(2)]
    with torch.no_grad():
        return [o["instances"].get_fields() for o in model(batch)]


def assert_same_predictions(plain: list, expected: list) -> None:
    assert len(plain) == len(expected)
    assert any(len(a["scores"]) for a in plain), "no predictions: nothing was compared"
    for a, b in zip(plain, expected):
        assert set(a) == set(b)
        assert a["pred_classes"].tolist() == b["pred_classes"].tolist()
        torch.testing.assert_close(a["scores"], b["scores"])
        torch.testing.assert_close(a["pred_boxes"].tensor, b["pred_boxes"].tensor)
        if "pred_masks" in a:
            torch.testing.assert_close(a["pred_masks"], b["pred_masks"])
