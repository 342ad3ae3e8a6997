"""SPRO / ESPRO on tiny models: positive volume, fixed modes untouched, exact resume, the four methods' run
directories, configs and loaders."""

import json
import math

import pytest
import torch
from safetensors import safe_open

from conftest import train_tiny_mlps
from lowloss.data import Dataset
from lowloss.methods.spro import (
    SproConfig,
    grow_complex,
    random_init_vector,
    regularisation_scale,
    save_complex,
)
from lowloss.params import flatten
from lowloss.subspaces.simplex import Complex


@pytest.fixture
def tiny_data(digits):
    return Dataset("digits-tiny", digits.train.subset(64), digits.test.subset(32), digits.input_shape,
                   digits.num_classes)


CFG = SproConfig(epochs=2, lr=0.05, lmbda=1e-2, samples=2, batch_size=32)
CFG1 = SproConfig(epochs=1, lr=0.05, lmbda=1e-2, samples=2, batch_size=32)


def test_tiny_spro_keeps_volume_positive_and_modes_fixed(tiny_bn, tiny_data):
    mode = flatten(tiny_bn).clone()
    state = {k: v.clone() for k, v in tiny_bn.state_dict().items()}
    res = grow_complex(tiny_bn, tiny_data, [mode], [(0, 1, 2)], 2, CFG1, seed=0, quiet=True)
    c = res.complex
    assert c.num_vertices == 3 and c.simplexes == [(0, 1, 2)]
    assert torch.equal(c.control(0), mode)                       # the mode stays fixed
    assert all(math.isfinite(lg["log_volume"]) for lg in res.logs)  # volume > 0 after every vertex
    assert math.isfinite(c.log_volume().item())
    assert [lg["vertex"] for lg in res.logs] == [1, 2]
    assert all(len(lg["history"]) == 1 and lg["lambda"] > 0 for lg in res.logs)
    # the user's module is never written to
    assert all(torch.equal(v, tiny_bn.state_dict()[k]) for k, v in state.items())


def test_tiny_spro_resumes_exactly(tiny_bn, tiny_data, tmp_path):
    mode = flatten(tiny_bn).clone()
    full = grow_complex(tiny_bn, tiny_data, [mode], [(0, 1, 2)], 2, CFG, seed=3, out=tmp_path / "a", quiet=True)

    class Stop(Exception):
        pass

    def interrupt(vertex, epoch):
        if vertex == 2 and epoch == 2:
            raise Stop
        return {}

    with pytest.raises(Stop):
        grow_complex(tiny_bn, tiny_data, [mode], [(0, 1, 2)], 2, CFG, seed=3, out=tmp_path / "b", quiet=True,
                     after_epoch=interrupt)
    assert (tmp_path / "b" / "progress.safetensors").exists()          # vertex 1 finished and saved
    assert (tmp_path / "b" / "vertex_2" / "checkpoint.safetensors").exists()  # vertex 2 mid-way
    resumed = grow_complex(tiny_bn, tiny_data, [mode], [(0, 1, 2)], 2, CFG, seed=3, out=tmp_path / "b",
                           resume=True, quiet=True)
    for i in range(3):
        assert torch.equal(full.complex.control(i), resumed.complex.control(i))
    assert [lg["history"] for lg in full.logs] == [lg["history"] for lg in resumed.logs]


def test_regularisation_scale_and_random_init(tiny_bn):
    before = {k: v.clone() for k, v in tiny_bn.state_dict().items()}
    a, b = random_init_vector(tiny_bn, 1), random_init_vector(tiny_bn, 1)
    assert torch.equal(a, b) and not torch.equal(a, random_init_vector(tiny_bn, 2))
    assert not torch.equal(a, flatten(tiny_bn))
    assert all(torch.equal(v, tiny_bn.state_dict()[k]) for k, v in before.items())
    lam, log_term = regularisation_scale(tiny_bn, [(0, 1, 2)], 3, 1e-2, seed=5)
    rand = Complex([random_init_vector(tiny_bn, 5 * 1009 + j) for j in range(3)], [(0, 1, 2)])
    want = math.log(math.exp(2 * rand.log_volume().item()) + 1e-4)
    assert log_term == pytest.approx(want, rel=1e-9)
    assert lam == pytest.approx(max(1e-2 / want, 1e-8))


