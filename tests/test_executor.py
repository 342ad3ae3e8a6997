"""The process executor behind `lowloss study --jobs`: results, one-line errors, dead workers, and stages that
run at the same time in dependency order."""

import functools
import os
import signal
import time

import pytest

from lowloss.engine.executor import ProcessExecutor
from lowloss.errors import LowlossError


def square(k):
    return k * k


def fail_on(bad, k):
    if k == bad:
        raise ValueError(f"item {k} is bad")
    time.sleep(0.2)
    return k


def threads(_k):
    import torch

    return torch.get_num_threads()


def die(_k):
    os.kill(os.getpid(), signal.SIGKILL)


def test_map_yields_every_result_with_its_index_and_sets_threads():
    ex = ProcessExecutor(2, threads=1)
    try:
        got = dict(ex.map(square, range(7)))
        assert got == {k: k * k for k in range(7)}
        assert {t for _, t in ex.map(threads, range(2))} == {1}
    finally:
        ex.close()


def test_a_failing_task_is_one_line_naming_it_and_the_others_still_arrive():
    ex = ProcessExecutor(2, threads=1)
    got = []
    try:
        with pytest.raises(LowlossError, match=r"^job 1 failed in a worker process \(ValueError: item 1 is bad\)$"):
            for i, _r in ex.map(functools.partial(fail_on, 1), [0, 1, 2], label="job"):
                got.append(i)
    finally:
        ex.close()
    assert 0 in got and 1 not in got


def test_a_worker_that_dies_is_reported_not_hung():
    ex = ProcessExecutor(1, threads=1)
    try:
        h = ex.submit(die, 0, label="study stage x")
        with pytest.raises(LowlossError, match="study stage x: a worker process died") as e:
            ex.wait([h])
        assert e.value.handle is h
    finally:
        ex.close()


def _stage_jobs(name, seconds, settings, study):
    (study / f"{name}.start").write_text(repr(time.time()))
    time.sleep(seconds)
    if name == "bad":
        raise LowlossError("stage bad broke")
    (study / f"{name}.end").write_text(repr(time.time()))
    return []


def _stage(name, seconds, needs=()):
    from lowloss import study as S

    return S.Stage(name, name.upper(), functools.partial(_stage_jobs, name, seconds), needs)


def test_study_stages_run_at_the_same_time_in_dependency_order(tmp_path):
    from lowloss import study as S

    stages = [_stage("a", 2.0), _stage("b", 0.1, ("a",)), _stage("c", 2.0)]
    done = []
    S._run_concurrently(stages, S.Settings(jobs=2, quiet=True), tmp_path, lambda st, secs: done.append(st.name))
    t = {f"{n}.{e}": float((tmp_path / f"{n}.{e}").read_text()) for n in "abc" for e in ("start", "end")}
    assert sorted(done) == ["a", "b", "c"] and done.index("a") < done.index("b")
    assert t["c.start"] < t["a.end"] and t["a.start"] < t["c.end"]  # independent stages overlap
    assert t["b.start"] >= t["a.end"]  # a stage starts after the stages it needs


def test_a_failing_stage_lets_the_running_one_finish_and_starts_nothing_new(tmp_path):
    from lowloss import study as S

    stages = [_stage("bad", 0.1), _stage("slow", 1.5), _stage("after", 0.1, ("bad",)), _stage("later", 0.1)]
    done = []
    with pytest.raises(LowlossError, match="^study stage bad failed: stage bad broke$"):
        S._run_concurrently(stages, S.Settings(jobs=2, quiet=True), tmp_path, lambda st, secs: done.append(st.name))
    assert done == ["slow"]  # recorded although another stage failed
    assert not (tmp_path / "after.start").exists() and not (tmp_path / "later.start").exists()


def test_jobs_must_not_be_negative():
    from lowloss import study as S

    with pytest.raises(LowlossError, match="--jobs must be 0"):
        S.Settings(jobs=-1)
    assert S.stage_slots(S.Settings(jobs=1))[0] == 1


def test_an_interrupted_driver_stops_its_stages_at_once(tmp_path, monkeypatch):
    """Ctrl-C while stages run: the worker processes are terminated, not waited for."""
    from lowloss import study as S

    stages = [S.Stage(n, n, functools.partial(_jobs_sleep, n)) for n in ("a", "b")]
    calls = []

    def wait_then_interrupt(self, handles):
        deadline = time.time() + 30
        while not all((tmp_path / f"{n}.pid").exists() for n in "ab") and time.time() < deadline:
            time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(ProcessExecutor, "wait", wait_then_interrupt)
    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        S._run_concurrently(stages, S.Settings(jobs=2, quiet=True), tmp_path, lambda st, secs: calls.append(st))
    assert time.time() - t0 < 30 and not calls
    for n in "ab":
        pid = int((tmp_path / f"{n}.pid").read_text())
        deadline = time.time() + 10
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)


def _jobs_sleep(name, settings, study):
    (study / f"{name}.pid").write_text(str(os.getpid()))
    time.sleep(60)
    return []


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie not yet reaped by its parent counts as gone
        return "Z" not in open(f"/proc/{pid}/stat").read().split()[2]
    except OSError:
        return False


def test_a_one_thread_stage_is_identical_whatever_jobs(tmp_path):
    """modes1d trains its networks at one thread: in this process (--jobs 1) or in a worker (--jobs 2), the
    same weights, bit for bit."""
    from safetensors.torch import load_file

    from lowloss import study as S

    for jobs in (1, 2):
        S.run_study(tmp_path / f"j{jobs}", S.Settings(size="tiny", quiet=True, device="cpu", jobs=jobs),
                    only=["modes1d"])
    for k in (0, 1, 2):
        a = load_file(tmp_path / "j1" / "modes1d" / f"seed{k}" / "model.safetensors")
        b = load_file(tmp_path / "j2" / "modes1d" / f"seed{k}" / "model.safetensors")
        assert a.keys() == b.keys() and all(a[n].equal(b[n]) for n in a)
