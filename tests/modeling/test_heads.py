"""d2dist's DeepLab parts as the segmentation distillation code bases have them: DeepLabV3AuxHead
(Detectron2's DeepLabV3Head plus a 3x3 block before the classifier and an auxiliary FCN head for
training) and the dilated ResNet-18's half dilation in a dilated stage's first block."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from d2dist.config import get_cfg
from d2dist.errors import ConfigError

NUM_CLASSES = 5


def _cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", "SemanticSegmentor",
        "MODEL.BACKBONE.NAME", "build_resnet_deeplab_basic_backbone", "MODEL.BACKBONE.FREEZE_AT", "0",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.NORM", "BN",
        "MODEL.RESNETS.RES4_DILATION", "2", "MODEL.RESNETS.RES5_DILATION", "4",
        "MODEL.RESNETS.RES5_MULTI_GRID", "[1, 1]", "MODEL.RESNETS.OUT_FEATURES", '["res4", "res5"]',
        "MODEL.SEM_SEG_HEAD.NAME", "DeepLabV3AuxHead", "MODEL.SEM_SEG_HEAD.IN_FEATURES", '["res5"]',
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES), "MODEL.SEM_SEG_HEAD.NORM", "BN",
        "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "8", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "8",
        "MODEL.SEM_SEG_HEAD.COMMON_STRIDE", "8", "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "cross_entropy",
        "INPUT.CROP.ENABLED", "False", *opts,
    ])  # fmt: skip
    return cfg


def _batch(n=2, h=64, w=96):
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.randint(0, 255, (3, h, w), generator=g).float(),
         "sem_seg": torch.randint(0, NUM_CLASSES, (h, w), generator=g)}
        for _ in range(n)
    ]  # fmt: skip


def test_off_by_default_it_is_detectron2s_head():
    head = build_model(_cfg()).sem_seg_head
    assert head.block is None and head.aux is None
    assert not [n for n, _ in head.named_parameters() if n.startswith(("block", "aux"))]


def test_a_config_without_the_keys_builds_the_plain_head():
    """A user's own config (Detectron2's get_cfg, no add_d2dist_deeplab_config) has neither part."""
    ours = _cfg()
    for key in ("HEAD_CONV", "HEAD_DROPOUT", "AUX_IN_FEATURE", "AUX_CONV_DIM", "AUX_DROPOUT",
                "AUX_LOSS_WEIGHT"):  # fmt: skip
        del ours.MODEL.SEM_SEG_HEAD[key]
    assert "HEAD_CONV" not in ours.MODEL.SEM_SEG_HEAD
    head = build_model(ours).sem_seg_head
    assert head.block is None and head.aux is None


def test_aux_loss_is_the_weighted_cross_entropy_of_the_aux_logits_and_absent_at_test():
    cfg = _cfg("MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE", "res4", "MODEL.SEM_SEG_HEAD.HEAD_CONV", "True",
               "MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT", "0.4")  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).train()
    head = model.sem_seg_head
    assert head.aux[0].in_channels == 256 and head.aux[0].out_channels == 64  # R18: res4 256
    assert isinstance(head.aux[1], torch.nn.Dropout) and head.aux[1].p == 0.1
    assert head.block[0].in_channels == head.block[0].out_channels == 8
    batch = _batch()
    records = {}
    head.aux_predictor.register_forward_hook(lambda m, i, o: records.update(aux=o))
    torch.manual_seed(1)
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_aux"}
    labels = torch.stack([x["sem_seg"] for x in batch])
    aux = F.interpolate(
        records["aux"], size=labels.shape[-2:], mode="bilinear", align_corners=False
    )
    expected = 0.4 * F.cross_entropy(aux, labels, ignore_index=255)
    torch.testing.assert_close(losses["loss_sem_seg_aux"], expected)
    model.eval()
    records.clear()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"]}])
    assert "aux" not in records and out[0]["sem_seg"].shape == (NUM_CLASSES, 64, 96)


def test_the_block_changes_the_prediction_and_the_classifier_stays_the_predictor():
    torch.manual_seed(0)
    plain = build_model(_cfg()).eval()
    torch.manual_seed(0)
    blocked = build_model(_cfg("MODEL.SEM_SEG_HEAD.HEAD_CONV", "True")).eval()
    blocked.load_state_dict(plain.state_dict(), strict=False)  # same backbone, ASPP, predictor
    x = [{"image": _batch(1)[0]["image"]}]
    with torch.no_grad():
        assert not torch.allclose(plain(x)[0]["sem_seg"], blocked(x)[0]["sem_seg"])
    assert isinstance(blocked.sem_seg_head.predictor, torch.nn.Conv2d)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE", "res3"],
         r"AUX_IN_FEATURE='res3', but the backbone gives \['res4', 'res5'\]"),
        (["MODEL.SEM_SEG_HEAD.HEAD_CONV", "True", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16"],
         "HEAD_CONV puts a 16-channel block .* ASPP_CHANNELS=8"),
    ],
)  # fmt: skip
def test_bad_settings_are_clear_errors(opts, message):
    with pytest.raises(ConfigError, match=message):
        build_model(_cfg(*opts))


def test_half_dilation_in_the_first_block_is_the_authors_resnetv1b():
    """HALF_DILATION_IN_FIRST_BLOCK: a dilated stage's first block has half the stage's dilation
    in its first conv (res4: 1, then 2; res5: 2, then 4), the resolution unchanged (stride 8)."""

    def dilations(model, stage, conv):
        return [getattr(b, conv).dilation[0] for b in getattr(model.backbone, stage)]

    plain = build_model(_cfg())
    half = build_model(_cfg("MODEL.RESNETS.HALF_DILATION_IN_FIRST_BLOCK", "True"))
    assert dilations(plain, "res4", "conv1") == [2, 2] and dilations(plain, "res5", "conv1") == [
        4,
        4,
    ]
    assert dilations(half, "res4", "conv1") == [1, 2] and dilations(half, "res5", "conv1") == [2, 4]
    assert dilations(half, "res4", "conv2") == [2, 2] and dilations(half, "res5", "conv2") == [4, 4]
    assert dilations(half, "res3", "conv1") == [1, 1]  # undilated stages unchanged
    half.load_state_dict(plain.state_dict())  # the same parameters: converted weights load
    x = torch.zeros(1, 3, 64, 96)
    assert half.backbone(x)["res5"].shape == plain.backbone(x)["res5"].shape == (1, 512, 8, 12)
