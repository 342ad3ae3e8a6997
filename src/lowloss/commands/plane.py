"""lowloss plane: the loss surface on the plane through three runs, a curve, or a face of a simplex."""

from __future__ import annotations

import click

from ..cli import common_options
from ..methods.plane import METRICS, PlaneConfig

_D = PlaneConfig()


@click.command()
@click.argument("runs", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--curve", "curve_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A curve run directory (curve.safetensors): the plane through its endpoints and middle "
                   "control point, with the curve projected on top.")
@click.option("--simplex", "simplex_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A simplex run directory (simplex.safetensors): the plane through the vertices of --face.")
@click.option("--face", nargs=3, type=int, default=None, metavar="I J K",
              help="Three vertex indices of the --simplex that span the plane.")
@click.option("--grid", type=int, default=_D.grid, show_default=True, help="Grid points per axis (G x G in all).")
@click.option("--margin", type=float, default=_D.margin, show_default=True,
              help="Margin around the projected points' bounding box, as a fraction of its extent per side.")
@click.option("--min-aspect", type=float, default=_D.min_aspect, show_default=True,
              help="Widen the shorter side of the grid to at least this fraction of the longer (0: the plain "
                   "bounding box plus margins).")
@click.option("--metrics", default=",".join(METRICS), show_default=True,
              help="Comma-separated subset of train_loss, train_error, test_loss, test_error (only the splits "
                   "needed are evaluated).")
@click.option("--bn-subset", type=int, default=None,
              help="Recompute BN statistics per grid point on this many fixed training examples (default: all).")
@click.option("--origin", type=click.Choice(["a", "centroid"]), default=_D.origin, show_default=True,
              help="Plane origin: the first point (Garipov et al.) or the centroid of the three (Benton et al.).")
@click.option("--curve-points", type=int, default=_D.curve_points, show_default=True,
              help="Points of the projected curve (equally spaced in t).")
@click.option("--memory-budget", type=float, default=None,
              help="MiB of activations the evaluation engine may hold at once (default: 1024 on CPU, half the "
                   "free GPU memory).")
@click.option("--chunk-points", type=int, default=None,
              help="Grid points per saved chunk (default: adapted to about 20 s of work per chunk).")
@click.option("--fresh", is_flag=True, help="Discard saved chunks or a finished plane in --out and start over.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted plane (also done automatically when --out holds one).")
@click.option("--no-plots", is_flag=True, help="Write plane.npz and plane.json only.")
@common_options(out="runs/plane")
def command(runs, curve_dir, simplex_dir, face, grid, margin, min_aspect, metrics, bn_subset, origin, curve_points,
            memory_budget, chunk_points, fresh, resume, no_plots, out, seed, device, quiet):
    """Metrics on a G x G grid in the plane through RUN_A RUN_B RUN_C (or --curve DIR, or --simplex DIR
    --face I J K), with contour plots. Writes plane.npz, plane.json and plane_<metric>.png; resumable."""
    from ..methods import plane as PL
    from ..utils import LowlossError, seed_everything

    seed_everything(seed)
    chosen = sum([bool(runs), curve_dir is not None, simplex_dir is not None])
    if chosen != 1:
        raise LowlossError("give exactly one of: three run directories, --curve DIR, or --simplex DIR --face I J K")
    if simplex_dir is not None and not face:
        raise LowlossError("--simplex needs --face I J K (three vertex indices)")
    if face and simplex_dir is None:
        raise LowlossError("--face only applies with --simplex DIR")
    metric_list = tuple(m.strip() for m in metrics.split(",") if m.strip())
    cfg = PlaneConfig(grid=grid, margin=margin, min_aspect=min_aspect, metrics=metric_list, bn_subset=bn_subset, origin=origin,
                      memory_budget=int(memory_budget * 2**20) if memory_budget else None,
                      chunk_points=chunk_points, curve_points=curve_points)
    PL._splits_for(metric_list)  # validate before loading anything
    if runs:
        inputs = PL.inputs_from_runs(list(runs), device=device)
    elif curve_dir is not None:
        inputs = PL.inputs_from_curve(curve_dir, device=device, num_points=curve_points)
    else:
        inputs = PL.inputs_from_simplex(simplex_dir, face, device=device)
    info = PL.compute_plane(inputs, cfg, out, quiet=quiet, fresh=fresh)
    if not no_plots:
        from ..plots.plane import plot_planes

        paths = plot_planes(out, list(metric_list))
        if not quiet:
            click.echo("figures: " + ", ".join(str(p) for p in paths))
    if not quiet:
        t = info["timing"]
        pps = t.get("points_per_second")
        click.echo(f"{out}: {grid}x{grid} plane in {t['seconds']:.1f}s"
                   + (f" ({pps:.1f} points/s)" if pps else ""))
        for lab, p in info["points"].items():
            vals = " ".join(f"{m} {p[m]:.4f}" for m in metric_list)
            click.echo(f"  {lab} at ({p['coords'][0]:.3f}, {p['coords'][1]:.3f}): {vals}")
