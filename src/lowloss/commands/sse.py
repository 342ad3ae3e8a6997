"""lowloss sse: Snapshot Ensembles (cosine annealing with restarts, from scratch)."""

from __future__ import annotations

import click

from ..cli import common_options, data_options
from ..methods.fge import SSEConfig
from ..runs import TrainConfig

_D, _T = SSEConfig(), TrainConfig()


@click.command()
@data_options
@click.option("--model", default=_T.model, show_default=True, help="Architecture (as for lowloss train).")
@click.option("--model-opt", "model_opt", multiple=True, metavar="KEY=VALUE", help="Model option, repeatable.")
@click.option("--cycles", type=int, default=_D.cycles, show_default=True, help="Number of cycles = snapshots.")
@click.option("--cycle-epochs", type=float, default=_D.cycle_epochs, show_default=True,
              help="Epochs per cosine cycle (20-40 in the paper on CIFAR).")
@click.option("--lr", type=float, default=_D.lr, show_default=True, help="a0: learning rate at each restart.")
@click.option("--momentum", type=float, default=_T.momentum, show_default=True)
@click.option("--wd", type=float, default=_T.wd, show_default=True, help="Weight decay.")
@click.option("--batch-size", type=int, default=_T.batch_size, show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last checkpoint.")
@common_options(out="runs/sse")
def command(data, data_dir, data_seed, model, model_opt, cycles, cycle_epochs, lr, momentum, wd, batch_size,
            resume, out, seed, device, quiet):
    """SSE: train from scratch with cosine restarts; a snapshot at the end of every cycle.

    Writes OUT/members.safetensors and OUT/sse.json (config, member and ensemble test metrics).
    """
    from ..methods.fge import run_sse
    from ..models import parse_options
    from .fge import _report

    tc = TrainConfig(data=data, model=model, model_options=parse_options(model_opt), momentum=momentum, wd=wd,
                     batch_size=batch_size, seed=seed, data_seed=data_seed, data_dir=data_dir, device=device)
    info = run_sse(tc, SSEConfig(cycles=cycles, cycle_epochs=cycle_epochs, lr=lr), out, resume=resume, quiet=quiet)
    if not quiet:
        _report(out, info)
