"""Crash consistency: `kill -9` at random moments of train, connect, plane, swag, espro and the study, then the
same command again (with --resume where the command needs it), ends with results identical to an uninterrupted
run: the same run.json (less timing) and bit-identical tensors and arrays.

Each command is run in real subprocesses: once uninterrupted (its wall time T sets the kill moments), then for
several seeded random moments (a fraction of the time it works after opening --out) killed, killed again while resuming, and finished. These are
long (minutes); they are marked slow: ``pytest -m slow tests/test_crash.py``."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lowloss.rundir import CHECKPOINT_FILE, LOCK_FILE, load_npz, load_tensors

pytestmark = pytest.mark.slow

# what differs between any two runs (wall times, the machine's measured speed, versions) or records this session
# only (points computed now, stages cached now): left out of the comparison
TIME_WORDS = ("seconds", "timing", "versions", "resumed", "this_session", "per_second", "finished", "elapsed",
              "machine", "stages")
KILLS = int(os.environ.get("LOWLOSS_CRASH_POINTS", "3"))  # kill points per command


def _env():
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _cmd(args):
    return [sys.executable, "-m", "lowloss.cli", *args]


def _started(out: Path) -> bool:
    return (out / "config.json").exists() or (out / "study_config.json").exists()


def _run(args, out: Path | None = None) -> tuple[float, float]:
    """Run to the end; (total wall time, seconds from the moment the run directory was opened to the end)."""
    t0 = time.time()
    p = subprocess.Popen(_cmd(args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    opened = None
    while p.poll() is None:
        if opened is None and out is not None and _started(out):
            opened = time.time()
        time.sleep(0.01)
    err = p.stderr.read()
    assert p.returncode == 0, (args, err[-3000:])
    end = time.time()
    return end - t0, end - (opened or t0)


def _kill_at(args, out: Path, delay: float) -> str:
    """Start the command, wait until it has opened its run directory, SIGKILL it `delay` seconds later.
    Returns what the kill interrupted: "work" (it was still running) or "finished" (it ended before)."""
    p = subprocess.Popen(_cmd(args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while p.poll() is None and not _started(out):
        time.sleep(0.005)
    try:
        p.wait(timeout=delay)
        return "finished"
    except subprocess.TimeoutExpired:
        p.kill()  # SIGKILL: no handler runs, no file is closed cleanly
        p.wait()
        return "work"


def _left(out: Path) -> str:
    held = [f for f in out.rglob("*") if f.is_file()] if out.exists() else []
    kinds = [("checkpoint", lambda f: f.name == CHECKPOINT_FILE), ("lock", lambda f: f.name == LOCK_FILE),
             ("partial", lambda f: "partial" in f.name or f.suffix == ".npz" or f.name.startswith("progress")),
             ("run.json", lambda f: f.name == "run.json")]
    return f"{len(held)} files" + "".join(f", {sum(map(t, held))} {k}" for k, t in kinds if any(map(t, held)))


def _clean(obj, out: str):
    if isinstance(obj, dict):
        return {k: _clean(v, out) for k, v in obj.items() if not any(w in k for w in TIME_WORDS)}
    if isinstance(obj, list):
        return [_clean(v, out) for v in obj]
    if isinstance(obj, str):
        return obj.replace(out, "<OUT>")
    return obj


def _snapshot(d: Path) -> dict:
    """What a finished run directory (tree) holds: JSON less timing, tensors, arrays."""
    out = {}
    for f in sorted(d.rglob("*")):
        rel = str(f.relative_to(d))
        assert f.name not in (CHECKPOINT_FILE, LOCK_FILE) and not f.name.endswith(".tmp"), f"left behind: {rel}"
        if f.suffix == ".json" and f.name != "study_config.json":
            out[rel] = _clean(json.loads(f.read_text()), str(d))
        elif f.suffix == ".safetensors":
            t, meta = load_tensors(f)
            out[rel] = ({k: v for k, v in t.items()}, _clean(meta, str(d)))
        elif f.suffix == ".npz":
            out[rel] = load_npz(f)
    return out


def _same(a: dict, b: dict):
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, tuple):
            assert x[0].keys() == y[0].keys(), k
            for n in x[0]:
                assert torch.equal(x[0][n], y[0][n]), (k, n)
            assert x[1] == y[1], k
        elif k.endswith(".npz"):
            assert x.keys() == y.keys(), k
            for n in x:
                np.testing.assert_array_equal(x[n], y[n], err_msg=f"{k}:{n}")
        else:
            assert x == y, k


@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    base = tmp_path_factory.mktemp("modes")
    dirs = []
    for s in range(3):
        d = base / f"m{s}"
        _run(["train", "--out", str(d), "--model", "mlp", "--epochs", "2", "--device", "cpu", "--seed", str(s),
              "-q", "--no-plots"])
        dirs.append(str(d))
    return dirs


COMMANDS = {
    "train": lambda m: ["train", "--model", "mlp", "--epochs", "16", "--device", "cpu"],
    "connect": lambda m: ["connect", m[0], m[1], "--epochs", "8", "--points", "15", "--device", "cpu"],
    "plane": lambda m: ["plane", m[0], m[1], m[2], "--grid", "14", "--chunk-points", "4", "--device", "cpu"],
    "swag": lambda m: ["swag", m[0], "--epochs", "10", "--rank", "3", "--samples", "3", "--device", "cpu"],
    "espro": lambda m: ["espro", m[0], "--vertices", "2", "--epochs-per-vertex", "5", "--members", "3",
                        "--device", "cpu"],
    "study": lambda m: ["study", "--size", "tiny", "--stage", "modes", "--stage", "connect_bezier",
                        "--device", "cpu"],
}
NEEDS_RESUME = {"train", "connect", "swag", "espro"}  # plane and the study continue by themselves


@pytest.mark.parametrize("name", list(COMMANDS))
def test_kill_9_at_random_moments_then_rerun_gives_the_uninterrupted_result(modes, tmp_path, name):
    base = COMMANDS[name](modes)
    common = ["-q", "--no-plots"] if name != "study" else ["-q"]
    ref = tmp_path / "ref"
    total, work = _run([*base, "--out", str(ref), *common], ref)
    expected = _snapshot(ref)
    rng = random.Random(f"{name}-kills")
    report = []
    for k in range(KILLS):
        out = tmp_path / f"k{k}"
        args = [*base, "--out", str(out), *common]
        again = [*args, "--resume"] if name in NEEDS_RESUME else args
        t1, t2 = rng.uniform(0.2, 0.97) * work, rng.uniform(0.1, 0.97) * work
        first = _kill_at(args, out, t1)
        left1 = _left(out)
        second = _kill_at(again, out, t2)
        left2 = _left(out)
        _run(again)
        _same(expected, _snapshot(out))
        report.append(f"kill at {t1:.2f}s ({first}, left {left1}), kill the rerun at {t2:.2f}s ({second}, left {left2})")
    print(f"\n{name}: uninterrupted {total:.1f}s ({work:.1f}s after opening --out); " + "; ".join(report))
