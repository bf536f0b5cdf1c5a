"""ReviewKD's ABF chain, and every distillation term end to end through the Distiller."""

import pytest
import torch
from _tiny import build_distiller, distill_cfg, inputs, tiny_cfg, write_teacher
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from d2dist.config import get_cfg
from d2dist.errors import ConfigError
from d2dist.modeling import TermSpec
from d2dist.modeling.adapters import ReviewKDAdapter
from d2dist.modeling.targets import TargetRequest
from d2dist.modeling.terms import (
    DISTILL_TERM_REGISTRY,
    DistillTerm,
    TermOutput,
    build_distill_terms,
    dist_loss,
    register_term,
)
from d2dist.modeling.terms.acclimation import acclimation_namespace


def test_the_term_classes_are_importable_by_name():
    """``@register_term`` returns the class: ``from d2dist.modeling.terms import DIST`` is the
    registered class (fvcore's ``Registry.register(cls)`` alone returns None), so a term can be
    built by hand from its constructor arguments. A user's term declares its namespace in its own
    class; d2dist's get_cfg has it under MODEL.DISTILL while the term is registered."""
    from d2dist.modeling import terms

    names = [name for name, _ in DISTILL_TERM_REGISTRY]
    assert {"DIST", "CrossKD", "ReviewKD", "MGD", "FGD"} <= set(names)
    for name in names:
        assert getattr(terms, name) is DISTILL_TERM_REGISTRY.get(name), name

    class MyTerm(terms.DistillTerm):
        @classmethod
        def config_namespace(cls):
            c = super().config_namespace()
            c.SCALE = 2.0  # a key of the user's own
            return c

    assert "MYTERM" not in get_cfg().MODEL.DISTILL
    try:
        assert register_term(MyTerm) is MyTerm
        assert get_cfg().MODEL.DISTILL.MYTERM == CN({"WEIGHT": 1.0, "SCALE": 2.0})
    finally:
        DISTILL_TERM_REGISTRY._obj_map.pop("MyTerm")
    assert "MYTERM" not in get_cfg().MODEL.DISTILL


def test_every_registered_term_has_its_own_namespace():
    d = get_cfg().MODEL.DISTILL
    for _, cls in DISTILL_TERM_REGISTRY:
        assert d[cls.CONFIG_KEY] == cls.config_namespace(), cls.__name__
        assert "WEIGHT" in d[cls.CONFIG_KEY]
    assert d.ACCLIMATION == acclimation_namespace()


@pytest.fixture
def user_term():
    """A user's term, registered from outside d2dist with its namespace declared in its class and
    no from_config of its own (the base passes each key in lower case)."""

    class UserMeanGap(DistillTerm):
        @classmethod
        def config_namespace(cls):
            c = super().config_namespace()
            c.LEVEL = "p3"  # the feature level compared
            c.SCALE = 1.0  # the factor on the teacher's mean
            return c

        def __init__(self, *, weight, level, scale):
            super().__init__(weight=weight)
            self.level, self.scale = level, scale

        def request(self):
            return TargetRequest(features=(self.level,))

        def forward(self, targets):
            s, t = targets.features[self.level]
            return TermOutput((s.float().mean() - self.scale * t.float().mean()).abs())

    register_term(UserMeanGap)
    yield UserMeanGap
    DISTILL_TERM_REGISTRY._obj_map.pop("UserMeanGap")  # tests leave the registry clean


def test_a_users_term_is_configured_by_its_own_namespace_in_yacs_and_lazyconfig(
    user_term, tmp_path
):
    cfg = distill_cfg("faster_rcnn", *write_teacher(str(tmp_path), "faster_rcnn"), ["UserMeanGap"])
    assert cfg.MODEL.DISTILL.USERMEANGAP == CN({"WEIGHT": 1.0, "LEVEL": "p3", "SCALE": 1.0})
    cfg.MODEL.DISTILL.USERMEANGAP.SCALE = 0.5
    cfg.MODEL.DISTILL.USERMEANGAP.LEVEL = "p4"
    model = build_distiller(cfg)
    term = model.terms[0]
    assert (type(term), term.level, term.scale) == (user_term, "p4", 0.5)
    assert torch.isfinite(_step(model, inputs("faster_rcnn"))["loss_distill_usermeangap"])

    student = build_model(tiny_cfg("faster_rcnn"))
    teacher = build_model(tiny_cfg("faster_rcnn", role="teacher"))
    term = TermSpec("UserMeanGap", scale=0.25).build(student, teacher)
    assert (type(term), term.level, term.scale, term.weight) == (user_term, "p3", 0.25, 1.0)
    with pytest.raises(
        ConfigError,
        match=r"TermSpec\('UserMeanGap'\) option 'nope': MODEL.DISTILL.USERMEANGAP has no 'NOPE'; "
        r"it has \['level', 'scale', 'weight'\]",
    ):
        TermSpec("UserMeanGap", nope=1).build(student, teacher)


