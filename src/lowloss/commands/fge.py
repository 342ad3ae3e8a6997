"""lowloss fge: Fast Geometric Ensembling from a trained run."""

from __future__ import annotations

import click

from ..cli import common_options
from ..methods.fge import FGEConfig

_D = FGEConfig()


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--cycles", type=int, default=_D.cycles, show_default=True, help="Number of cycles = snapshots.")
@click.option("--cycle-epochs", type=float, default=_D.cycle_epochs, show_default=True,
              help="Cycle length in epochs (2-4 in the paper; fractions allowed, >= 2 steps).")
@click.option("--lr-high", type=float, default=_D.lr_high, show_default=True,
              help="a1: learning rate at the start and end of each cycle.")
@click.option("--lr-low", type=float, default=_D.lr_low, show_default=True,
              help="a2: learning rate at mid-cycle, where the snapshot is taken.")
@click.option("--momentum", type=float, default=None, help="SGD momentum [default: the base run's].")
@click.option("--wd", type=float, default=None, help="Weight decay [default: the base run's].")
@click.option("--batch-size", type=int, default=None, help="Batch size [default: the base run's].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last checkpoint.")
@common_options(out="runs/fge")
def command(run, cycles, cycle_epochs, lr_high, lr_low, momentum, wd, batch_size, resume, out, seed, device, quiet):
    """FGE: triangular cyclic lr from RUN's weights, a snapshot at every cycle's lowest lr.

    Writes OUT/members.safetensors (one vector + BN statistics per snapshot) and OUT/fge.json (config,
    snapshot steps and lrs, member and ensemble test metrics). Evaluate it later with `lowloss ensemble OUT`.
    """
    from ..methods.fge import run_fge

    cfg = FGEConfig(cycles=cycles, cycle_epochs=cycle_epochs, lr_high=lr_high, lr_low=lr_low, momentum=momentum,
                    wd=wd, batch_size=batch_size, seed=seed, device=device)
    info = run_fge(run, cfg, out, resume=resume, quiet=quiet)
    if not quiet:
        _report(out, info)


def _report(out, info):
    e = info["metrics"]["ensemble"]
    mem = info["metrics"]["members"]
    best = min(m["nll"] for m in mem)
    click.echo(f"{out}: {e['members']} snapshots | ensemble test acc {e['accuracy']:.4f} nll {e['nll']:.4f} "
               f"ece {e['ece']:.4f} brier {e['brier']:.4f} | best member nll {best:.4f}")
