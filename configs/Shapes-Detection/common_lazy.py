# LazyConfig pieces shared by the built-in dataset's LazyConfig (.py) configs: the data loaders,
# optimizer, schedule and training settings of Base-Shapes-RCNN-FPN.yaml (64 px images of
# d2dist_shapes, 8 classes, 4 images a batch, 600 iterations, LR steps at 480 and 570), with
# instance masks. Used by mask_rcnn_R18_FPN_1x.py, mask_rcnn_ViTDet_tiny_3x.py and the
# distillation configs; read by LazyConfig.load, not a Python module of d2dist.
import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

NUM_CLASSES = 8
SIZE = 64

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = "d2dist_shapes_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(SIZE,), sample_style="choice", max_size=SIZE),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1
dataloader.test.dataset.names = "d2dist_shapes_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=SIZE, max_size=SIZE),
]
dataloader.test.num_workers = 1

optimizer = model_zoo.get_config("common/optim.py").SGD
optimizer.lr = 0.02


def fit_to_shapes(model, channels: int) -> None:
    """Set a Mask R-CNN LazyConfig ``model`` (FPN-like levels p2-p6 of ``channels``) to the
    built-in dataset as Base-Shapes-RCNN-FPN.yaml does: anchors for 16-40 px objects, RPN and RoI
    sampling for 1-3 objects per image, 8 classes."""
    rpn, heads = model.proposal_generator, model.roi_heads
    rpn.head.in_channels = channels
    rpn.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
    rpn.pre_nms_topk = (512, 512)
    rpn.post_nms_topk = (256, 256)
    rpn.batch_size_per_image = 128
    heads.num_classes = NUM_CLASSES
    heads.batch_size_per_image = 32
    heads.positive_fraction = 0.5
    heads.box_pooler.sampling_ratio = 2
    heads.box_head.input_shape = ShapeSpec(channels=channels, height=7, width=7)
    heads.mask_head.input_shape = ShapeSpec(channels=channels, height=14, width=14)


def schedule(max_iter: int):
    """Warm-up over 50 iterations, LR x0.1 at 80% and 95% of max_iter (the yacs configs')."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01],
            milestones=[int(max_iter * 0.8), int(max_iter * 0.95)],
            num_updates=max_iter,
        ),
        warmup_length=50 / max_iter,
        warmup_factor=0.001,
    )


train = model_zoo.get_config("common/train.py").train
train.max_iter = 600
train.eval_period = 0  # evaluated once, after the last iteration
train.checkpointer = dict(period=300, max_to_keep=100)
train.seed = 1
lr_multiplier = schedule(train.max_iter)
