"""RunDir: the one owner of a run directory's lifecycle (guard, lock, atomic writes, guarded reads)."""

import json
import os
import subprocess
import sys
import types
from dataclasses import dataclass

import pytest
import torch

from lowloss.errors import LowlossError
from lowloss.rundir import (
    CONFIG_FILE,
    LOCK_FILE,
    RESULT_FILE,
    RunDir,
    load_tensors,
    read_json_file,
    read_result,
    run_method,
    save_tensors,
)


def test_new_run_records_config_and_locks(tmp_path):
    rd = RunDir.open(tmp_path / "r", "m", {"a": 1})
    assert rd.finished is None and not rd.resuming
    assert read_json_file(tmp_path / "r" / CONFIG_FILE) == {"a": 1}
    assert (tmp_path / "r" / LOCK_FILE).read_text() == str(os.getpid())
    info = rd.finish({"x": 2.5}, model={"model": "mlp", "data": "digits"})
    assert info["method"] == "m" and info["config"] == {"a": 1} and info["x"] == 2.5
    assert info["model"]["model"] == "mlp" and "torch" in info["versions"]
    assert not (tmp_path / "r" / LOCK_FILE).exists()
    assert read_result(tmp_path / "r", "m") == info


def test_finished_run_is_returned_only_for_the_same_config(tmp_path):
    RunDir.open(tmp_path / "r", "m", {"a": 1}).finish({})
    again = RunDir.open(tmp_path / "r", "m", {"a": 1}, quiet=True)
    assert again.finished is not None and again.finished["config"] == {"a": 1}
    for resume in (False, True):
        with pytest.raises(LowlossError, match="another config; choose a new --out"):
            RunDir.open(tmp_path / "r", "m", {"a": 2}, resume=resume)
    with pytest.raises(LowlossError, match="holds a finished `m` run, not `other`"):
        RunDir.open(tmp_path / "r", "other", {"a": 1})
    fresh = RunDir.open(tmp_path / "r", "m", {"a": 2}, fresh=True)
    assert fresh.finished is None and not (tmp_path / "r" / RESULT_FILE).exists()


def test_interrupted_run_needs_resume_and_the_same_config(tmp_path):
    RunDir.open(tmp_path / "r", "m", {"a": 1}).release()  # started, never finished
    with pytest.raises(LowlossError, match="interrupted m run: continue it with --resume"):
        RunDir.open(tmp_path / "r", "m", {"a": 1})
    with pytest.raises(LowlossError, match="--resume with a different config"):
        RunDir.open(tmp_path / "r", "m", {"a": 2}, resume=True)
    assert RunDir.open(tmp_path / "r", "m", {"a": 1}, resume=True).resuming


def test_foreign_directory_and_file_are_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(LowlossError, match="no lowloss run wrote"):
        RunDir.open(tmp_path / "d", "m", {})
    with pytest.raises(LowlossError, match="which no lowloss run wrote; remove it yourself"):
        RunDir.open(tmp_path / "d", "m", {}, fresh=True)
    assert (tmp_path / "d" / "notes.txt").exists()
    (tmp_path / "f").write_text("")
    with pytest.raises(LowlossError, match="is a file"):
        RunDir.open(tmp_path / "f", "m", {})


def test_a_live_lock_stops_a_second_writer_and_a_stale_one_does_not(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (d / LOCK_FILE).write_text(str(other.pid))
        with pytest.raises(LowlossError, match=f"another lowloss process \\(pid {other.pid}\\)"):
            RunDir.open(d, "m", {})
    finally:
        other.kill()
        other.wait()
    rd = RunDir.open(d, "m", {})  # its process is gone: the lock is stale
    assert (d / LOCK_FILE).read_text() == str(os.getpid())
    rd.release()


def test_damaged_files_are_one_line_errors(tmp_path):
    (tmp_path / "run.json").write_text('{"method": "tr')
    with pytest.raises(LowlossError, match="run.json is damaged"):
        read_json_file(tmp_path / "run.json")
    save_tensors(tmp_path / "w.safetensors", {"w": torch.ones(3)}, {"k": 1})
    t, meta = load_tensors(tmp_path / "w.safetensors")
    assert torch.equal(t["w"], torch.ones(3)) and meta == {"k": "1"}
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LowlossError, match="w.safetensors is damaged"):
        load_tensors(tmp_path / "w.safetensors")
    with pytest.raises(LowlossError, match="is not a finished `lowloss train` run directory"):
        read_result(tmp_path / "nothing", "train")


@dataclass
class _Cfg:
    n: int = 1

    def check(self):
        if self.n < 0:
            raise LowlossError("--n must be >= 0")


def _check_inputs(config, inputs):
    if len(inputs or ()) != 2:
        raise LowlossError("toy needs two runs")


def _fit(config, inputs, run_dir, *, quiet=False):
    if config.n == 99:
        raise LowlossError("--n 99 is found to be bad only while fitting")
    return run_dir.finish({"n": config.n, "seen": len(inputs)})


# a stand-in method module: fit records its inputs; check_inputs wants two of them
_Method = types.ModuleType("lowloss.methods.toy")
_Method.check_inputs, _Method.fit = _check_inputs, _fit


def test_run_method_checks_before_writing_and_records_inputs(tmp_path):
    with pytest.raises(LowlossError, match="--n must be >= 0"):
        run_method(_Method, _Cfg(n=-1), ["a", "b"], tmp_path / "r")
    with pytest.raises(LowlossError, match="two runs"):
        run_method(_Method, _Cfg(), ["a"], tmp_path / "r")
    assert not (tmp_path / "r").exists()
    with pytest.raises(LowlossError, match="only while fitting"):
        run_method(_Method, _Cfg(n=99), ["a", "b"], tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing stale: the corrected command starts afresh
    info = run_method(_Method, _Cfg(n=3), ["a", "b"], tmp_path / "r")
    assert info["method"] == "toy" and info["seen"] == 2
    assert json.loads((tmp_path / "r" / CONFIG_FILE).read_text())["inputs"] == [
        str((tmp_path.cwd() / p).resolve()) for p in ("a", "b")]
    assert run_method(_Method, _Cfg(n=3), ["a", "b"], tmp_path / "r", quiet=True) == info  # finished: as it is
