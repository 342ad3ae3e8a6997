"""The curve-training video of a `lowloss connect ... --frames N` run (RUN_DIR): the plane of the curve at N
times during training, as an MP4 and a GIF.

Each frame is the train loss on the plane through the two endpoints and the curve's middle control point
at that moment of training (Garipov et al.'s plane of the curve), with the curve and its control points
drawn on it. Every frame shares one set of axes (the bounding box of every frame's curve and control
points, fixed by `connect` before the first frame is evaluated) and one logarithmic colour scale (from the
lowest loss of any frame up to at most 10^4 times it), so what moves in the video is the curve and its
valley, not the axes or the colours.

Writes OUT/run.json (the connect run, the frame count, grid, steps, the colour range and the cost of the
frames), OUT/training.gif and OUT/training.mp4 (--formats; MP4 needs `pip install 'lowloss[video]'`),
OUT/frame_first.png and OUT/frame_last.png.

The frames themselves are computed by `lowloss connect --frames N --frame-grid G` (this module holds that
code too): the curve's control points are saved at N training steps spread evenly over training
(frames/snapshot_<i>.safetensors, the last at the final step); after training the common axes are fixed
from all N snapshots and each frame's G x G grid is evaluated with the engine (frames/frame_<i>.npz,
written atomically as each finishes, its grid in resumable chunks meanwhile), so an interrupted connect
continues from the frames and chunks already saved.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import option, replace, require, split_list
from ..engine.evaluate import evaluate_vectors
from ..rundir import RunDir, load_npz, load_tensors, read_result, run_method, save_npz, save_tensors
from ..subspaces.curves import curve_coefficients
from ..subspaces.plane import Plane, grid_axes
from ..utils import LowlossError, echo, torch_threads
from .plane_grid import GridStore, PlaneTask

INPUTS = {"metavar": "RUN_DIR", "nargs": 1}
FRAME_DIR = "frames"
SNAPSHOT = "snapshot_{:04d}.safetensors"
FRAME = "frame_{:04d}.npz"
FRAME_METRIC = "train_loss"
FRAME_MARGIN = 0.2  # of the union bounding box per side, as `lowloss plane`'s default --margin
FRAME_MIN_ASPECT = 0.5  # as `lowloss plane`'s default --min-aspect
CURVE_POINTS = 61  # points of each frame's projected curve
LOSS_POINTS = 21  # points at which each frame's curve is evaluated (its train loss along t)
MAX_RATIO = 1e4  # the colour scale spans at most this ratio above the lowest loss of any frame
FORMATS = ("gif", "mp4")
GIF_FILE, MP4_FILE = "training.gif", "training.mp4"


# ------------------------------------------------------------------------------------------ recording (connect)
def frame_steps(total_steps: int, frames: int) -> list[int]:
    """The training steps (counted from 1) after which the N frames are taken: evenly spread, the last at the
    final step; a one-line error when there are fewer steps than frames."""
    if frames > total_steps:
        raise LowlossError(f"--frames {frames} exceeds the {total_steps} optimiser steps of this training: use at "
                           "most that many frames, or more --epochs")
    return [round((i + 1) * total_steps / frames) for i in range(frames)]


class FrameRecorder:
    """The after-step hook that saves the curve's control points at the frame steps (frames/snapshot_<i>);
    a snapshot already on disk (a resumed run replays its steps exactly) is kept."""

    def __init__(self, curve, directory: Path, steps: list[int], steps_per_epoch: int):
        self.curve, self.directory = curve, Path(directory)
        self.index = {s: i for i, s in enumerate(steps)}
        self.steps_per_epoch = steps_per_epoch
        self.directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: int, epoch_float: float) -> None:
        i = self.index.get(step)
        if i is None:
            return
        path = self.directory / SNAPSHOT.format(i)
        if not path.exists():
            save_tensors(path, {"controls": self.curve.controls().detach().float()},
                         {"step": step, "epoch": round(epoch_float, 6)})


def curve_plane(controls: torch.Tensor) -> Plane:
    """The plane of a curve: through its endpoints and its middle control point (origin at the first)."""
    n = controls.shape[0]
    return Plane.through(controls[0], controls[-1], controls[n // 2])


def curve_points(kind: str, controls: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t [num], the curve's points at t [num, P])."""
    t = torch.linspace(0, 1, num, dtype=torch.float64)
    return t, curve_coefficients(kind, t, controls.shape[0]).to(controls) @ controls


def plane_grid(model, data, plane: Plane, xs, ys, directory: Path, *, metrics=(FRAME_METRIC,),
               bn_subset: int | None = None, quiet: bool = False, desc: str = "plane") -> tuple[dict, dict, float]:
    """The metrics of `plane` on the grid xs x ys ({metric: [G_y, G_x]}, the engine's record, seconds), in
    resumable chunks under `directory` (its saved chunks are reused)."""
    splits = tuple(s for s in ("train", "test") if any(m.startswith(s + "_") for m in metrics))
    store = GridStore(directory, len(xs) * len(ys), metrics, quiet=quiet, desc=desc)
    task = PlaneTask(model, data, plane, np.asarray(xs), np.asarray(ys), tuple(metrics), splits, bn_subset)
    store.compute(None, task)
    return store.arrays((len(ys), len(xs))), store.engine, store.seconds_before + store.seconds


