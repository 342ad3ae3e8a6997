"""The executor seam on a local Ray cluster: planes, ensembles, member trainings and the shift benchmark equal
their local runs; a killed worker, an interrupted driver and a failing task leave the same results; bad
input is one line."""

import json
import os
import signal
import sys

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from lowloss.engine import executor as EX  # noqa: E402
from lowloss.methods import plane as PL  # noqa: E402
from lowloss.methods.plane_grid import GridStore, PlaneTask  # noqa: E402
from lowloss.utils import LowlossError, torch_threads  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_plane import _tiny_setup  # noqa: E402

CFG = dict(grid=6, chunk_points=7, batch_size=32)


@pytest.fixture(scope="module")
def cluster():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this test file
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_plane(tmp_path_factory):
    model, data, pts = _tiny_setup()
    inputs = PL.PlaneInputs(model, data, ["A", "B", "C"], pts, {"test": True})
    out = tmp_path_factory.mktemp("local") / "plane"
    with torch_threads(1):  # a Ray task runs at one torch thread (its num_cpus)
        PL.compute_plane(inputs, PL.Config(**CFG), out, quiet=True)
    return inputs, dict(np.load(out / "plane.npz"))


def _same_arrays(path, ref):
    z = np.load(path / "plane.npz")
    for m in PL.METRICS:
        np.testing.assert_array_equal(z[m], ref[m])


def test_plane_through_ray_is_bit_identical_and_resumes(cluster, tiny_plane, tmp_path):
    inputs, ref = tiny_plane
    info = PL.compute_plane(inputs, PL.Config(**CFG, executor="ray"), tmp_path / "ray", quiet=True)
    assert info["finished"] and info["timing"]["points"] == 36
    _same_arrays(tmp_path / "ray", ref)
    # an interrupted driver: two chunks on disk, then the same command finishes it to the same arrays
    part = PL.compute_plane(inputs, PL.Config(**CFG, executor="ray"), tmp_path / "cut", quiet=True,
                            stop_after_chunks=2)
    assert part == {"finished": False, "computed": 14, "total": 36}
    assert len(list((tmp_path / "cut" / "chunks").glob("c_*.npz"))) == 2
    again = PL.compute_plane(inputs, PL.Config(**CFG, executor="ray"), tmp_path / "cut", quiet=True)
    assert again["timing"]["resumed_points"] == 14
    _same_arrays(tmp_path / "cut", ref)


class KillOnce(PlaneTask):
    """Kills its own worker process on the first chunk it meets whose marker file is missing."""

    marker: str = ""

    def __call__(self, indices):
        if 14 in indices and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)  # the pid of the worker running this task
        return super().__call__(indices)


def test_a_killed_worker_changes_nothing(cluster, tiny_plane, tmp_path):
    inputs, ref = tiny_plane
    model, data = inputs.model, inputs.data
    from lowloss.subspaces.plane import Plane

    a, b, c = inputs.anchors
    plane = Plane.through(a, b, c)
    xs, ys = ref["x"], ref["y"]
    task = KillOnce(model, data, plane, xs, ys, PL.METRICS, ("train", "test"), None, 32, None)
    task.marker = str(tmp_path / "killed")
    store = GridStore(tmp_path / "chunks", 36, PL.METRICS, quiet=True)
    assert store.compute(None, task, executor=EX.make_executor("ray"), chunk_points=7)
    assert os.path.exists(task.marker)  # the worker did die, and its chunk was run again
    for m in PL.METRICS:
        np.testing.assert_array_equal(store.arrays((6, 6))[m], ref[m])


class FailOn(PlaneTask):
    def __call__(self, indices):
        if 20 in indices:
            raise ValueError("a broken chunk")
        return super().__call__(indices)


def test_a_failing_task_is_one_line_and_finished_chunks_stay(cluster, tiny_plane, tmp_path):
    inputs, ref = tiny_plane
    from lowloss.subspaces.plane import Plane

    task = FailOn(inputs.model, inputs.data, Plane.through(*inputs.anchors), ref["x"], ref["y"], PL.METRICS,
                  ("train", "test"), None, 32, None)
    store = GridStore(tmp_path / "chunks", 36, PL.METRICS, quiet=True)
    with pytest.raises(LowlossError, match=r"plane chunk 2 failed on a Ray worker \(ValueError: a broken chunk\)"):
        store.compute(None, task, executor=EX.make_executor("ray"), chunk_points=7)
    kept = GridStore(tmp_path / "chunks", 36, PL.METRICS, quiet=True)
    # the chunks that were running when it failed finished and were written (0, 1 and 3 at least)
    assert np.array_equal(kept.done, store.done) and kept.done[:14].all() and kept.done[21:28].all()
    assert not kept.done[14:21].any()
    for m in PL.METRICS:
        np.testing.assert_array_equal(kept.values[m][kept.done], ref[m].reshape(-1)[kept.done])


def _train_jobs(root, seeds):
    from lowloss.methods import train
    from lowloss.methods.ensemble import RunJob

    return [RunJob(train.__name__, train.Config(model="mlp", model_options={"widths": "16", "bn": True}, epochs=1,
                                                batch_size=256, seed=s, device="cpu"), None, root / f"m{s}")
            for s in seeds]


