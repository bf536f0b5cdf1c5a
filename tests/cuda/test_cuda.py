"""CUDA paths: AMP training steps for every method and target kind, the teacher's own precision
(bfloat16, float16) and memory format, DDP over NCCL, determinism, and the benchmark's CUDA timing.

Skipped, with the reason shown, where CUDA is absent (``pytest -rs`` lists them); run by
``tools/gpu_check.sh`` on a GPU machine.
"""

import os
import socket

import pytest
import torch
from _tiny import build_distiller, distill_cfg, inputs, write_teacher
from detectron2.utils.events import EventStorage

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available here"),
]

SAME_WIDTH = {"MODEL__FPN__OUT_CHANNELS": 16}
# (student arch, terms, distill overrides, teacher overrides): every method and target kind
CASES = [
    ("faster_rcnn", ["ReviewKD", "DIST", "MIMIC"], {"REVIEWKD.MID_CHANNELS": 8}, {}),  # features, roi
    ("faster_rcnn", ["DIST_FEATURE", "DIST", "PKD"], {"ACCLIMATION.ENABLED": True}, {}),
    ("faster_rcnn", ["DIST"], {"ACCLIMATION.ENABLED": True, "ACCLIMATION.MODE": "head"}, {}),
    ("faster_rcnn", ["MGD", "FGD"], {}, {}),  # features + gt
    ("retinanet", ["DIST", "KD", "CWD"], {"CWD.IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"]}, {}),
    ("retinanet", ["CrossKD"], {"CROSSKD.DEPTH": 1}, SAME_WIDTH),  # cross_head
    ("semantic_fpn", ["DIST", "CWD"], {"CWD.TARGET": "pixel", "DIST.MASK_IGNORE": True}, {}),
]  # fmt: skip


def _model(tmp_path, arch, terms, distill, teacher, **teacher_keys):
    t_cfg, t_weights = write_teacher(str(tmp_path), arch, MODEL__DEVICE="cuda", **teacher)
    cfg = distill_cfg(arch, t_cfg, t_weights, losses=terms)
    cfg.MODEL.DEVICE = "cuda"
    for key, value in {**distill, **teacher_keys}.items():
        ns, k = key.split(".")
        node = cfg.MODEL.DISTILL[ns]
        node[k] = value
    torch.manual_seed(0)
    return build_distiller(cfg)


def _cuda(batch):
    for x in batch:
        x["image"] = x["image"].cuda()
    return batch


@pytest.mark.parametrize("arch,terms,distill,teacher", CASES, ids=lambda x: str(x))
def test_an_amp_step_for_every_method_and_target_kind(tmp_path, arch, terms, distill, teacher):
    """float16 autocast with a gradient scaler, as Detectron2's AMPTrainer: the losses are float32,
    the teacher float32 (its own precision), every trainable parameter gets a finite gradient."""
    model = _model(tmp_path, arch, terms, distill, teacher)
    model.train()
    scaler = torch.amp.GradScaler("cuda")
    seen = {}
    model.teacher.backbone.register_forward_hook(
        lambda m, a, out: seen.update(teacher=next(iter(out.values())).dtype)
    )
    with EventStorage(0):
        with torch.autocast("cuda", dtype=torch.float16):
            losses = model(_cuda(inputs(arch)))
        scaler.scale(sum(losses.values())).backward()
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    assert seen["teacher"] == torch.float32  # the teacher keeps its precision inside AMP
    scaler.unscale_(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0))
    for name, p in model.named_parameters():
        if p.requires_grad and name.startswith("terms."):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad is None for p in model.teacher.parameters())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_teacher_runs_in_its_own_autocast(tmp_path, dtype):
    model = _model(tmp_path, "faster_rcnn", ["MIMIC", "KD"], {}, {}, **{"TEACHER.AUTOCAST": dtype})
    seen = {}
    model.teacher.backbone.register_forward_hook(
        lambda m, a, out: seen.update(dtype=out["p2"].dtype)
    )
    model.train()
    with EventStorage(0):
        losses = model(_cuda(inputs("faster_rcnn")))
    assert seen["dtype"] == getattr(torch, dtype)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_a_channels_last_teacher_gives_the_same_losses(tmp_path):
    losses = {}
    for channels_last in (False, True):
        model = _model(tmp_path, "faster_rcnn", ["MIMIC", "KD"], {}, {},
                       **{"TEACHER.CHANNELS_LAST": channels_last})  # fmt: skip
        model.train()
        torch.manual_seed(0)
        with EventStorage(0):
            losses[channels_last] = model(_cuda(inputs("faster_rcnn")))
    for key in ("loss_distill_mimic", "loss_distill_kd"):
        torch.testing.assert_close(losses[True][key], losses[False][key], rtol=1e-3, atol=1e-4)


