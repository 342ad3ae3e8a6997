import json

import pytest
import torch
from safetensors.torch import load_file

from lowloss.data import load_dataset
from lowloss.engine.schedules import lr_schedule
from lowloss.methods.train import Config as TrainConfig
from lowloss.methods.train import train as train_mode
from lowloss.models import build_model
from lowloss.rundir import load_run
from lowloss.utils import LowlossError


def test_schedules():
    f = lr_schedule("curve", 0.1, 10)
    assert f(0) == 0.1 and f(5) == 0.1
    assert f(7) == pytest.approx(0.1 * (1 - 0.5 * 0.99))
    assert f(9) == pytest.approx(0.001) and f(10) == pytest.approx(0.001)
    c = lr_schedule("cosine", 0.1, 10)
    assert c(0) == pytest.approx(0.1) and c(5) == pytest.approx(0.05) and c(10) == pytest.approx(0.0)
    s = lr_schedule("step", 1.0, 8)
    assert (s(3.9), s(4), s(6)) == (1.0, pytest.approx(0.1), pytest.approx(0.01))
    with pytest.raises(LowlossError, match="valid"):
        lr_schedule("nope", 0.1, 1)


def _cfg(**kw):
    base = dict(data="digits", model="convnet", epochs=3, seed=0, model_options={"width": 0.25})
    base.update(kw)
    return TrainConfig(**base)


def test_resume_gives_same_weights_as_uninterrupted(tmp_path):
    full = train_mode(_cfg(), tmp_path / "full", quiet=True)
    part = train_mode(_cfg(), tmp_path / "part", quiet=True, stop_after_epochs=1)
    assert part == {"stopped_after_epoch": 1}
    assert (tmp_path / "part" / "checkpoint.safetensors").exists()
    with pytest.raises(LowlossError, match="--resume"):
        train_mode(_cfg(), tmp_path / "part", quiet=True)
    resumed = train_mode(_cfg(), tmp_path / "part", quiet=True, resume=True)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["train_loss"] for h in full["history"]] == [h["train_loss"] for h in resumed["history"]]
    assert not (tmp_path / "part" / "checkpoint.safetensors").exists()


def test_run_json_layout_and_reload(tmp_path):
    info = train_mode(_cfg(epochs=2), tmp_path / "r", quiet=True)
    on_disk = json.loads((tmp_path / "r" / "run.json").read_text())
    assert set(on_disk) >= {"config", "seed", "versions", "history", "final"}
    assert set(on_disk["final"]["train"]) == {"loss", "accuracy"}
    assert set(on_disk["final"]["test"]) >= {"loss", "accuracy", "nll", "ece", "brier"}
    assert 0 <= on_disk["final"]["test"]["accuracy"] <= 1
    assert len(on_disk["history"]) == 2 and "test_accuracy" in on_disk["history"][0]
    run = load_run(tmp_path / "r")
    from lowloss.engine.evaluate import evaluate_vector

    res = evaluate_vector(run.model, run.vector, run.data)
    assert res["test"]["accuracy"] == pytest.approx(info["final"]["test"]["accuracy"])


def test_checkpoint_that_does_not_fit_names_tensors(tmp_path):
    train_mode(_cfg(epochs=1), tmp_path / "r", quiet=True)
    cfg = json.loads((tmp_path / "r" / "run.json").read_text())
    cfg["model"]["model_options"] = {"width": 0.5}
    (tmp_path / "r" / "run.json").write_text(json.dumps(cfg))
    with pytest.raises(LowlossError, match=r"shape differs: features\.0\.weight"):
        load_run(tmp_path / "r")


def test_nan_loss_stops_with_hint_and_keeps_checkpoint(tmp_path):
    with pytest.raises(LowlossError, match="lower the learning rate"):
        train_mode(_cfg(lr=1e6, epochs=3, model_options={"bn": False, "width": 0.25}), tmp_path / "nan", quiet=True)
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_unknown_names_list_valid_ones():
    with pytest.raises(LowlossError, match="valid names: .*convnet"):
        build_model("resnet9000", (1, 8, 8), 10)
    with pytest.raises(LowlossError, match="valid names: digits"):
        load_dataset("imagenet")
    with pytest.raises(LowlossError, match="--data-dir"):
        load_dataset("cifar10")
    with pytest.raises(LowlossError, match="does not exist"):
        load_dataset("cifar10", data_dir="/nonexistent/folder")


def test_seeds_give_different_modes(tmp_path):
    a = train_mode(_cfg(epochs=1, seed=0), tmp_path / "a", quiet=True)
    b = train_mode(_cfg(epochs=1, seed=1), tmp_path / "b", quiet=True)
    assert a["history"][0]["train_loss"] != b["history"][0]["train_loss"]
    c = train_mode(_cfg(epochs=1, seed=0), tmp_path / "c", quiet=True)
    assert a["history"] == c["history"]
