"""Nothing lost, nothing unexplained: damaged files, a full or read-only disk, two writers on one --out.

Every file lowloss reads goes through rundir's guarded readers (read_json_file, load_tensors, load_npz): a
damaged, cut-short, empty, wrong-kind or foreign file is a one-line error naming the file and the fix; inside a
resumable run a damaged checkpoint or chunk is recomputed, not trusted."""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lowloss.api import run
from lowloss.cli import main
from lowloss.errors import LowlossError
from lowloss.rundir import (
    CHECKPOINT_FILE,
    LOCK_FILE,
    load_npz,
    load_tensors,
    read_json_file,
    save_npz,
    save_tensors,
)
from lowloss.utils import write_json

TINY = {"epochs": 1, "model": "mlp", "device": "cpu", "batch_size": 256}


def _one_line_error(capsys, argv, code=2) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------------------------------ damaged files
def _variants(good: bytes, other: bytes) -> dict[str, bytes | None]:
    """The ways a file can be bad: cut short (several places), empty, garbage, another kind of file, a dir."""
    return {"truncated_1": good[:1], "truncated_8": good[:8], "truncated_half": good[: len(good) // 2],
            "truncated_last_byte": good.rstrip()[:-1], "empty": b"", "garbage": os.urandom(64),
            "text": b"hello, not a lowloss file\n", "wrong_kind": other, "directory": None}


def _write_variant(path: Path, data: bytes | None) -> None:
    if path.is_dir():
        path.rmdir()
    elif path.exists():
        path.unlink()
    if data is None:
        path.mkdir()
    else:
        path.write_bytes(data)


def _kinds(tmp_path):
    save_tensors(tmp_path / "a.safetensors", {"w": torch.arange(100.0)}, {"k": "v"})
    save_npz(tmp_path / "a.npz", {"x": np.arange(100.0), "y": np.ones((4, 4))})
    write_json(tmp_path / "a.json", {"method": "train", "values": list(range(50))})
    raw = {k: (tmp_path / f"a.{k}").read_bytes() for k in ("safetensors", "npz", "json")}
    return {"safetensors": (load_tensors, raw["safetensors"], raw["npz"]),
            "npz": (load_npz, raw["npz"], raw["safetensors"]),
            "json": (read_json_file, raw["json"], raw["npz"])}


@pytest.mark.parametrize("kind", ["safetensors", "npz", "json"])
def test_every_damaged_file_is_a_one_line_error_naming_it(tmp_path, kind):
    reader, good, other = _kinds(tmp_path)[kind]
    path = tmp_path / f"b.{kind}"
    path.write_bytes(good)
    reader(path)  # the good one reads
    for name, data in _variants(good, other).items():
        _write_variant(path, data)
        with pytest.raises(LowlossError) as e:
            reader(path)
        msg = str(e.value)
        assert str(path) in msg and "\n" not in msg, (name, msg)
        assert "re-run" in msg or "does not exist" in msg, (name, msg)
    _write_variant(path, b"")
    path.unlink()
    with pytest.raises(LowlossError, match="does not exist"):
        reader(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("trained") / "m0"
    run("train", out=d, quiet=True, plots=False, **TINY)
    return d


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("target", ["model.safetensors", "run.json"])
def test_eval_of_a_damaged_run_is_a_one_line_error(trained, tmp_path, capsys, target):
    """The issue's report: `lowloss eval` on a run whose weights or run.json were cut short."""
    for name, data in _variants((trained / target).read_bytes(), b"PK\x03\x04junk").items():
        d = _copy(trained, tmp_path / f"{name}")
        _write_variant(d / target, data)
        err = _one_line_error(capsys, ["eval", str(d), "--device", "cpu", "--out", str(tmp_path / f"e_{name}")])
        assert target in err and ("re-run" in err or "delete" in err), (name, err)
        assert not (tmp_path / f"e_{name}").exists()


def test_a_damaged_checkpoint_is_retrained_not_trusted(tmp_path):
    """An interrupted train whose checkpoint is cut short starts over and ends where an uninterrupted run ends."""
    from lowloss.methods import train as T

    cfg = T.Config(**{**TINY, "epochs": 3})
    ref = T.train(cfg, tmp_path / "ref", quiet=True)
    T.train(cfg, tmp_path / "r", quiet=True, stop_after_epochs=2)
    ck = tmp_path / "r" / CHECKPOINT_FILE
    ck.write_bytes(ck.read_bytes()[:100])
    out = T.train(cfg, tmp_path / "r", quiet=True, resume=True)
    assert out["history"] == ref["history"]
    a, _ = load_tensors(tmp_path / "ref" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "r" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_damaged_plane_chunk_is_recomputed(trained, tmp_path):
    from lowloss.methods.plane import CHUNK_DIR, plane

    runs = [trained] * 0
    d0 = tmp_path / "m1"
    run("train", out=d0, quiet=True, plots=False, **{**TINY, "seed": 1})
    d1 = tmp_path / "m2"
    run("train", out=d1, quiet=True, plots=False, **{**TINY, "seed": 2})
    runs = [trained, d0, d1]
    kw = {"grid": 4, "chunk_points": 4, "device": "cpu", "bn_subset": 64, "metrics": ("test_loss", "test_error")}
    ref = plane(runs, out=tmp_path / "ref", quiet=True, **kw)
    plane(runs, out=tmp_path / "p", quiet=True, stop_after_chunks=3, **kw)
    chunks = sorted((tmp_path / "p" / CHUNK_DIR).glob("c_*.npz"))
    assert len(chunks) == 3
    chunks[0].write_bytes(chunks[0].read_bytes()[:50])  # cut short
    chunks[1].write_bytes(b"")  # empty
    out = plane(runs, out=tmp_path / "p", quiet=True, **kw)
    assert out["timing"]["points_this_session"] == 16 - 4  # two damaged chunks computed again
    a, b = load_npz(tmp_path / "ref" / "plane.npz"), load_npz(tmp_path / "p" / "plane.npz")
    for k in ("test_loss", "test_error"):
        np.testing.assert_array_equal(a[k], b[k])
    assert ref["points"].keys() == out["points"].keys()


# ------------------------------------------------------------------------------------------ full / read-only disk
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("where", ["start", "model"])
def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, code, where):
    """Writes fail (a full disk, a read-only location, no permission) when the run starts (config.json) or when
    it saves its weights: one line naming the path and the fix, and nothing half-written left behind."""
    real_replace = os.replace

    def failing_replace(src, dst, *a, **k):
        if where == "start" or Path(dst).name == "model.safetensors":
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing_replace)
    out = tmp_path / "r"
    err = _one_line_error(capsys, ["train", "--out", str(out), "-q", "--no-plots",
                                   *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in TINY.items()), [])], code=1)
    assert errno.errorcode[code] in err and "--out" in err
    assert str(out) in err
    monkeypatch.setattr(os, "replace", real_replace)
    if where == "start":
        assert not out.exists()  # a new run that saved nothing leaves nothing
    else:  # it trained: what is there is an interrupted run (no temporary files, no lock) that --resume finishes
        left = sorted(p.name for p in out.iterdir())
        assert not [n for n in left if n.endswith(".tmp") or n == LOCK_FILE], left
        assert "model.safetensors" not in left and "run.json" not in left
        main(["train", "--out", str(out), "-q", "--no-plots", "--resume",
              *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in TINY.items()), [])])
        assert (out / "run.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; simulated above instead")
