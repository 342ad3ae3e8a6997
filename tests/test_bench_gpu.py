"""bench/gpu.py's code path on the CPU (--tiny): the engine's numbers match the plain loop's, rates and
extrapolations are consistent."""

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


@pytest.fixture
def gpu_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a few tiny passes: one thread is fastest on a busy machine
    yield mod
    torch.set_num_threads(n)


def test_tiny_gpu_bench_runs_on_cpu(gpu_bench, capsys):
    rows = gpu_bench.main(["--tiny", "--device", "cpu", "--fraction", "0.04"])
    out = capsys.readouterr().out
    assert [r["model"] for r in rows] == ["preresnet20", "vgg16bn"]
    for r in rows:
        assert r["train"] == 32 and r["test"] == 16 and r["points"] == 2
        assert r["vmap_engine"]["method"] == "vmap"
        assert r["max_abs_diff"] < 1e-4  # the engine with the plain loop's BN batches: the plain loop's numbers
        for k in ("plain", "vmap", "loop"):
            assert r[f"{k}_pts_s"] > 0 and r[f"{k}_mib"] > 0
            e = r["extrapolated"][k]
            assert e["full_hours"] == pytest.approx(1e6 / r[f"{k}_pts_s"] / 3600)
            assert e["adaptive_hours"] == pytest.approx(0.04 * e["full_hours"])
        assert f"{r['model']:<12}" in out
    assert "1000x1000 plane" in out


def test_synthetic_cifar_is_cifar_shaped(gpu_bench):
    d = gpu_bench.synthetic_cifar(50, 20, "cpu")
    assert d.train.x.shape == (50, 3, 32, 32) and d.test.x.shape == (20, 3, 32, 32)
    assert d.num_classes == 10 and int(d.train.y.max()) < 10
    again = gpu_bench.synthetic_cifar(50, 20, "cpu")
    assert torch.equal(d.train.x, again.train.x) and torch.equal(d.test.y, again.test.y)