def test_save_complex_format(tmp_path):
    c = Complex([torch.zeros(5), torch.ones(5), torch.arange(5.0)], [(0, 1, 2)], trainable=[False, True, True])
    save_complex(tmp_path / "simplex.safetensors", c, [tmp_path / "run"])
    with safe_open(str(tmp_path / "simplex.safetensors"), "pt") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == ["vertex_0", "vertex_1", "vertex_2"]
        assert f.get_tensor("vertex_2").shape == (5,)
    assert json.loads(meta["simplexes"]) == [[0, 1, 2]]
    assert json.loads(meta["fixed"]) == [True, False, False]
    assert json.loads(meta["base_runs"]) == [str((tmp_path / "run").resolve())]


# ------------------------------------------------------------------------------------------ configs
def test_configs_extend_spro_config_without_restating_defaults():
    import dataclasses

    from lowloss.config import fields_of
    from lowloss.methods import complex as CX
    from lowloss.methods import dimension as D
    from lowloss.methods import espro as E
    from lowloss.methods import simplex as S
    from lowloss.methods.spro import COMPLEX_LAMBDA, ConnectingSproConfig, EsproConfig, spro_fields

    base = SproConfig()
    for cls in (S.Config, E.Config, CX.Config, D.Config):
        assert issubclass(cls, SproConfig)
        for f in dataclasses.fields(SproConfig):
            if f.name != "lmbda":
                assert getattr(cls(), f.name) == getattr(base, f.name), (cls, f.name)
    assert issubclass(S.Config, EsproConfig) and issubclass(E.Config, EsproConfig)
    assert issubclass(CX.Config, ConnectingSproConfig) and issubclass(D.Config, ConnectingSproConfig)
    assert S.Config().lmbda == E.Config().lmbda == 1e-6
    assert CX.Config().lmbda == D.Config().lmbda == COMPLEX_LAMBDA == 0.1
    assert spro_fields(S.Config(epochs=7, vertices=4)) == dataclasses.asdict(SproConfig(epochs=7))
    assert spro_fields(S.Config(vertices=4), EsproConfig)["vertices"] == 4
    flags = {o.flag for o in fields_of(CX.Config)}
    assert {"--epochs-per-vertex", "--lmbda", "--samples", "--simplex", "--connectors", "--eval-samples"} <= flags
    assert "--sample-train" not in {o.flag for o in fields_of(S.Config)}


def test_config_checks_and_input_checks():
    from lowloss.methods import complex as CX
    from lowloss.methods import dimension as D
    from lowloss.methods import simplex as S
    from lowloss.utils import LowlossError

    for bad in (S.Config(vertices=1), S.Config(epochs=0), S.Config(samples=0), S.Config(lmbda=-1),
                D.Config(max_connectors=0), CX.Config(connectors=0), CX.Config(simplexes=["0,0"])):
        with pytest.raises(LowlossError):
            bad.check()
    cfg = CX.Config(connectors=2, simplexes=("0,2, 3", [1, 2]))
    cfg.check()
    assert cfg.simplexes == ((0, 2, 3), (1, 2))
    with pytest.raises(LowlossError, match="not a comma-separated list"):
        CX.Config(simplexes=("0,a",)).check()
    with pytest.raises(LowlossError, match="outside 0..3"):
        CX.check_inputs(CX.Config(connectors=2, simplexes=("0,4",)), ["a", "b"])
    with pytest.raises(LowlossError, match="at least two runs"):
        CX.check_inputs(CX.Config(), ["a"])
    with pytest.raises(LowlossError, match="two runs"):
        D.check_inputs(D.Config(), ["a", "b", "c"])
    assert CX.structure_of(CX.Config(connectors=2), 3) == [(0, 3, 4), (1, 3, 4), (2, 3, 4)]


