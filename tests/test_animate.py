"""The curve-training video: frames recorded by connect --frames (common axes, exact grid values, resumable),
lowloss animate (GIF, MP4, first/last frame), the report's GIF, and the one-line errors."""

import numpy as np
import pytest
import torch

import lowloss
from lowloss.config import replace
from lowloss.engine.evaluate import evaluate_vectors
from lowloss.methods import animate as A
from lowloss.methods.connect import Config as ConnectConfig
from lowloss.methods.connect import load_curve
from lowloss.methods.regression import ModeConfig, train_mode
from lowloss.report import write_report
from lowloss.rundir import load_npz
from lowloss.utils import LowlossError, torch_threads

CURVE = dict(epochs=3, lr=0.05, wd=1e-4, batch_size=40, points=5, marks=2, frame_grid=5, frames=3, device="cpu")


@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    root = tmp_path_factory.mktemp("animodes")
    with torch_threads(1):
        return [str(train_mode(ModeConfig(data="regression1d", widths="8", epochs=60, lr=0.03, wd=1e-4, seed=s,
                                          data_seed=0, device="cpu"), root / f"mode_{s}", quiet=True))
                for s in (0, 1)]


@pytest.fixture(scope="module")
def framed(modes, tmp_path_factory):
    out = tmp_path_factory.mktemp("anicurve") / "curve"
    with torch_threads(1):
        info = lowloss.run("connect", inputs=modes, out=out, quiet=True, **CURVE)
    return out, info


def test_frame_steps_are_spread_over_training():
    assert A.frame_steps(9, 3) == [3, 6, 9]
    assert A.frame_steps(10, 4) == [2, 5, 8, 10]
    assert A.frame_steps(5, 5) == [1, 2, 3, 4, 5]
    with pytest.raises(LowlossError, match="exceeds the 4 optimiser steps"):
        A.frame_steps(4, 5)


def test_frames_share_axes_and_hold_the_engines_values(framed):
    out, info = framed
    fr = info["frames"]
    assert fr["count"] == 3 and fr["steps"] == [3, 6, 9]  # 120 examples / 40 = 3 steps per epoch, 3 epochs
    frames = [load_npz(out / "frames" / f) for f in fr["files"]]
    for z in frames:
        assert np.array_equal(z["x"], frames[0]["x"]) and np.array_equal(z["y"], frames[0]["y"])
        assert z["train_loss"].shape == (5, 5) and np.isfinite(z["train_loss"]).all()
    # every frame's curve and control points lie inside the common axes
    for z in frames:
        for pts in (z["curve_coords"], z["control_coords"]):
            assert pts[:, 0].min() >= z["x"][0] and pts[:, 0].max() <= z["x"][-1]
            assert pts[:, 1].min() >= z["y"][0] and pts[:, 1].max() <= z["y"][-1]
    # the last frame is the plane of the final curve: a grid value is the engine's value there
    curve, run = load_curve(out, device="cpu")
    plane = A.curve_plane(curve.controls().detach())
    last = frames[-1]
    w = plane.points(torch.tensor([[last["x"][1], last["y"][3]]], dtype=torch.float64))
    ref = evaluate_vectors(run.model, w, run.data, splits=("train",))["train_loss"][0]
    assert last["train_loss"][3, 1] == pytest.approx(float(ref), rel=1e-6)
    assert last["curve_train_loss"][0] == pytest.approx(info["curve"]["train_loss"][0], rel=1e-6)
    assert not list((out / "frames").glob("snapshot_*")) and not list((out / "frames").glob("chunks_*"))
    assert fr["seconds_per_frame"] > 0