def _snapshots(directory: Path, count: int, device) -> list[tuple[torch.Tensor, dict]]:
    out = []
    for i in range(count):
        f = directory / SNAPSHOT.format(i)
        if not f.exists():
            raise LowlossError(f"{f} is missing although training finished: rerun the connect with --fresh to "
                               "record the frames again")
        tensors, meta = load_tensors(f, device)
        out.append((tensors["controls"], meta))
    return out


def record_frames(model, data, kind: str, run_dir: RunDir, *, frames: int, grid: int,
                  bn_subset: int | None = None, quiet: bool = False, threads: int | None = None) -> dict:
    """Evaluate the planes of the saved snapshots on common axes (frames/frame_<i>.npz, each written when it
    is finished and kept on a resumed run); returns the ``frames`` record of run.json. `threads`: intra-op
    threads meanwhile (1 for tiny networks; None: as they are)."""
    with torch_threads(threads) if threads else contextlib.nullcontext():
        return _record_frames(model, data, kind, run_dir, frames, grid, bn_subset, quiet)


def _record_frames(model, data, kind, run_dir, frames, grid, bn_subset, quiet) -> dict:
    directory = run_dir.file(FRAME_DIR)
    device = next(model.parameters()).device
    snaps = _snapshots(directory, frames, device)
    planes, layouts = [], []
    for controls, _meta in snaps:
        plane = curve_plane(controls)
        t, pts = curve_points(kind, controls, CURVE_POINTS)
        layouts.append({"curve": plane.project(pts).cpu().numpy(), "controls": plane.project(controls).cpu().numpy(),
                        "t": t.numpy(), "distance": float(plane.distance(pts).max())})
        planes.append(plane)
    every = np.concatenate([np.concatenate([lay["curve"], lay["controls"]]) for lay in layouts])
    xs, ys = grid_axes(every, grid, FRAME_MARGIN, FRAME_MIN_ASPECT)
    seconds, files, loss_max = [], [], []
    t_loss = torch.linspace(0, 1, LOSS_POINTS, dtype=torch.float64)
    for i, ((controls, meta), plane, lay) in enumerate(zip(snaps, planes, layouts)):
        f = directory / FRAME.format(i)
        files.append(f.name)
        done = _read_frame(f, xs, ys)
        if done is not None:
            seconds.append(float(done["seconds"]))
            loss_max.append(float(np.max(done["curve_train_loss"])))
            continue
        chunks = directory / f"chunks_{i:04d}"
        arrays, _engine, grid_seconds = plane_grid(model, data, plane, xs, ys, chunks, bn_subset=bn_subset,
                                                   quiet=quiet, desc=f"frame {i + 1}/{frames}")
        t0 = time.perf_counter()
        coeff = curve_coefficients(kind, t_loss, controls.shape[0]).to(controls)
        along = evaluate_vectors(model, coeff @ controls, data, splits=("train",), bn_subset=bn_subset)
        secs = grid_seconds + time.perf_counter() - t0  # the grid's chunks (also those of an earlier session)
        save_npz(f, {"x": xs, "y": ys, FRAME_METRIC: arrays[FRAME_METRIC], "curve_coords": lay["curve"],
                     "curve_t": lay["t"], "control_coords": lay["controls"],
                     "curve_distance": np.array(lay["distance"]), "curve_loss_t": t_loss.numpy(),
                     "curve_train_loss": along["train_loss"].numpy(), "step": np.array(int(meta["step"])),
                     "epoch": np.array(float(meta["epoch"])), "index": np.array(i), "seconds": np.array(secs)})
        shutil.rmtree(chunks, ignore_errors=True)
        seconds.append(secs)
        loss_max.append(float(along["train_loss"].max()))
    echo(f"{frames} frames of {grid}x{grid}: {sum(seconds):.1f}s ({sum(seconds) / frames:.2f}s per frame)", quiet)
    return {"count": frames, "grid": grid, "metric": FRAME_METRIC, "dir": FRAME_DIR, "files": files,
            "steps": [int(m["step"]) for _, m in snaps], "epochs": [float(m["epoch"]) for _, m in snaps],
            "axes": {"x": [float(xs[0]), float(xs[-1])], "y": [float(ys[0]), float(ys[-1])]},
            "curve_max_train_loss": loss_max, "seconds": sum(seconds), "seconds_per_frame": sum(seconds) / frames,
            "points_per_second": grid * grid * frames / sum(seconds) if sum(seconds) > 0 else None}