def test_structure_file_round_trip_and_figure(tmp_path):
    import numpy as np

    from lowloss.methods.spro import save_structure
    from lowloss.plots.simplex import plot_complex_structure, read_structure
    from lowloss.subspaces.simplex import pairwise_sq_dists

    g = torch.Generator().manual_seed(0)
    v = [torch.randn(9, generator=g) for _ in range(5)]
    c = Complex(v, [(0, 2, 3, 4), (1, 2, 3, 4), (0, 1)], kinds=["mode", "mode", "connector", "connector", "connector"])
    save_structure(tmp_path / "structure.npz", c)
    s = read_structure(tmp_path)
    assert s["simplexes"] == c.simplexes and s["kinds"] == c.kinds
    assert np.array_equal(s["sq_dists"], pairwise_sq_dists(c.vertices()).numpy())
    assert np.array_equal(s["log_volumes"], c.log_volumes().detach().numpy())
    assert plot_complex_structure(s, tmp_path / "structure.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------ run directories
@pytest.fixture(scope="module")
def tiny_modes(tmp_path_factory):
    return train_tiny_mlps(tmp_path_factory.mktemp("modes"), "16", epochs=1)


TINY = dict(epochs=1, samples=1, batch_size=256, device="cpu")


def test_simplex_run_dir_resume_and_loaders(tiny_modes, tmp_path, monkeypatch):
    from lowloss.methods import simplex as S
    from lowloss.methods.spro import PROGRESS_FILE, load_complex, load_simplex
    from lowloss.rundir import run_method
    from lowloss.utils import LowlossError

    cfg = S.Config(vertices=3, members=2, **TINY)
    full = run_method(S, cfg, [tiny_modes[0]], tmp_path / "full", quiet=True)
    assert full["method"] == "simplex" and full["config"]["vertices"] == 3
    assert len(full["log_volume"]) == 2 and all(math.isfinite(v) for v in full["log_volume"])
    assert set(full["test"]) == {"mode", "sample_mean", "ensemble"}
    assert set(full["test"]["ensemble"]) == {"accuracy", "nll", "ece", "brier"}
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == [
        "config.json", "run.json", "samples.safetensors", "simplex.safetensors", "structure.npz"]

    # interrupted after growing: the directory asks for --resume, and resuming gives the same numbers
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "evaluate_samples", boom)
    with pytest.raises(KeyboardInterrupt):
        run_method(S, cfg, [tiny_modes[0]], tmp_path / "cut", quiet=True)
    monkeypatch.undo()
    assert (tmp_path / "cut" / PROGRESS_FILE).exists() and not (tmp_path / "cut" / "run.json").exists()
    with pytest.raises(LowlossError, match="--resume"):
        run_method(S, cfg, [tiny_modes[0]], tmp_path / "cut", quiet=True)
    resumed = run_method(S, cfg, [tiny_modes[0]], tmp_path / "cut", resume=True, quiet=True)
    assert resumed["log_volume"] == full["log_volume"] and resumed["test"] == full["test"]
    assert not (tmp_path / "cut" / PROGRESS_FILE).exists()

    s = load_simplex(tmp_path / "full")
    assert s["vertices"].shape[0] == 3 and s["simplexes"] == [[0, 1, 2]] and s["kinds"][0] == "mode"
    cplx, run = load_complex(tmp_path / "full", device="cpu")
    assert torch.equal(cplx.control(0), run.vector)
    pred = S.load(tmp_path / "full", device="cpu")
    assert len(pred) == 2  # the run's --members
    probs, y = S.load(tmp_path / "full", device="cpu", members=3).predict_probs(run.data.test)
    assert probs.shape == (len(y), 10)


def test_simplex_face_planes_are_plane_runs(tiny_modes, tmp_path):
    from lowloss.api import run
    from lowloss.rundir import read_result

    res = run("simplex", inputs=[tiny_modes[0]], out=tmp_path / "s", quiet=True, vertices=3, members=1, face_planes=3,
              **TINY)
    face = tmp_path / "s" / "faces" / "face_0_1_2"
    assert [f["face"] for f in res["faces"]] == [[0, 1, 2]] and set(res["faces"][0]["points"]) == {"v0", "v1", "v2"}
    assert read_result(face, "plane")["config"]["face"] == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "s").glob("**/*.png")) == [
        "plane_test_error.png", "plane_train_loss.png", "structure.png"]