def test_a_term_registered_after_the_config_was_built_is_named(tmp_path):
    cfg = distill_cfg("faster_rcnn", *write_teacher(str(tmp_path), "faster_rcnn"), ["LateTerm"])

    class LateTerm(DistillTerm):
        pass

    register_term(LateTerm)
    try:
        with pytest.raises(
            ConfigError,
            match=r"names 'LateTerm', but this config has no namespace MODEL.DISTILL.LATETERM: the "
            r"term was registered after the config was built.*--config-function",
        ):
            build_distiller(cfg)
    finally:
        DISTILL_TERM_REGISTRY._obj_map.pop("LateTerm")


def test_a_term_s_namespace_must_not_take_a_shared_key():
    class Teacher(DistillTerm):  # its namespace would be MODEL.DISTILL.TEACHER
        pass

    register_term(Teacher)
    try:
        with pytest.raises(ConfigError, match=r"MODEL.DISTILL.TEACHER is declared twice.*rename"):
            get_cfg()
    finally:
        DISTILL_TERM_REGISTRY._obj_map.pop("Teacher")


def _student_and_teacher(arch="faster_rcnn"):
    return build_model(tiny_cfg(arch)), build_model(tiny_cfg(arch, role="teacher"))


# A term of each kind, with options other than the defaults: (name, options, acclimation)
SPECS = [
    ("MIMIC", {"in_features": ["p2", "p3"], "adapter_norm": "GN"}, {}),
    ("KD", {"tau": 2.0, "target": "roi"}, {}),
    ("ReviewKD", {"mid_channels": 8, "norm": "", "in_features": ["p3", "p4"]}, {}),
    ("DIST", {"beta": 2.0, "tau": 3.0}, {"enabled": True, "lambda": 0.5, "mode": "head"}),
    ("DIST_FEATURE", {"normalize": "softmax"}, {"enabled": True, "start_iter": 2}),
    ("PKD", {"weight": 2.0}, {}),
    ("CWD", {"target": "pixel"}, {}),
    ("MGD", {"lambda": 0.65, "in_features": ["p3"]}, {}),
    ("FGD", {"mask_mode": "image", "alpha": 1e-3}, {}),
]


@pytest.mark.parametrize("name,options,acclimation", SPECS, ids=[s[0] for s in SPECS])
def test_yacs_and_termspec_build_the_same_term(name, options, acclimation):
    """One constructor path: a TermSpec's options give the term the same namespace keys give."""
    student, teacher = _student_and_teacher("semantic_fpn" if name == "CWD" else "faster_rcnn")
    cfg = get_cfg()
    cfg.MODEL.DISTILL.LOSSES = [name]
    key = DISTILL_TERM_REGISTRY.get(name).CONFIG_KEY
    for option, value in options.items():
        cfg.MODEL.DISTILL[key][option.upper()] = value
    for option, value in acclimation.items():
        cfg.MODEL.DISTILL.ACCLIMATION[option.upper()] = value
    torch.manual_seed(0)
    (from_yacs,) = build_distill_terms(cfg, student, teacher)
    torch.manual_seed(0)
    from_spec = TermSpec(name, acclimation=acclimation, **options).build(student, teacher)
    assert type(from_yacs) is type(from_spec)
    assert _settings(from_yacs) == _settings(from_spec)
    a, b = from_yacs.state_dict(), from_spec.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    if acclimation:
        assert from_yacs.acclimation is not None


def _settings(term):
    """A term's plain attributes (objects such as a schedule by their own attributes)."""
    return {
        k: vars(v) if hasattr(v, "__dict__") and not isinstance(v, torch.nn.Module) else v
        for k, v in vars(term).items()
        if not k.startswith("_")
    }


def test_termspec_refuses_an_unknown_acclimation_option():
    student, teacher = _student_and_teacher()
    with pytest.raises(
        ConfigError,
        match=r"TermSpec\('DIST'\) option 'lamda': MODEL.DISTILL.ACCLIMATION has no 'LAMDA'; it "
        r"has \['enabled', 'lambda', 'mode', 'start_iter', 'stop_iter'\]",
    ):
        TermSpec("DIST", acclimation={"lamda": 1.0}).build(student, teacher)


def _shapes(widths, strides):
    return {
        f"p{i}": ShapeSpec(channels=c, stride=s) for i, (c, s) in enumerate(zip(widths, strides), 2)
    }