def test_interrupted_frames_resume_where_they_stopped(modes, framed, tmp_path, monkeypatch):
    out = tmp_path / "curve"
    real, calls = A.plane_grid, []

    def dies_on_second(*a, **k):
        calls.append(k["desc"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(A, "plane_grid", dies_on_second)
    with torch_threads(1), pytest.raises(KeyboardInterrupt):
        lowloss.run("connect", inputs=modes, out=out, quiet=True, **CURVE)
    assert (out / "frames" / "frame_0000.npz").exists() and not (out / "frames" / "frame_0001.npz").exists()
    calls.clear()
    monkeypatch.setattr(A, "plane_grid", lambda *a, **k: (calls.append(k["desc"]), real(*a, **k))[1])
    with torch_threads(1):
        info = lowloss.run("connect", inputs=modes, out=out, quiet=True, resume=True, **CURVE)
    assert calls == ["frame 2/3", "frame 3/3"]  # frame 1 was kept
    ref_out, ref = framed
    for f in ref["frames"]["files"]:  # same seeds: the same frames as the uninterrupted run
        assert np.array_equal(load_npz(out / "frames" / f)["train_loss"], load_npz(ref_out / "frames" / f)["train_loss"])
    assert info["curve"]["train_loss"] == ref["curve"]["train_loss"]


def test_animate_writes_gif_mp4_and_frames(framed, tmp_path):
    from PIL import Image

    out, _ = framed
    info = lowloss.run("animate", inputs=[str(out)], out=tmp_path / "video", quiet=True, fps=4)
    assert info["frames"] == 3 and info["outputs"] == ["training.gif", "training.mp4"]
    lo, hi = info["colour_range"]
    assert 0 < lo < hi <= lo * A.MAX_RATIO
    with Image.open(tmp_path / "video" / "training.gif") as gif:
        assert gif.n_frames == 3
    assert (tmp_path / "video" / "training.mp4").stat().st_size > 1000
    with Image.open(tmp_path / "video" / "frame_first.png") as first, \
            Image.open(tmp_path / "video" / "frame_last.png") as last:
        assert first.size == last.size == (960, 480)
    report = write_report(tmp_path / "r.html", title="t", subtitle="s", base=tmp_path,
                          claims=[{"id": "c", "statement": "s", "figures": [str(tmp_path / "video" / "training.gif")]}])
    assert "data:image/gif;base64," in report.read_text()


def test_bad_video_inputs_are_one_line_errors(framed, modes, tmp_path, monkeypatch):
    out, _ = framed
    for bad, match in (({"frames": 0}, "--frames must be >= 1"), ({"frames": -2}, "--frames must be >= 1"),
                       ({"frame_grid": 1}, "--frame-grid must be >= 2"),
                       ({"frames": 2, "method": "neb"}, "--method curve")):
        with pytest.raises(LowlossError, match=match):
            replace(ConnectConfig(), **bad).check()
    with pytest.raises(LowlossError, match="exceeds the 3 optimiser steps"):
        lowloss.run("connect", inputs=modes, out=tmp_path / "toomany", quiet=True, **{**CURVE, "epochs": 1, "frames": 4})
    assert not (tmp_path / "toomany").exists()
    plain = tmp_path / "plain"
    with torch_threads(1):
        lowloss.run("connect", inputs=modes, out=plain, quiet=True, **{**CURVE, "frames": None, "epochs": 1})
    with pytest.raises(LowlossError, match="has no frames: record them with lowloss connect") as e:
        lowloss.run("animate", inputs=[str(plain)], out=tmp_path / "v", quiet=True)
    assert "\n" not in str(e.value) and not (tmp_path / "v").exists()
    with pytest.raises(LowlossError, match="not a finished"):
        lowloss.run("animate", inputs=[str(tmp_path / "nothing")], out=tmp_path / "v", quiet=True)
    monkeypatch.setattr(A, "video_support", lambda: False)
    with pytest.raises(LowlossError, match=r"pip install 'lowloss\[video\]'"):
        A.Config().check()
    A.Config(formats=("gif",)).check()  # the GIF needs only pillow


def test_mp4_without_imageio_is_a_one_line_error(tmp_path, monkeypatch):
    import sys

    from lowloss.plots.animate import write_gif, write_mp4

    monkeypatch.setitem(sys.modules, "imageio", None)
    frames = [np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)]
    with pytest.raises(LowlossError, match=r"pip install 'lowloss\[video\]'"):
        write_mp4(frames, tmp_path / "a.mp4", 2)
    assert write_gif(frames, tmp_path / "a.gif", 2).exists()
