"""Trainable helper modules of the distillation terms, in one registry: adapters that map a
student tensor to the teacher's shape (identity, 1x1 conv + norm), ReviewKD's ABF blocks and chain,
MGD's generator, FGD's context blocks, and any a user registers.

Each is built from keyword arguments (:func:`build_distill_module`); adapters from the two
networks' ``ShapeSpec`` (channels, stride) of one feature, never from a dummy forward pass.
"""

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry
from torch import nn

from ..errors import ConfigError

__all__ = [
    "ABF",
    "Conv1x1Adapter",
    "DISTILL_MODULE_REGISTRY",
    "IdentityAdapter",
    "ReviewKDAdapter",
    "TorchInitConv1x1Adapter",
    "build_adapter",
    "build_distill_module",
]

DISTILL_MODULE_REGISTRY = Registry("DISTILL_MODULE")
DISTILL_MODULE_REGISTRY.__doc__ = """
The distillation terms' trainable helper modules, by class name. A registered class (or function)
is called with keyword arguments only, ``cls(**kwargs)``, and returns an ``nn.Module``; it raises
``ConfigError`` at construction for arguments it cannot work with. Adapters (named in a term's
``ADAPTER``) take ``student_shape``, ``teacher_shape`` (``ShapeSpec``), ``norm`` (Detectron2's
``get_norm`` names, "" for none) and ``key`` (the feature's name, for messages), and map a student
tensor (N, Cs, H, W) to (N, Ct, H, W).
"""


NORMS = ("", "BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "LN")


def _norm(norm: str, channels: int, where: str):
    """Detectron2's ``get_norm``, with an unknown name or an impossible width as a
    :class:`ConfigError` naming ``where`` (the config key)."""
    try:
        return get_norm(norm, channels)
    except KeyError:
        raise ConfigError(
            f"{where}={norm!r} is not a norm Detectron2 knows; use one of {list(NORMS)}."
        ) from None
    except ValueError as e:  # e.g. GroupNorm's 32 groups on fewer or indivisible channels
        raise ConfigError(f"{where}={norm!r} on {channels} channels: {e}") from e


def _check_stride(student: ShapeSpec, teacher: ShapeSpec, key: str) -> None:
    if student.stride != teacher.stride:
        raise ConfigError(
            f"feature {key!r} has stride {student.stride} in the student and {teacher.stride} in "
            "the teacher; adapters map channels, not resolutions. Pair levels of equal stride "
            "(same FPN level names) or change one network's IN_FEATURES."
        )


@DISTILL_MODULE_REGISTRY.register()
class IdentityAdapter(nn.Identity):
    """No adapter: the student's feature already has the teacher's shape (checked at build)."""

    def __init__(
        self, student_shape: ShapeSpec, teacher_shape: ShapeSpec, norm: str = "", key: str = "?"
    ):
        super().__init__()
        _check_stride(student_shape, teacher_shape, key)
        if student_shape.channels != teacher_shape.channels:
            raise ConfigError(
                f"feature {key!r} has {student_shape.channels} channels in the student and "
                f"{teacher_shape.channels} in the teacher, so it needs an adapter: set the term's "
                "ADAPTER to 'Conv1x1Adapter' (or 'auto')."
            )
        if norm:
            raise ConfigError(
                f"ADAPTER_NORM={norm!r} has no effect with IdentityAdapter (feature {key!r}); "
                "leave it empty or use ADAPTER 'Conv1x1Adapter'."
            )


@DISTILL_MODULE_REGISTRY.register()
class Conv1x1Adapter(nn.Sequential):
    """1x1 convolution from student to teacher channels, optionally followed by a norm layer."""

    def __init__(
        self, student_shape: ShapeSpec, teacher_shape: ShapeSpec, norm: str = "", key: str = "?"
    ):
        _check_stride(student_shape, teacher_shape, key)
        conv = Conv2d(student_shape.channels, teacher_shape.channels, 1, bias=not norm)
        self._init(conv)
        layers = [conv]
        if norm:
            layers.append(_norm(norm, teacher_shape.channels, f"ADAPTER_NORM of {key!r}"))
        super().__init__(*layers)

    @staticmethod
    def _init(conv: nn.Conv2d) -> None:
        nn.init.kaiming_uniform_(conv.weight, a=1)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


@DISTILL_MODULE_REGISTRY.register()
class TorchInitConv1x1Adapter(Conv1x1Adapter):
    """:class:`Conv1x1Adapter` with PyTorch's default initialisation of ``nn.Conv2d`` (weights
    Kaiming-uniform with a = sqrt(5), bias uniform in +-1/sqrt(fan_in)): the ``align_module``
    of mmrazor-style distillers, e.g. the DIST authors' mimic connectors."""

    @staticmethod
    def _init(conv: nn.Conv2d) -> None:
        pass  # nn.Conv2d initialised itself when it was built


def build_distill_module(name: str, **kwargs) -> nn.Module:
    """Build the registered helper module ``name`` from keyword arguments."""
    if name not in DISTILL_MODULE_REGISTRY:
        raise ConfigError(
            f"unknown distillation module {name!r}; registered: "
            f"{sorted(n for n, _ in DISTILL_MODULE_REGISTRY)}"
        )
    module = DISTILL_MODULE_REGISTRY.get(name)(**kwargs)
    assert isinstance(module, nn.Module), f"{name} built a {type(module)}, not an nn.Module"
    return module


def build_adapter(
    name: str, student_shape: ShapeSpec, teacher_shape: ShapeSpec, norm: str = "", key: str = "?"
) -> nn.Module:
    """Build adapter ``name`` (``"auto"``: identity when channels match, else 1x1 conv)."""
    if name == "auto":
        same = student_shape.channels == teacher_shape.channels
        name = "IdentityAdapter" if same and not norm else "Conv1x1Adapter"
    if name not in DISTILL_MODULE_REGISTRY:
        raise ConfigError(
            f"unknown adapter {name!r} for feature {key!r}; registered adapters: "
            f"{sorted(n for n, _ in DISTILL_MODULE_REGISTRY)} (or 'auto')"
        )
    return build_distill_module(
        name, student_shape=student_shape, teacher_shape=teacher_shape, norm=norm, key=key
    )


@DISTILL_MODULE_REGISTRY.register()
class ABF(nn.Module):
    """One attention-based fusion block of ReviewKD (Chen et al., CVPR 2021).

    ``X = norm(conv1x1(x))``; with a deeper level, ``U`` = that level's fused tensor resized
    (nearest) to X's size and ``R = z0 * X + z1 * U`` with ``z = sigmoid(conv1x1([X; U]))`` (two
    independent maps); the deepest level has no attention (``R = X``). Returns
    ``(norm(conv3x3(R)), R)``: the output compared with the teacher, and the fused tensor the
    next shallower level fuses.
    """

    def __init__(
        self, in_channels: int, mid_channels: int, out_channels: int, norm: str, fuse: bool
    ):
        super().__init__()
        self.conv1 = Conv2d(
            in_channels,
            mid_channels,
            1,
            bias=False,
            norm=_norm(norm, mid_channels, "MODEL.DISTILL.REVIEWKD.NORM (ABF)"),
        )
        self.conv2 = Conv2d(
            mid_channels,
            out_channels,
            3,
            padding=1,
            bias=False,
            norm=_norm(norm, out_channels, "MODEL.DISTILL.REVIEWKD.NORM (ABF)"),
        )
        self.att_conv = Conv2d(2 * mid_channels, 2, 1) if fuse else None
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, x, residual=None):
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("this ABF fuses a deeper level: pass that level's fused tensor")
            u = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            z = torch.sigmoid(self.att_conv(torch.cat([x, u], dim=1)))
            x = x * z[:, 0:1] + u * z[:, 1:2]
        return self.conv2(x), x