def test_abf_chain_shapes_order_and_attention():
    student = _shapes([16, 24, 40], [4, 8, 16])
    teacher = _shapes([32, 48, 64], [4, 8, 16])
    chain = ReviewKDAdapter(student, teacher, ["p2", "p3", "p4"], mid_channels=8, norm="")
    assert chain.order == ["p4", "p3", "p2"]  # deep to shallow
    assert chain.abfs["p4"].att_conv is None  # the deepest level has no attention
    assert chain.abfs["p3"].att_conv.out_channels == 2 and chain.abfs["p2"].att_conv is not None
    feats = {
        n: torch.randn(2, s.channels, 32 // s.stride * 2, 32 // s.stride * 2)
        for n, s in student.items()
    }
    out = chain(feats)
    for n in feats:
        assert out[n].shape == (2, teacher[n].channels, *feats[n].shape[-2:])


def test_abf_passes_the_fused_tensor_down_not_the_output():
    student = _shapes([16, 24], [4, 8])
    teacher = _shapes([32, 48], [4, 8])
    chain = ReviewKDAdapter(student, teacher, ["p2", "p3"], mid_channels=8, norm="")
    returned, received = {}, {}
    chain.abfs["p3"].register_forward_hook(lambda m, a, o: returned.update(p3=o))
    chain.abfs["p2"].register_forward_pre_hook(lambda m, a: received.update(p2=a[1]))
    chain({"p2": torch.randn(1, 16, 16, 16), "p3": torch.randn(1, 24, 8, 8)})
    output, fused = returned["p3"]
    assert received["p2"] is fused and fused.shape[1] == 8  # R (mid width), not conv2(R)
    assert output.shape[1] == 48


def test_abf_fusion_formula():
    """R = z0 * X + z1 * U with two independent sigmoids, U the nearest-resized deeper R."""
    student = _shapes([4, 4], [4, 8])
    chain = ReviewKDAdapter(student, _shapes([4, 4], [4, 8]), ["p2", "p3"], 3, norm="")
    abf = chain.abfs["p2"]
    x_in, residual = torch.randn(1, 4, 4, 4), torch.randn(1, 3, 2, 2)
    _, fused = abf(x_in, residual)
    x = abf.conv1(x_in)
    u = residual.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    z = torch.sigmoid(abf.att_conv(torch.cat([x, u], dim=1)))
    torch.testing.assert_close(fused, z[:, :1] * x + z[:, 1:] * u)


def _step(model, batch, seed=0):
    torch.manual_seed(seed)
    model.train()
    with EventStorage(0):
        return model(batch)


def _unweighted(model, term, batch, seed=0):
    torch.manual_seed(seed)
    with EventStorage(0):
        with model.extractor.student_recorder() as rec:
            model.student(batch)
        return term(model.extractor.extract(batch, rec))[0]


CASES = [
    # (student arch, terms, distill overrides, teacher overrides)
    ("faster_rcnn", ["ReviewKD"], {"REVIEWKD.MID_CHANNELS": 8, "REVIEWKD.NORM": ""}, {}),
    ("faster_rcnn", ["DIST"], {}, {}),
    ("faster_rcnn", ["PKD"], {"PKD.IN_FEATURES": ["p2", "p3", "p4", "p5"]}, {"MODEL__FPN__OUT_CHANNELS": 16}),
    ("faster_rcnn", ["PKD"], {}, {}),  # other widths: a 1x1-conv adapter
    ("faster_rcnn", ["CWD"], {}, {}),
    ("faster_rcnn", ["DIST_FEATURE"], {"DIST_FEATURE.NORMALIZE": "softmax"}, {}),
    ("retinanet", ["DIST_FEATURE"], {"DIST_FEATURE.IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"]}, {}),
    ("semantic_fpn", ["DIST_FEATURE"], {"DIST_FEATURE.IN_FEATURES": ["p2", "p3", "p4", "p5"]}, {}),
    ("retinanet", ["DIST"], {}, {}),
    ("retinanet", ["DIST"], {"DIST.DENSE_MODE": "anchor"}, {}),
    ("retinanet", ["ReviewKD", "KD"], {"REVIEWKD.MID_CHANNELS": 8, "REVIEWKD.NORM": "",
                                       "REVIEWKD.IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"]}, {}),
    ("retinanet", ["PKD", "CWD"], {"PKD.IN_FEATURES": ["p3", "p4", "p5", "p6"],
                                   "CWD.IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"]}, {}),
    ("semantic_fpn", ["ReviewKD", "PKD"], {"REVIEWKD.MID_CHANNELS": 8, "REVIEWKD.NORM": "",
                                           "REVIEWKD.IN_FEATURES": ["p2", "p3", "p4", "p5"]}, {}),
    ("semantic_fpn", ["DIST", "CWD"], {"CWD.TARGET": "pixel", "CWD.TAU": 4.0}, {}),
    ("semantic_fpn", ["DIST"], {"DIST.MASK_IGNORE": True}, {}),
    ("deeplab_v3", ["DIST"], {}, {}),
    ("faster_rcnn", ["DIST", "DIST_FEATURE"], {"ACCLIMATION.ENABLED": True}, {}),
    ("retinanet", ["DIST"], {"ACCLIMATION.ENABLED": True}, {}),
]  # fmt: skip


