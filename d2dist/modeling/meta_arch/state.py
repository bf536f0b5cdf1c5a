"""The layout of a Distiller's state: its student's entries at the top level (a plain student
checkpoint loads into it and it loads into a plain student), its terms' under ``terms.``."""

from collections import OrderedDict
from typing import List, Mapping, Optional, Tuple

__all__ = [
    "STUDENT",
    "TERMS",
    "into_student",
    "report_top_level_names",
    "split_distiller_state",
    "student_at_top_level",
]


STUDENT, TERMS = "student", "terms"


def student_at_top_level(module, state_dict, prefix, local_metadata) -> None:
    """``state_dict`` post-hook: the student's entries (``<prefix>student.X``) as ``<prefix>X``,
    in their order, before the terms'; their metadata (module versions) likewise."""
    inner = f"{prefix}{STUDENT}."
    own = [k for k in state_dict if k.startswith(prefix)]  # the last ones: this module's
    entries = [(k, state_dict.pop(k)) for k in own]
    for k, v in sorted(entries, key=lambda e: not e[0].startswith(inner)):  # stable: student first
        state_dict[prefix + k[len(inner) :] if k.startswith(inner) else k] = v
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        root = prefix + STUDENT
        for k in [k for k in metadata if k == root or k.startswith(root + ".")]:
            value = metadata.pop(k)
            if k != root:  # the student's own root entry would replace the Distiller's
                metadata[prefix + k[len(root) + 1 :]] = value


def into_student(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """``load_state_dict`` pre-hook: entries that are neither ``terms.`` nor (the layout before
    0.2) ``student.`` are the student's, named as in the student alone."""
    module._loading_prefix = prefix
    for k in list(state_dict):
        if k.startswith(prefix) and not k[len(prefix) :].startswith((f"{STUDENT}.", f"{TERMS}.")):
            state_dict[f"{prefix}{STUDENT}.{k[len(prefix):]}"] = state_dict.pop(k)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        own = prefix[:-1]
        for k in list(metadata):
            rest = k if not own else (k[len(own) + 1 :] if k.startswith(own + ".") else None)
            if rest and rest.split(".")[0] not in (STUDENT, TERMS):
                metadata[f"{prefix}{STUDENT}.{rest}"] = metadata.pop(k)


def report_top_level_names(module, incompatible) -> None:
    """``load_state_dict`` post-hook: missing and unexpected student keys named as in
    ``state_dict()`` (without ``student.``)."""
    inner = f"{getattr(module, '_loading_prefix', '')}{STUDENT}."
    for keys in (incompatible.missing_keys, incompatible.unexpected_keys):
        keys[:] = [k.replace(inner, inner[: -len(STUDENT) - 1], 1) if k.startswith(inner)
                   else k for k in keys]  # fmt: skip


def split_distiller_state(state: Mapping) -> Tuple["OrderedDict", List[str]]:
    """The student's entries of a checkpoint's model state, named as in the student alone, and
    the names of the Distiller's own modules it also held (``["terms"]``; ``[]`` for a plain
    model's state). Reads both layouts: the student's entries at the top level, and (d2dist
    before 0.2) under ``student.``."""
    old = any(k.startswith(f"{STUDENT}.") for k in state)

    def student_name(key: str, dotted: bool = True) -> Optional[str]:
        if old:
            if key == STUDENT and not dotted:
                return ""
            return key[len(STUDENT) + 1 :] if key.startswith(f"{STUDENT}.") else None
        return None if key.split(".")[0] == TERMS else key

    student, own = OrderedDict(), set()
    for k, v in state.items():
        name = student_name(k)
        if name is None:
            own.add(k.split(".")[0])
        else:
            student[name] = v
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # module versions, by module path
        student._metadata = OrderedDict(
            (student_name(k, dotted=False), v)
            for k, v in metadata.items()
            if student_name(k, dotted=False) is not None
        )
    return student, sorted(own)
