"""lowloss swa: Stochastic Weight Averaging from a trained run."""

from __future__ import annotations

import click

from ..cli import common_options
from ..methods.swa import SWAConfig

_D = SWAConfig()


def trajectory_options(f):
    """Options shared by swa and swag: the SGD trajectory and when iterates are collected."""
    f = click.option("--batch-size", type=int, default=None, help="Batch size [default: the base run's].")(f)
    f = click.option("--wd", type=float, default=None, help="Weight decay [default: the base run's].")(f)
    f = click.option("--momentum", type=float, default=None, help="SGD momentum [default: the base run's].")(f)
    f = click.option("--cycle-epochs", type=float, default=_D.cycle_epochs, show_default=True,
                     help="cyclic: cycle length in epochs; an iterate is collected at the end of each cycle.")(f)
    f = click.option("--lr-high", type=float, default=None,
                     help="cyclic: learning rate at each cycle's start [default: 5 x --lr].")(f)
    f = click.option("--schedule", type=click.Choice(["constant", "cyclic"]), default=_D.schedule,
                     show_default=True, help="constant lr, or Izmailov et al.'s sawtooth from --lr-high to --lr.")(f)
    f = click.option("--every", "every_epochs", type=float, default=_D.every_epochs, show_default=True,
                     help="constant: collect an iterate every this many epochs (0.25 = four times per epoch).")(f)
    f = click.option("--start", type=float, default=_D.start, show_default=True,
                     help="Epoch (of this run) at which collecting starts.")(f)
    f = click.option("--lr", type=float, default=_D.lr, show_default=True,
                     help="The constant (SWA) learning rate; cyclic: the rate at each cycle's end.")(f)
    f = click.option("--epochs", type=int, default=_D.epochs, show_default=True, help="Epochs of SGD from RUN.")(f)
    return f


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@trajectory_options
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last checkpoint.")
@common_options(out="runs/swa")
def command(run, epochs, lr, start, every_epochs, schedule, lr_high, cycle_epochs, momentum, wd, batch_size, resume,
            out, seed, device, quiet):
    """SWA: continue SGD from RUN at a constant (or cyclic) lr and average the iterates.

    BN statistics are recomputed for the average. OUT is an ordinary run directory (model.safetensors,
    run.json with an extra "swa" section), usable wherever a run is.
    """
    from ..methods.swa import run_swa

    cfg = SWAConfig(epochs=epochs, lr=lr, start=start, every_epochs=every_epochs, schedule=schedule, lr_high=lr_high,
                    cycle_epochs=cycle_epochs, momentum=momentum, wd=wd, batch_size=batch_size, seed=seed,
                    device=device)
    info = run_swa(run, cfg, out, resume=resume, quiet=quiet)
    if not quiet:
        f, s = info["final"]["test"], info["swa"]["last_sgd_iterate"]["test"]
        click.echo(f"{out}: {info['swa']['n_averaged']} iterates averaged | SWA test acc {f['accuracy']:.4f} "
                   f"nll {f['nll']:.4f} ece {f['ece']:.4f} | last SGD iterate acc {s['accuracy']:.4f} "
                   f"nll {s['nll']:.4f}")
