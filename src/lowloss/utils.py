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


def _damaged(path: Path, e: BaseException, fix: str | None = None) -> LowlossError:
    fix = fix or "re-run the command that wrote it, or delete its directory"
    detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else e.__class__.__name__
    return LowlossError(f"{path} is damaged or not a file lowloss wrote ({e.__class__.__name__}: {detail}); {fix}")


def _readable(path: Path) -> None:
    if not path.exists():
        raise LowlossError(f"{path} does not exist")
    if path.is_dir():
        raise LowlossError(f"{path} is a directory, not a file; re-run the command that writes it")


def read_json_file(path: str | os.PathLike, *, fix: str | None = None) -> Any:
    """A JSON file lowloss wrote; a damaged, cut-short, empty or foreign file is a one-line error naming it."""
    path = Path(path)
    _readable(path)
    try:
        return json.loads(path.read_text())
    except PermissionError:
        raise
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _damaged(path, e, fix) from None


read_json = read_json_file


def load_tensors(path: str | os.PathLike, device=None, *, fix: str | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a damaged, cut-short, empty or foreign file is a one-line error
    naming it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    _readable(path)
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        return load_file(str(path), device=str(device) if device is not None else "cpu"), meta
    except PermissionError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise _damaged(path, e, fix) from None


def load_tensor_metadata(path: str | os.PathLike, *, fix: str | None = None) -> dict[str, str]:
    """The metadata of a safetensors file without reading its tensors (guarded like :func:`load_tensors`)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _readable(path)
    try:
        with safe_open(str(path), "pt") as fh:
            return fh.metadata() or {}
    except PermissionError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise _damaged(path, e, fix) from None


def meta_json(meta: dict, key: str, path: str | os.PathLike, default: Any = None) -> Any:
    """A JSON value stored as a string in a file's metadata; an unreadable one is a one-line error naming the file."""
    if key not in meta:
        return default
    try:
        return json.loads(meta[key])
    except (ValueError, TypeError) as e:
        raise _damaged(Path(path), e) from None


def load_npz(path: str | os.PathLike, *, fix: str | None = None) -> dict[str, np.ndarray]:
    """All arrays of an .npz file lowloss wrote, read eagerly (no pickles); a damaged, cut-short, empty or
    foreign file is a one-line error naming it."""
    import zipfile

    path = Path(path)
    _readable(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            return {k: z[k] for k in z.files}
    except PermissionError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as e:
        raise _damaged(path, e, fix) from None


def save_npz(path: str | os.PathLike, arrays: dict) -> None:
    """Arrays as .npz, atomically (a temporary name, then renamed)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


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
