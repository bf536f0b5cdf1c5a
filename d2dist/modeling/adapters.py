"""Adapters: map a student tensor to the teacher's shape before a loss compares them.

Each adapter is built from the two networks' ``ShapeSpec`` (channels, stride) of one feature,
never from a dummy forward pass.
"""

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry
from torch import nn

from ..config import ConfigError

__all__ = ["ADAPTER_REGISTRY", "IdentityAdapter", "Conv1x1Adapter", "build_adapter"]

ADAPTER_REGISTRY = Registry("DISTILL_ADAPTER")
ADAPTER_REGISTRY.__doc__ = """
Adapters from a student feature to its teacher counterpart. A registered class is called as
``cls(student_shape: ShapeSpec, teacher_shape: ShapeSpec, norm: str, key: str)`` (``key`` names
the feature in messages) and returns an ``nn.Module`` mapping a student tensor (N, Cs, H, W) to
(N, Ct, H, W). It must raise ``ConfigError`` at construction for shapes it cannot map.
"""


def _check_stride(student: ShapeSpec, teacher: ShapeSpec, key: str) -> None:
    if student.stride != teacher.stride:
        raise ConfigError(
            f"feature {key!r} has stride {student.stride} in the student and {teacher.stride} in "
            "the teacher; adapters map channels, not resolutions. Pair levels of equal stride "
            "(same FPN level names) or change one network's IN_FEATURES."
        )


@ADAPTER_REGISTRY.register()
class IdentityAdapter(nn.Identity):
    """No adapter: the student's feature already has the teacher's shape (checked at build)."""

    def __init__(self, student_shape: ShapeSpec, teacher_shape: ShapeSpec, norm: str, key: str):
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


@ADAPTER_REGISTRY.register()
class Conv1x1Adapter(nn.Sequential):
    """1x1 convolution from student to teacher channels, optionally followed by a norm layer."""

    def __init__(self, student_shape: ShapeSpec, teacher_shape: ShapeSpec, norm: str, key: str):
        _check_stride(student_shape, teacher_shape, key)
        conv = Conv2d(student_shape.channels, teacher_shape.channels, 1, bias=not norm)
        nn.init.kaiming_uniform_(conv.weight, a=1)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        layers = [conv]
        if norm:
            layers.append(get_norm(norm, teacher_shape.channels))
        super().__init__(*layers)


def build_adapter(
    name: str, student_shape: ShapeSpec, teacher_shape: ShapeSpec, norm: str = "", key: str = "?"
) -> nn.Module:
    """Build adapter ``name`` (``"auto"``: identity when channels match, else 1x1 conv)."""
    if name == "auto":
        same = student_shape.channels == teacher_shape.channels
        name = "IdentityAdapter" if same and not norm else "Conv1x1Adapter"
    if name not in ADAPTER_REGISTRY:
        raise ConfigError(
            f"unknown adapter {name!r} for feature {key!r}; registered adapters: "
            f"{sorted(n for n, _ in ADAPTER_REGISTRY)} (or 'auto')"
        )
    adapter = ADAPTER_REGISTRY.get(name)(student_shape, teacher_shape, norm, key)
    assert isinstance(adapter, nn.Module), f"adapter {name} returned {type(adapter)}"
    return adapter