def test_a_read_only_directory_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        err = _one_line_error(capsys, ["train", "--out", str(ro / "r"), "-q", "--epochs", "1"], code=1)
        assert "EACCES" in err or "EROFS" in err
    finally:
        ro.chmod(0o700)


def test_other_os_errors_are_not_hidden(monkeypatch):
    from lowloss.cli import os_error_message

    assert os_error_message(OSError(errno.ENOSPC, "No space left on device", "/x/y")).startswith("/x/y: No space")
    assert os_error_message(OSError(errno.EIO, "I/O error")) is None  # not the user's to fix: a traceback


# ------------------------------------------------------------------------------------------ two writers
def _env():
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_two_processes_on_one_out_the_second_stops_with_a_clear_error(tmp_path, capsys):
    """Two real `lowloss train` processes on the same --out: the second stops at once (also with --resume or
    --fresh, which must not delete what the first is writing); after the first is killed the lock is stale."""
    out = tmp_path / "r"
    args = ["train", "--out", str(out), "-q", "--no-plots", "--model", "mlp", "--device", "cpu", "--epochs", "400"]
    first = subprocess.Popen([sys.executable, "-m", "lowloss.cli", *args], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / LOCK_FILE).exists() and time.time() < deadline:
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        assert (out / LOCK_FILE).read_text() == str(first.pid)
        second = subprocess.run([sys.executable, "-m", "lowloss.cli", *args], env=_env(),
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert second.stderr.startswith("error: ") and second.stderr.count("\n") == 1, second.stderr
        assert f"being written by another lowloss process (pid {first.pid})" in second.stderr
        for extra in (["--resume"], ["--fresh"]):  # this test's process is a second writer too
            err = _one_line_error(capsys, [*args, *extra])
            assert f"being written by another lowloss process (pid {first.pid})" in err
            assert first.poll() is None  # the first one goes on, its directory untouched
            assert (out / "config.json").exists()
    finally:
        first.kill()
        first.wait()
    # killed: its lock is stale, and the interrupted run is continued (here: just opened) by the next one
    from lowloss.methods.train import Config
    from lowloss.rundir import RunDir, config_record

    cfg = Config(model="mlp", device="cpu", epochs=400)
    rd = RunDir.open(out, "train", config_record(cfg), resume=True, quiet=True)
    assert rd.resuming and (out / LOCK_FILE).read_text() == str(os.getpid())
    rd.release()


def test_a_lock_left_by_a_killed_process_or_cut_short_is_stale(tmp_path):
    from lowloss.rundir import RunDir

    for i, content in enumerate(("", "12", "not a pid", "999999999")):
        d = tmp_path / f"d{i}"
        d.mkdir()
        (d / LOCK_FILE).write_text(content)
        if content == "12":  # a pid that now belongs to something else (not a lowloss / python process)
            p = subprocess.Popen(["sleep", "30"])
            while not Path(f"/proc/{p.pid}/cmdline").read_bytes():  # until it has exec'ed
                time.sleep(0.01)
            (d / LOCK_FILE).write_text(str(p.pid))
        try:
            rd = RunDir.open(d, "m", {}, quiet=True)
            assert (d / LOCK_FILE).read_text() == str(os.getpid())
            rd.release()
        finally:
            if content == "12":
                p.kill()
                p.wait()
    assert json.loads((tmp_path / "d0" / "config.json").read_text()) == {}


def test_a_damaged_shift_cache_entry_is_recomputed(tmp_path):
    import torch

    from lowloss.methods.shift import LogitCache

    cache = LogitCache(tmp_path)
    cache.put("single", "k", torch.ones(2, 3), torch.tensor([0, 1]))
    assert torch.equal(cache.get("single", "k")[0], torch.ones(2, 3))
    path = cache.path("single", "k")
    path.write_bytes(path.read_bytes()[:20])
    assert cache.get("single", "k") is None and not path.exists()