@DISTILL_MODULE_REGISTRY.register()
class ReviewKDAdapter(nn.Module):
    """The ABF chain of ReviewKD over any set of levels, fused from the deepest to the shallowest.

    Built from the two networks' shapes; input and output widths come from them, so any FPN
    widths and any levels (p2-p6, p3-p7, ...) work. Training-only: it belongs to the ReviewKD
    term, never to the student.

    Args:
        student_shapes, teacher_shapes: ``ShapeSpec`` per level name.
        in_features: the levels to use (any order; fused by decreasing stride).
        mid_channels: the ABF width m.
        norm: the norm after conv1 and conv2 (Detectron2's ``get_norm`` names; "" for none).
    """

    def __init__(self, student_shapes, teacher_shapes, in_features, mid_channels: int, norm: str):
        super().__init__()
        for name in in_features:
            _check_stride(student_shapes[name], teacher_shapes[name], name)
        # deepest first: the order in which the chain runs
        self.order = sorted(in_features, key=lambda n: -student_shapes[n].stride)
        self.abfs = nn.ModuleDict(
            {
                name: ABF(
                    student_shapes[name].channels,
                    mid_channels,
                    teacher_shapes[name].channels,
                    norm,
                    fuse=i > 0,
                )
                for i, name in enumerate(self.order)
            }
        )

    def forward(self, features):
        """``{level: student feature}`` -> ``{level: output of the teacher's width}``."""
        outputs, residual = {}, None
        for name in self.order:
            outputs[name], residual = self.abfs[name](features[name], residual)
        return outputs
