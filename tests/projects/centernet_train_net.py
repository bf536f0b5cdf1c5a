#!/usr/bin/env python
# Upstream's lines as they are (the README's diff must apply to them): not black-formatted.
# fmt: off
"""A project with its own training loop, shaped like CenterNet2's train_net.py (xingyizhou/
CenterNet2: build_model, its own do_train loop with Detectron2's checkpointer, periodic
checkpointer and writers, do_test over DATASETS.TEST), written for d2dist's tests; it does not
know d2dist. tests/test_own_loops.py applies the README's diff to a copy of it. The lines the diff
touches, and its context lines, are those of upstream's file as it is today.

``add_centernet_config`` stands in for the project's config function (CenterNet2's adds the keys
its loop reads, as this one does); the model is any Detectron2 meta-architecture.
"""
import logging
import os

import torch
import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer, PeriodicCheckpointer
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import (
    COCOEvaluator,
    inference_on_dataset,
    print_csv_format,
)
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
)

logger = logging.getLogger("detectron2")


def add_centernet_config(cfg):
    """The project's own keys (those its training loop reads)."""
    cfg.INPUT.TEST_INPUT_TYPE = "default"
    cfg.INPUT.CUSTOM_AUG = ""
    cfg.SOLVER.RESET_ITER = False
    cfg.SOLVER.TRAIN_ITER = -1
    cfg.PROJECT = CN({"NAME": "centernet-shaped"})


def do_test(cfg, model):
    results = {}
    for dataset_name in cfg.DATASETS.TEST:
        data_loader = build_detection_test_loader(cfg, dataset_name)
        output_folder = os.path.join(cfg.OUTPUT_DIR, f"inference_{dataset_name}")
        evaluator = COCOEvaluator(dataset_name, cfg, True, output_folder)
        results[dataset_name] = inference_on_dataset(model, data_loader, evaluator)
        print_csv_format(results[dataset_name])
    return list(results.values())[0] if len(results) == 1 else results


def do_train(cfg, model, resume=False):
    model.train()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)

    checkpointer = DetectionCheckpointer(
        model, cfg.OUTPUT_DIR, optimizer=optimizer, scheduler=scheduler
    )

    start_iter = (
        checkpointer.resume_or_load(
            cfg.MODEL.WEIGHTS, resume=resume,
            ).get("iteration", -1) + 1
    )
    if cfg.SOLVER.RESET_ITER:
        start_iter = 0
    max_iter = cfg.SOLVER.MAX_ITER if cfg.SOLVER.TRAIN_ITER < 0 else cfg.SOLVER.TRAIN_ITER
    periodic_checkpointer = PeriodicCheckpointer(
        checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_iter=max_iter
    )
    writers = [CommonMetricPrinter(max_iter), JSONWriter(os.path.join(cfg.OUTPUT_DIR,
               "metrics.json"))] if comm.is_main_process() else []  # fmt: skip
    data_loader = build_detection_train_loader(cfg, mapper=DatasetMapper(cfg, True))
    with EventStorage(start_iter) as storage:
        for data, iteration in zip(data_loader, range(start_iter, max_iter)):
            storage.iter = iteration
            loss_dict = model(data)
            losses = sum(loss_dict.values())
            assert torch.isfinite(losses).all(), loss_dict
            storage.put_scalars(total_loss=losses.item(),
                                **{k: v.item() for k, v in loss_dict.items()})  # fmt: skip
            optimizer.zero_grad()
            losses.backward()
            optimizer.step()
            storage.put_scalar("lr", optimizer.param_groups[0]["lr"], smoothing_hint=False)
            scheduler.step()
            for writer in writers:
                writer.write()
            periodic_checkpointer.step(iteration)


def setup(args):
    """
    Create configs and perform basic setups.
    """
    cfg = get_cfg()
    add_centernet_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if '/auto' in cfg.OUTPUT_DIR:
        cfg.OUTPUT_DIR = cfg.OUTPUT_DIR.replace("/auto", "/run")
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)

    model = build_model(cfg)
    logger.info("Model:\n{}".format(model))
    if args.eval_only:
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return do_test(cfg, model)

    do_train(cfg, model, resume=args.resume)
    return do_test(cfg, model)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))  # fmt: skip
