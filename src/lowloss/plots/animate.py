"""The curve-training video: the frames of a `lowloss connect --frames N` run rendered to a GIF and an MP4.

Every frame is drawn with the same axes (fixed by connect over all frames), the same logarithmic colour levels
(the animate run's ``colour_range``) and the same pixel size, so that only the curve and its valley move.
Left: the train loss on the plane of the curve at that step, the curve (white, dashed), its control polygon
(dotted) and the endpoints A, B and the bend; right: the train loss along the curve at that step (log scale,
fixed limits), against the endpoints' level.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..rundir import load_npz
from ..utils import LowlossError, atomic_path
from . import plt

FIGSIZE, DPI = (9.6, 4.8), 100  # 960 x 480 pixels: both multiples of 16, as H.264 wants
GIF_SCALE = 0.75  # the GIF (embedded in the report) at 720 x 360
LEVELS = 24


def _image(fig) -> np.ndarray:
    """The figure's pixels [H, W, 3] uint8 (Agg canvas; the user's pyplot backend is never touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def render_frame(z: dict, levels: np.ndarray, loss_limits: tuple[float, float], total_epochs: float) -> np.ndarray:
    """One frame (the arrays of a frame_<i>.npz) as RGB pixels."""
    from matplotlib.colors import LogNorm

    x, y = np.asarray(z["x"]), np.asarray(z["y"])
    loss = np.asarray(z["train_loss"], dtype=np.float64)
    zc = np.clip(np.where(np.isfinite(loss), loss, levels[-1]), levels[0], levels[-1])
    fig = plt.figure(figsize=FIGSIZE, dpi=DPI)
    ax = fig.add_axes((0.06, 0.11, 0.50, 0.78))
    cax = fig.add_axes((0.57, 0.11, 0.015, 0.78))
    ax2 = fig.add_axes((0.69, 0.11, 0.29, 0.78))
    cs = ax.contourf(x, y, zc, levels=levels, norm=LogNorm(levels[0], levels[-1]), cmap="viridis")
    ax.contour(x, y, zc, levels=levels[::3], colors="k", linewidths=0.4, alpha=0.35)
    cb = fig.colorbar(cs, cax=cax)
    ticks = np.geomspace(levels[0], levels[-1], 5)
    cb.set_ticks(ticks)
    cb.set_ticklabels([f"{t:.2g}" for t in ticks])
    cb.ax.tick_params(labelsize=7)
    cc, cp = np.asarray(z["curve_coords"]), np.asarray(z["control_coords"])
    ax.plot(cp[:, 0], cp[:, 1], color="w", lw=0.8, ls=":", alpha=0.8)
    ax.plot(cc[:, 0], cc[:, 1], color="w", lw=2.0, ls="--")
    mid = len(cp) // 2
    ax.scatter(cp[[0, -1], 0], cp[[0, -1], 1], s=60, c="w", edgecolors="k", linewidths=1.0, zorder=5)
    ax.scatter([cp[mid, 0]], [cp[mid, 1]], s=40, c="tab:orange", edgecolors="k", linewidths=0.8, zorder=5)
    for (px, py), lab in zip(cp[[0, -1, mid]], ("A", "B", "bend")):
        ax.annotate(lab, (px, py), xytext=(5, 5), textcoords="offset points", color="w", fontsize=9,
                    fontweight="bold")
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    ax.set_aspect("auto")
    ax.tick_params(labelsize=7)
    ax.set_xlabel("along B - A", fontsize=8)
    ax.set_ylabel("towards the bend (orthogonal)", fontsize=8)
    epoch = float(z["epoch"])
    ax.set_title(f"train loss on the plane of the curve  |  epoch {epoch:.2f} / {total_epochs:g}, "
                 f"step {int(z['step'])}", fontsize=9)
    t, along = np.asarray(z["curve_loss_t"]), np.asarray(z["curve_train_loss"])
    ax2.plot(t, along, color="tab:blue", lw=2)
    ax2.axhline(min(along[0], along[-1]), color="0.5", ls=":", lw=1)
    ax2.set_yscale("log")
    ax2.set_ylim(*loss_limits)
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("t", fontsize=8)
    ax2.set_title(f"train loss along the curve (max {along.max():.3g})", fontsize=9)
    ax2.grid(alpha=0.3)
    ax2.tick_params(labelsize=7)
    return _image(fig)


def render_frames(result: dict) -> list[np.ndarray]:
    """Every frame of an animate run (run.json's contents in `result`) as RGB pixels, in order."""
    frames = [load_npz(f) for f in result["files"]]
    lo, hi = (float(v) for v in result["colour_range"])
    levels = np.geomspace(lo, hi, LEVELS)
    along = np.concatenate([np.asarray(z["curve_train_loss"], dtype=np.float64) for z in frames])
    along = along[np.isfinite(along) & (along > 0)]
    limits = (float(along.min()) / 1.5, float(along.max()) * 1.5) if along.size else (lo, hi)
    total = float(result["epochs"][-1]) if result.get("epochs") else 0.0
    return [render_frame(z, levels, limits, total) for z in frames]


def save_png(pixels: np.ndarray, path: Path) -> Path:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return path


def write_gif(frames: list[np.ndarray], path: Path, fps: int, scale: float = GIF_SCALE) -> Path:
    """An endlessly looping GIF (pillow, a core dependency), each frame scaled by `scale`."""
    from PIL import Image

    h, w = frames[0].shape[:2]
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    images = [Image.fromarray(f).resize(size, Image.Resampling.LANCZOS).convert("P", palette=Image.Palette.ADAPTIVE)
              for f in frames]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def write_mp4(frames: list[np.ndarray], path: Path, fps: int) -> Path:
    """An H.264 MP4 through imageio's ffmpeg plugin (the `video` extra); a one-line error without it."""
    try:
        import imageio.v2 as iio
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise LowlossError("writing MP4 needs imageio with its ffmpeg plugin: pip install 'lowloss[video]' "
                           "(or --formats gif)") from None
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")  # ffmpeg picks the container from the suffix
    try:
        with iio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                            pixelformat="yuv420p", macro_block_size=16) as writer:
            for f in frames:
                writer.append_data(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def draw_animate(result: dict, out: str | Path) -> list[Path]:
    """frame_first.png, frame_last.png and the videos of `result["outputs"]` (training.gif, training.mp4)."""
    out = Path(out)
    frames = render_frames(result)
    fps = int(result.get("fps", 10))
    paths = [save_png(frames[0], out / "frame_first.png"), save_png(frames[-1], out / "frame_last.png")]
    for name in result.get("outputs", ["training.gif"]):
        writer = write_mp4 if name.endswith(".mp4") else write_gif
        paths.append(writer(frames, out / name, fps))
    return paths


__all__ = ["draw_animate", "render_frame", "render_frames", "write_gif", "write_mp4"]