def _build(tmp_path, arch, terms, distill, teacher_overrides, weights=None):
    teacher = write_teacher(str(tmp_path), arch, **teacher_overrides)
    cfg = distill_cfg(arch, *teacher, losses=terms)
    for key, value in distill.items():
        ns, k = key.split(".")
        cfg.MODEL.DISTILL[ns][k] = value
    for name, w in (weights or {}).items():
        cfg.MODEL.DISTILL[name.upper()].WEIGHT = w  # LOSSES name -> its namespace
    torch.manual_seed(0)
    return build_distiller(cfg)


@pytest.mark.parametrize("arch,terms,distill,teacher", CASES, ids=lambda x: str(x))
def test_term_end_to_end(tmp_path, arch, terms, distill, teacher):
    weights = {t: 0.5 + i for i, t in enumerate(terms)}
    model = _build(tmp_path, arch, terms, distill, teacher, weights)
    batch = inputs(arch)
    losses = _step(model, batch)
    for term in model.terms:
        value = losses[term.loss_key]
        assert torch.isfinite(value) and value > 0 and value.dtype == torch.float32
        expected = weights[term.CONFIG_KEY if term.CONFIG_KEY != "REVIEWKD" else "ReviewKD"]
        torch.testing.assert_close(value, expected * _unweighted(model, term, batch))
    model.zero_grad()
    sum(_step(model, batch).values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    for term in model.terms:
        for name, p in term.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # Every trainable parameter takes part in every step, so multi-GPU training (DDP) runs
    # without its search for unused parameters.
    assert not model.needs_find_unused_parameters
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.backbone.parameters()
    )


def test_dist_pixel_mask_ignore_drops_ignored_pixels(tmp_path):
    model = _build(tmp_path, "semantic_fpn", ["DIST"], {"DIST.MASK_IGNORE": True}, {})
    term = model.terms[0]
    batch = inputs("semantic_fpn")
    for x in batch:
        x["sem_seg"][:, :32] = 255  # the left half of every image is "ignore"
    torch.manual_seed(0)
    with EventStorage(0):
        with model.extractor.student_recorder() as rec:
            model.student(batch)
        targets = model.extractor.extract(batch, rec)
    s, t = targets.pixel  # (N, C, 16, 16) at stride 4: columns 0-7 are ignored
    keep_s = s[..., 8:].permute(0, 2, 3, 1).reshape(-1, s.shape[1])
    keep_t = t[..., 8:].permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    torch.testing.assert_close(term(targets)[0], dist_loss(keep_s, keep_t))
    assert not torch.allclose(term(targets)[0], dist_loss(s, t))


@pytest.mark.parametrize(
    "arch,terms,distill,teacher,message",
    [
        ("faster_rcnn", ["PKD"], {"PKD.ADAPTER": "IdentityAdapter"}, {},
         r"'p2' has 16 channels in the student and 32 in the teacher"),
        ("retinanet", ["DIST"], {"DIST.DENSE_MODE": "row"}, {}, r"DENSE_MODE='row'"),
        ("faster_rcnn", ["DIST"], {"DIST.MASK_IGNORE": True}, {}, r"MASK_IGNORE applies to pixel logits"),
        ("faster_rcnn", ["CWD"], {"CWD.TARGET": "roi"}, {}, r"CWD.TARGET='roi'"),
        ("faster_rcnn", ["ReviewKD"], {"REVIEWKD.IN_FEATURES": []}, {}, r"REVIEWKD.IN_FEATURES is empty"),
        ("faster_rcnn", ["ReviewKD"], {"REVIEWKD.IN_FEATURES": ["p2", "res9"]}, {},
         r"REVIEWKD.IN_FEATURES names 'res9'"),
        ("faster_rcnn", ["DIST"], {"DIST.TAU": -1.0}, {}, r"DIST.TAU=-1.0"),
    ],
)  # fmt: skip
def test_term_configuration_errors(tmp_path, arch, terms, distill, teacher, message):
    with pytest.raises(ConfigError, match=message):
        _build(tmp_path, arch, terms, distill, teacher)
