"""Small shared helpers: devices, seeds, atomic files, JSON, versions, progress bars."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import LowlossError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA when available, then Apple MPS, then CPU."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LowlossError(f"--device {device} was asked for but CUDA is not available; use --device cpu or auto.")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a dedicated CPU generator for data order."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def versions() -> dict[str, str]:
    from ._version import __version__

    out = {
        "lowloss": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else (1e308 if obj > 0 else -1e308)
    if isinstance(obj, torch.device):
        return str(obj)
    return obj


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    A half-written file is therefore never mistaken for a finished one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def jsonable(obj: Any) -> Any:
    return _jsonable(obj)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with `n` intra-op threads (tiny networks: extra threads only add overhead); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", quiet: bool = False,
             unit: str = "it", **kw):
    """A tqdm progress bar with ETA; silent when `quiet` or when stderr is not a terminal."""
    from tqdm.auto import tqdm

    disable = quiet or not sys.stderr.isatty() or os.environ.get("CI") == "true"
    return tqdm(iterable, total=total, desc=desc, disable=disable, unit=unit, leave=False, dynamic_ncols=True, **kw)


def echo(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


_ALLOCATOR_TUNED: bool | None = None
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks up to 32 MiB in the heap instead of unmapping them (done once).

    Whole-dataset passes allocate and free the same large activations for every parameter vector; by
    default glibc returns each one to the kernel and the next pass page-faults it back in (about 11,000
    faults per point for the digits convnet, a quarter of the evaluation time). With the blocks kept, the
    process holds on to up to `TRIM_THRESHOLD` (256 MiB) of freed memory. Set ``LOWLOSS_MALLOPT=0`` to leave
    the allocator alone. Returns whether the setting is in force (False off glibc).
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is None:
        _ALLOCATOR_TUNED = False
        if os.environ.get("LOWLOSS_MALLOPT", "1") != "0" and sys.platform.startswith("linux"):
            try:
                import ctypes

                libc = ctypes.CDLL("libc.so.6")
                m_trim_threshold, m_mmap_threshold = -1, -3
                _ALLOCATOR_TUNED = bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
                                        and libc.mallopt(m_trim_threshold, TRIM_THRESHOLD))
            except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
                _ALLOCATOR_TUNED = False
    return _ALLOCATOR_TUNED