def test_two_runs_agree_within_tolerance(tmp_path):
    """CUDA kernels such as RoIAlign's backward are not deterministic: close, not identical."""
    results = []
    for _ in range(2):
        model = _model(tmp_path, "faster_rcnn", ["DIST", "MIMIC"], {}, {})
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        model.train()
        torch.manual_seed(0)
        with EventStorage(0) as storage:
            for _ in range(3):
                losses = model(_cuda(inputs("faster_rcnn")))
                opt.zero_grad()
                sum(losses.values()).backward()
                opt.step()
                storage.step()
        results.append({k: v.item() for k, v in losses.items()})
    for key in results[0]:
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-2, abs=1e-4), key


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, port, tmp):
    import torch.distributed as dist
    from detectron2.utils import comm

    from d2dist.engine import create_ddp_model

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    comm.create_local_process_group(1)
    torch.cuda.set_device(0)
    model = _model(tmp, "faster_rcnn", ["DIST", "MIMIC"], {}, {})
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[0], find_unused_parameters=model.needs_find_unused_parameters
    )
    assert create_ddp_model(model) is model  # one process: Detectron2's rule, no wrapper
    opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.01)
    with EventStorage(0):
        for _ in range(2):
            losses = ddp(_cuda(inputs("faster_rcnn")))
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
    assert all(torch.isfinite(v) for v in losses.values())
    dist.destroy_process_group()


def test_a_distiller_under_nccl_ddp(tmp_path):
    """The Distiller (student and terms, never the teacher) wrapped by DistributedDataParallel
    over NCCL, in a process of its own as Detectron2's launcher starts them."""
    import torch.multiprocessing as mp

    mp.start_processes(_ddp_worker, args=(_free_port(), tmp_path), nprocs=1, start_method="spawn")


def test_the_benchmark_times_cuda_with_events_and_cuda_memory(tmp_path):
    from d2dist.config import get_cfg
    from d2dist.engine.benchmark import PHASES, benchmark

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = get_cfg()
    cfg.merge_from_file(
        os.path.join(
            repo, "configs", "Shapes-Detection", "dist_faster_rcnn_R18_from_R50_FPN_1x.yaml"
        )
    )
    from _tiny import SHAPES_STUDENT_TINY, SHAPES_TEACHER_TINY, SHAPES_TINY_DATA

    cfg.merge_from_list(
        [*SHAPES_TINY_DATA, *SHAPES_STUDENT_TINY, "MODEL.DEVICE", "cuda",
         "MODEL.DISTILL.TEACHER.OPTS", str(["MODEL.DEVICE", "cuda", *SHAPES_TEACHER_TINY])]
    )  # fmt: skip
    result = benchmark(cfg, iters=3, warmup=1, random_weights=True)
    summary = result.summary()
    assert summary["clock"] == "cuda_events" and summary["flush_subnormals"] is None
    assert all(summary[f"{p}_s"] > 0 for p in PHASES)
    assert result.memory_per_phase and all(v > 0 for v in summary["peak_memory_mib"].values())
