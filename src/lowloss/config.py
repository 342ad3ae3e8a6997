"""Method configurations: one dataclass per method is the only home of its defaults and help text.

A method's ``Config`` is a plain dataclass. Fields that need more than a type and a default say so with
:func:`option` (help text, choices, the command-line spelling); the ``lowloss`` command builds its options
from these fields, so a default is written exactly once. Fields that many methods share (``lr``, ``wd``,
``seed``, ...) take their help from :data:`COMMON_HELP`: one name and one explanation per concept.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from .errors import LowlossError

# help for the names every method spells the same way
COMMON_HELP = {
    "seed": "Random seed; runs are reproducible.",
    "device": "auto (CUDA if available, else CPU), cpu, cuda, cuda:1, mps.",
    "data": "digits, mnist5k, mnist1d, spirals, regression1d (embedded) or mnist, fashion-mnist, cifar10, cifar100 "
            "(with --data-dir).",
    "data_dir": "Folder with torchvision-format mnist / fashion-mnist / cifar10 / cifar100 (never downloaded).",
    "data_seed": "Seed of the fixed train/test split or synthetic draw (keep it equal across runs you want to "
                 "connect or ensemble).",
    "model": "mlp, convnet, lenet5, vgg16, vgg16bn, preresnet20/110/164, wrn28x10, or package.module:factory.",
    "model_options": "Model option, repeatable: width=2, bn=false, widths=128,128, depth=110.",
    "epochs": "Epochs of training.",
    "lr": "Peak learning rate.",
    "momentum": "SGD momentum.",
    "wd": "Weight decay.",
    "batch_size": "Minibatch size.",
    "bn_subset": "Recompute BN statistics per point on this many fixed training examples (default: all).",
    "executor": "Where independent work runs: local (this process) or ray (tasks on a Ray cluster; pip install "
                "'lowloss[ray]').",
    "ray_address": "Ray cluster to use with --executor ray (default: $RAY_ADDRESS, else a local cluster started "
                   "on demand).",
}


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
           choices: tuple | None = None, flag: str | None = None, metavar: str | None = None,
           parse: Callable[[Any], Any] | None = None, multiple: bool = False, nargs: int | None = None,
           cli: bool = True) -> Any:
    """A Config field with command-line metadata.

    `flag` overrides the option's spelling (``--every`` for ``every_epochs``); `parse` turns the command
    line's value into the field's value (``"a,b" -> ("a", "b")``); `multiple` makes a repeatable option;
    `cli=False` keeps a field out of the command line (Python API only).
    """
    meta = {"help": help, "choices": choices, "flag": flag, "metavar": metavar, "parse": parse,
            "multiple": multiple, "nargs": nargs, "cli": cli}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """What the command line needs to know of one Config field."""

    name: str
    type: Any
    default: Any
    help: str
    choices: tuple | None
    flag: str
    metavar: str | None
    parse: Callable | None
    multiple: bool
    nargs: int | None
    optional: bool


def _base_type(tp) -> tuple[Any, bool]:
    """(the field's scalar type, whether None is allowed) from an annotation such as ``float | None``."""
    args = typing.get_args(tp)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return tp, False


def fields_of(cls) -> list[OptionSpec]:
    """The command-line options of a Config class, in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata or {}
        if not meta.get("cli", True):
            continue
        tp, optional = _base_type(hints.get(f.name, str))
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append(OptionSpec(
            name=f.name, type=tp, default=default, help=meta.get("help") or COMMON_HELP.get(f.name, ""),
            choices=meta.get("choices"), flag=meta.get("flag") or "--" + f.name.replace("_", "-"),
            metavar=meta.get("metavar"), parse=meta.get("parse"), multiple=bool(meta.get("multiple")),
            nargs=meta.get("nargs"), optional=optional or default is None))
    return out


def to_dict(config) -> dict:
    """The config as JSON-ready data (what run directories record)."""
    from .utils import jsonable

    return jsonable(dataclasses.asdict(config))


def replace(config, **changes):
    """A copy of `config` with some fields changed; unknown names are an error naming the valid ones."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise LowlossError(f"{type(config).__module__}.Config has no field {', '.join(unknown)}; "
                           f"valid: {', '.join(sorted(names))}")
    return dataclasses.replace(config, **changes)


MAX_SEED = 2**32 - 1


def check_common(config) -> None:
    """The rules every Config shares, as one-line errors naming the option: every number is finite (a NaN passes
    comparisons such as ``lr > 0`` unnoticed, an infinity makes training diverge) and every seed (``seed``,
    ``*_seed``) is in [0, 2**32 - 1]."""
    import math

    for spec in fields_of(type(config)):
        v = getattr(config, spec.name, None)
        if (spec.name == "seed" or spec.name.endswith("_seed")) and isinstance(v, int) and not isinstance(v, bool):
            require(0 <= v <= MAX_SEED, f"{spec.flag} must be in [0, {MAX_SEED}] (got {v})")
        values = v if isinstance(v, (tuple, list)) else (v,)
        for x in values:
            if isinstance(x, float) and not math.isfinite(x):
                raise LowlossError(f"{spec.flag} must be a finite number (got {x})")


def require(condition: bool, message: str) -> None:
    """Config checks read as a list of rules: ``require(cfg.epochs >= 1, "--epochs must be >= 1")``."""
    if not condition:
        raise LowlossError(message)


def split_list(value) -> tuple[str, ...]:
    """``"a,b, c"`` -> ``("a", "b", "c")``; tuples and lists pass through."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


__all__ = ["COMMON_HELP", "OptionSpec", "check_common", "fields_of", "option", "replace", "require", "split_list", "to_dict"]