def test_members_trained_through_ray_equal_local_ones(cluster, tmp_path):
    from lowloss.methods.ensemble import run_jobs
    from lowloss.rundir import load_tensors, read_result

    with torch_threads(1):
        dict(run_jobs(_train_jobs(tmp_path / "local", (0, 1)), None, quiet=True))
    remote = dict(run_jobs(_train_jobs(tmp_path / "ray", (0, 1)), EX.make_executor("ray"), quiet=True))
    assert sorted(remote) == [0, 1]
    for s in (0, 1):
        a, _ = load_tensors(tmp_path / "local" / f"m{s}" / "model.safetensors")
        b, _ = load_tensors(tmp_path / "ray" / f"m{s}" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        ra, rb = read_result(tmp_path / "local" / f"m{s}"), read_result(tmp_path / "ray" / f"m{s}")
        assert ra["history"] == rb["history"] and rb["config"] == remote[s]["config"]
        assert not (tmp_path / "ray" / f"m{s}" / ".lock").exists()
    # a finished member is reused, not retrained
    assert dict(run_jobs(_train_jobs(tmp_path / "ray", (0,)), EX.make_executor("ray"), quiet=True))[0] == remote[0]


def test_a_three_member_ensemble_through_ray_equals_local(cluster, tmp_path, digits, monkeypatch):
    from lowloss.methods import ensemble
    from test_uncertainty import _tiny_runs

    dirs = [str(d) for d in _tiny_runs(tmp_path, digits, 3)]
    with torch_threads(1):
        loc = ensemble.ensemble(dirs, out=tmp_path / "ens_local", quiet=True, device="cpu")
    monkeypatch.setattr(ensemble, "member_probs", lambda *a, **k: pytest.fail("evaluated by the driver"))
    ray_ = ensemble.ensemble(dirs, out=tmp_path / "ens_ray", quiet=True, device="cpu", executor="ray")
    assert loc["ensemble"] == ray_["ensemble"] and loc["inputs"] == ray_["inputs"]
    pa, pb = ensemble.load(tmp_path / "ens_local"), ensemble.load(tmp_path / "ens_ray")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_shift_through_ray_equals_local(cluster, tmp_path, digits, monkeypatch):
    from lowloss.methods import shift
    from lowloss.rundir import run_method
    from test_uncertainty import _tiny_runs

    runs = [str(r) for r in _tiny_runs(tmp_path, digits)]
    kw = dict(corruptions="gaussian_noise,contrast", severities="1,3", device="cpu")
    with torch_threads(1):
        loc = run_method(shift, shift.Config(**kw), runs, tmp_path / "local", quiet=True)
    monkeypatch.setattr(shift, "shift_split", lambda *a, **k: pytest.fail("a shifted split made by the driver"))
    rem = run_method(shift, shift.Config(**kw, executor="ray"), runs, tmp_path / "ray", quiet=True)
    for k in loc:
        if k not in ("config", "versions"):
            assert json.dumps(loc[k], sort_keys=True) == json.dumps(rem[k], sort_keys=True), k
    assert (tmp_path / "ray" / "cache" / "ensemble" / "contrast_3.safetensors").exists()


def test_bad_input_is_one_line(cluster, monkeypatch):
    with pytest.raises(LowlossError, match="executor must be one of local, ray"):
        EX.make_executor("dask")
    with pytest.raises(LowlossError, match=r"cannot reach the Ray cluster at --ray-address 127\.0\.0\.1:1 "):
        EX._reachable("127.0.0.1:1")
    with pytest.raises(LowlossError, match="is not HOST:PORT"):
        EX._reachable("nowhere")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh driver
    with pytest.raises(LowlossError, match=r"--ray-address 127\.0\.0\.1:1"):
        EX.make_executor("ray", "127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    with pytest.raises(LowlossError, match=r"pip install 'lowloss\[ray\]'"):
        EX.make_executor("ray")


def _stage_jobs(name, seconds):
    def jobs(settings, study):
        import time

        (study / f"{name}.start").write_text(repr(time.time()))
        time.sleep(seconds)
        (study / f"{name}.end").write_text(repr(time.time()))
        return []

    return jobs


def test_study_stages_run_at_the_same_time_in_dependency_order(cluster, tmp_path):
    from lowloss import study as S

    stages = [S.Stage("a", "A", _stage_jobs("a", 1.5)), S.Stage("b", "B", _stage_jobs("b", 0.1), ("a",)),
              S.Stage("c", "C", _stage_jobs("c", 1.5))]
    done = []
    S._run_concurrently(stages, S.Settings(executor="ray", quiet=True), tmp_path, lambda st, secs: done.append(st.name))
    t = {f"{n}.{e}": float((tmp_path / f"{n}.{e}").read_text()) for n in "abc" for e in ("start", "end")}
    assert sorted(done) == ["a", "b", "c"] and done.index("a") < done.index("b")
    assert t["c.start"] < t["a.end"] and t["a.start"] < t["c.end"]  # independent stages overlap
    assert t["b.start"] >= t["a.end"]  # a stage starts after the stages it needs
