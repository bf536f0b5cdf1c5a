"""tools/train_net.py's run, plus a dump of each rank's state, for the multi-process tests.

    python tests/_ddp_worker.py --dump DIR --num-gpus 2 --config-file CFG MODEL.DEVICE cpu ...

Each rank trains exactly as ``tools/train_net.py`` does (``setup``, ``Trainer``, Detectron2's
``launch``), then writes ``DIR/rank<r>.pth``: its trainable parameters after training, the images
it trained on, what DistributedDataParallel wraps and whether the teacher is inside it.
"""

import os
import sys

import torch
from detectron2.utils import comm

from d2dist.engine import Trainer, argument_parser, launch_cli, setup


def main(args):
    cfg = setup(args)
    trainer = Trainer(cfg)
    ddp = trainer._trainer.model
    distiller = ddp.module
    seen = []

    def record(module, inputs):
        if module.training:
            seen.append([x["file_name"] for x in inputs[0]])

    distiller.register_forward_pre_hook(record)
    trainer.resume_or_load(resume=False)
    initial = {n: p.detach().clone() for n, p in distiller.named_parameters()}
    trainer.train()
    wrapped = {id(p) for p in ddp.parameters()}
    state = {
        "type": type(ddp).__name__,
        "find_unused_parameters": ddp.find_unused_parameters,
        "initial": initial,
        "params": {n: p.detach().clone() for n, p in distiller.named_parameters()},
        "grad_is_none": {n: p.grad is None for n, p in distiller.named_parameters()},
        "teacher_params_in_ddp": sum(id(p) in wrapped for p in distiller.teacher.parameters()),
        "teacher_training": distiller.teacher.training,
        "files": seen,
    }
    torch.save(state, os.path.join(args.dump, f"rank{comm.get_rank()}.pth"))


if __name__ == "__main__":
    parser = argument_parser()
    parser.add_argument("--dump", required=True, help="directory of the per-rank states")
    sys.exit(launch_cli(main, parser.parse_args()))