def test_espro_pools_the_simplex_runs(tiny_modes, tmp_path):
    from lowloss.methods import espro as E
    from lowloss.methods import simplex as S
    from lowloss.rundir import read_result, run_method

    res = run_method(E, E.Config(vertices=2, members=2, **TINY), tiny_modes, tmp_path / "e", quiet=True)
    assert set(res) >= {"espro", "deep_ensemble", "members_per_simplex", "simplexes"}
    assert [s["dir"] for s in res["simplexes"]] == [str(tmp_path / "e" / "simplex_0"), str(tmp_path / "e" / "simplex_1")]
    sub = read_result(tmp_path / "e" / "simplex_1", "simplex")
    assert sub["config"]["seed"] == 1 and sub["config"]["sample_train"] is False
    # a simplex sub-run is an ordinary simplex run: the same config gives the same numbers
    alone = run_method(S, S.Config(vertices=2, members=2, seed=1, sample_train=False, **TINY), [tiny_modes[1]],
                       tmp_path / "alone", quiet=True)
    assert alone["test"] == sub["test"]
    pred = E.load(tmp_path / "e", device="cpu")
    assert len(pred) == 4 and pred.info == {"simplexes": 2, "members_per_simplex": 2}
    assert "2 modes x 2 vertices" in E.summary(res)


def test_complex_and_dimension_run_dirs(tiny_modes, tmp_path, capsys):
    from lowloss.api import run
    from lowloss.cli import main
    from lowloss.methods import complex as CX
    from lowloss.methods import dimension as D
    from lowloss.rundir import read_result

    main(["complex", *map(str, tiny_modes), "--connectors", "1", "--simplex", "0,2", "--simplex", "1,2",
          "--eval-samples", "2", "--epochs-per-vertex", "1", "--samples", "1", "--batch-size", "256",
          "--device", "cpu", "--out", str(tmp_path / "c")])
    printed = capsys.readouterr().out
    assert printed.startswith(f"{tmp_path / 'c'}: 2 modes, 1 connectors") and "simplex [1, 2]" in printed
    cx = read_result(tmp_path / "c", "complex")
    assert cx["config"]["simplexes"] == [[0, 2], [1, 2]] and cx["config"]["lmbda"] == 0.1
    assert [s["simplex"] for s in cx["simplexes"]] == [[0, 2], [1, 2]]
    assert len(cx["simplex_log_volumes"]) == 2 and len(cx["modes"]) == 2
    assert (tmp_path / "c" / "structure.png").exists()
    cplx, _ = CX.load(tmp_path / "c", device="cpu")
    assert cplx.num_vertices == 3 and cplx.kinds == ["mode", "mode", "connector"]
    d = run("dimension", inputs=tiny_modes, out=tmp_path / "d", quiet=True, max_connectors=2, eval_samples=2,
            collapse=10.0, **TINY)  # any height is below 10: the first connector "collapses"
    assert d["connectors"] == [1] and d["collapsed_at"] == 1 and d["dimension_lower_bound"] == 0
    assert (tmp_path / "d" / "dimension.png").exists() and (tmp_path / "d" / "structure.png").exists()
    assert "dimension >= 0" in D.summary(d)


def test_relative_height_closed_forms():
    from lowloss.methods.dimension import relative_height

    v = torch.eye(4, dtype=torch.float64) * 3.0
    # regular tetrahedron: height a sqrt(4/6), RMS edge a
    assert relative_height(Complex(list(v), [(0, 1, 2, 3)])) == pytest.approx(math.sqrt(2 / 3), rel=1e-9)
    flat = list(v[:3]) + [v[:3].mean(0)]
    assert relative_height(Complex(flat, [(0, 1, 2, 3)])) == 0.0


def test_mds_layout_and_faces():
    import numpy as np

    from lowloss.methods.spro import faces
    from lowloss.plots.simplex import mds_layout
    from lowloss.subspaces.simplex import pairwise_sq_dists

    g = torch.Generator().manual_seed(0)
    pts = torch.randn(3, 40, generator=g, dtype=torch.float64)  # three points span a plane: MDS is exact
    d = pairwise_sq_dists(pts).numpy()
    xy = mds_layout(d)
    d2 = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    assert np.allclose(d2, d, atol=1e-9)
    assert faces([(0, 2, 3), (1, 2, 3)]) == [(0, 2, 3), (1, 2, 3)]
    assert faces([(0, 1, 2, 3)]) == [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)]