def _read_frame(path: Path, xs, ys) -> dict | None:
    """A finished frame on the same axes, or None (missing, damaged or on other axes: recomputed)."""
    if not path.exists():
        return None
    try:
        z = load_npz(path)
        if not (np.array_equal(z["x"], xs) and np.array_equal(z["y"], ys)) or FRAME_METRIC not in z:
            return None
        return z
    except (LowlossError, KeyError, ValueError):
        return None


def snapshot_files(frames: int | None) -> tuple[str, ...]:
    """The snapshot files a finished connect removes (relative to its directory)."""
    return tuple(f"{FRAME_DIR}/{SNAPSHOT.format(i)}" for i in range(frames or 0))


# ------------------------------------------------------------------------------------------ the command
def video_support() -> bool:
    """Whether MP4 can be written: imageio with its ffmpeg plugin (the `video` extra)."""
    return all(importlib.util.find_spec(m) is not None for m in ("imageio", "imageio_ffmpeg"))


@dataclass
class Config:
    """How the frames of a connect run become a video."""

    fps: int = option(10, "Frames per second of the MP4 and the GIF.")
    formats: tuple[str, ...] = option(FORMATS, "Comma-separated video formats: gif (pillow), mp4 (needs the "
                                               "`video` extra: imageio and imageio-ffmpeg).", parse=split_list)

    def check(self) -> None:
        self.formats = split_list(self.formats)
        bad = [f for f in self.formats if f not in FORMATS]
        require(bool(self.formats) and not bad,
                f"--formats {','.join(bad) or '(none)'}: choose from {', '.join(FORMATS)}")
        require(self.fps >= 1, f"--fps must be >= 1 (got {self.fps})")
        require("mp4" not in self.formats or video_support(),
                "MP4 needs imageio with its ffmpeg plugin: pip install 'lowloss[video]' (or --formats gif)")


def _frames_record(src: Path) -> dict:
    info = read_result(src, "connect")
    fr = info.get("frames")
    if not fr:
        raise LowlossError(f"{src} has no frames: record them with lowloss connect RUN_A RUN_B --frames N "
                           "(e.g. --frames 60 --frame-grid 101) into a new --out")
    missing = [n for n in fr["files"] if not (src / fr["dir"] / n).exists()]
    if missing:
        raise LowlossError(f"{src / fr['dir']} lacks {missing[0]} ({len(missing)} of {fr['count']} frames "
                           "missing): rerun that connect with --fresh")
    return fr


def check_inputs(config: Config, inputs) -> None:
    """One finished connect run that recorded frames."""
    runs = list(inputs or ())
    require(len(runs) == 1, f"animate takes one connect run directory (got {len(runs)})")
    _frames_record(Path(runs[0]))


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """Check the frames, fix the colour range over all of them, record what the figures need."""
    config.check()
    src = Path(inputs[0]).resolve()
    fr = _frames_record(src)
    files = [src / fr["dir"] / n for n in fr["files"]]
    lo, hi = np.inf, 0.0
    for f in files:
        z = np.asarray(load_npz(f)[fr["metric"]], dtype=np.float64)
        pos = z[np.isfinite(z) & (z > 0)]
        if pos.size:
            lo, hi = min(lo, float(pos.min())), max(hi, float(pos.max()))
    if not np.isfinite(lo):
        raise LowlossError(f"the frames of {src} hold no positive finite {fr['metric']}: nothing to draw")
    hi = min(max(hi, lo * 10), lo * MAX_RATIO)
    echo(f"{len(files)} frames of {fr['grid']}x{fr['grid']} from {src}", quiet)
    return run_dir.finish({"source": str(src), "frames": len(files), "files": [str(f) for f in files],
                           "grid": fr["grid"], "metric": fr["metric"], "steps": fr["steps"], "epochs": fr["epochs"],
                           "axes": fr["axes"], "colour_range": [lo, hi], "fps": config.fps,
                           "formats": list(config.formats),
                           "outputs": [{"gif": GIF_FILE, "mp4": MP4_FILE}[f] for f in config.formats],
                           "cost": {k: fr.get(k) for k in ("seconds", "seconds_per_frame", "points_per_second")}})


def summary(result: dict) -> str:
    c = result.get("cost") or {}
    spf = c.get("seconds_per_frame")
    return (f"{result['frames']} frames of {result['grid']}x{result['grid']}"
            + (f" ({spf:.2f}s per frame in connect)" if spf else "") + f": {', '.join(result['outputs'])}")


def load(path, device=None) -> dict:
    """A finished animate run (run.json's contents: the frames and the video files)."""
    return read_result(path, "animate")


def animate(run: str | Path, config: Config | None = None, out: str | Path = "runs/animate", *,
            quiet: bool = False, **overrides) -> dict:
    """Python API: ``animate("runs/curve", out="runs/video", fps=12)`` (the figures: ``lowloss.run``)."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), [str(run)], out, quiet=quiet)


__all__ = ["Config", "FRAME_DIR", "FrameRecorder", "animate", "check_inputs", "curve_plane", "curve_points", "fit",
           "frame_steps", "load", "plane_grid", "record_frames", "snapshot_files", "summary", "video_support"]
