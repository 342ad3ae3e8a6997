"""lowloss swag: SWAG from a trained run, MultiSWAG from several, curve SWAG from a trained curve."""

from __future__ import annotations

import click

from ..cli import common_options
from ..methods.swag import SWAGConfig
from .swa import trajectory_options

_D = SWAGConfig()


@click.command()
@click.argument("runs", nargs=-1, type=click.Path(exists=True, file_okay=False))
@trajectory_options
@click.option("--rank", type=int, default=_D.rank, show_default=True,
              help="K: number of last deviations kept (0 = SWAG-Diag moments only).")
@click.option("--scale", type=float, default=_D.scale, show_default=True,
              help="Sampling scale (samples use sqrt(scale)); stored as the default for later evaluation.")
@click.option("--samples", type=int, default=30, show_default=True,
              help="Samples in the Bayesian model average reported at the end (curve SWAG: sampled curves).")
@click.option("--curve", "curve_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A trained curve directory (lowloss connect): SWAG over its bend parameters instead of RUNS.")
@click.option("--points", type=int, default=21, show_default=True,
              help="Curve SWAG: points t in [0,1] at which each sampled curve's train loss is evaluated.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last checkpoint.")
@common_options(out="runs/swag")
def command(runs, epochs, lr, start, every_epochs, schedule, lr_high, cycle_epochs, momentum, wd, batch_size, rank,
            scale, samples, curve_dir, points, resume, out, seed, device, quiet):
    """SWAG: Gaussian posterior from the SGD iterates after RUN (MultiSWAG when several RUNS are given).

    Writes OUT/swag.safetensors (mean, sq_mean, last K deviations) and OUT/swag.json (SWA and SWAG-BMA test
    metrics); with several runs OUT/swag_000, ... and OUT/multiswag.json. Evaluate later with
    `lowloss ensemble OUT --samples 30`. With --curve, collects moments of a curve's bends while training it
    further at a constant lr and reports the max train loss along each sampled curve.
    """
    from ..utils import LowlossError

    cfg = SWAGConfig(epochs=epochs, lr=lr, start=start, every_epochs=every_epochs, schedule=schedule,
                     lr_high=lr_high, cycle_epochs=cycle_epochs, momentum=momentum, wd=wd, batch_size=batch_size,
                     seed=seed, device=device, rank=rank, scale=scale)
    if curve_dir is not None:
        if runs:
            raise LowlossError("give either RUNS or --curve, not both")
        from ..methods.swag import run_curve_swag

        info = run_curve_swag(curve_dir, cfg, out, samples=samples, points=points, resume=resume, quiet=quiet)
        if not quiet:
            m = info["metrics"]
            click.echo(f"{out}: {info['n_models']} bend iterates | max train loss along the trained curve "
                       f"{m['trained_curve_max_train_loss']:.4f}, along {len(m['sampled_max_train_loss'])} sampled "
                       f"curves mean {m['sampled_max_train_loss_mean']:.4f} (max {m['sampled_max_train_loss_max']:.4f})"
                       f" | endpoints {m['endpoint_train_loss_max']:.4f}")
        return
    if not runs:
        raise LowlossError("give a trained run directory (lowloss train), several for MultiSWAG, or --curve DIR")
    if len(runs) == 1:
        from ..methods.swag import run_swag

        info = run_swag(runs[0], cfg, out, resume=resume, quiet=quiet, samples=samples)
        if not quiet:
            m = info["metrics"]
            a, b = m["swa"], m["swag"]["bma"]
            click.echo(f"{out}: {info['n_models']} iterates, K={info['collected_deviations']} | SWA test acc "
                       f"{a['accuracy']:.4f} nll {a['nll']:.4f} | SWAG ({b['members']} samples, scale {scale}) acc "
                       f"{b['accuracy']:.4f} nll {b['nll']:.4f} ece {b['ece']:.4f}")
        return
    from ..methods.swag import run_multiswag

    info = run_multiswag(list(runs), cfg, out, resume=resume, quiet=quiet, samples=samples)
    if not quiet:
        b = info["metrics"]["multiswag"]["bma"]
        click.echo(f"{out}: MultiSWAG of {len(runs)} runs ({b['members']} samples) test acc {b['accuracy']:.4f} "
                   f"nll {b['nll']:.4f} ece {b['ece']:.4f} brier {b['brier']:.4f}")
