"""lowloss train: one ordinary SGD training run (a "mode")."""

from __future__ import annotations

import click

from ..cli import common_options, data_options
from ..runs import TrainConfig, train_mode
from ..train import SCHEDULES

_D = TrainConfig()


@click.command()
@data_options
@click.option("--model", default=_D.model, show_default=True,
              help="mlp, convnet, lenet5, vgg16, vgg16bn, preresnet20/110/164, wrn28x10, or package.module:factory.")
@click.option("--model-opt", "model_opt", multiple=True, metavar="KEY=VALUE",
              help="Model option, repeatable: width=2, bn=false, widths=128,128, depth=110.")
@click.option("--epochs", type=int, default=_D.epochs, show_default=True)
@click.option("--lr", type=float, default=_D.lr, show_default=True, help="Peak learning rate.")
@click.option("--momentum", type=float, default=_D.momentum, show_default=True)
@click.option("--wd", type=float, default=_D.wd, show_default=True, help="Weight decay.")
@click.option("--batch-size", type=int, default=_D.batch_size, show_default=True)
@click.option("--schedule", type=click.Choice(SCHEDULES), default=_D.schedule, show_default=True,
              help="Learning-rate schedule; 'curve' is Garipov et al.'s (constant, linear decay to 1% by 90%).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last checkpoint.")
@common_options(out="runs/mode")
def command(data, data_dir, data_seed, model, model_opt, epochs, lr, momentum, wd, batch_size, schedule, resume,
            out, seed, device, quiet):
    """Train one network with SGD and write a run directory (model.safetensors, run.json)."""
    from ..models import parse_options

    cfg = TrainConfig(data=data, model=model, model_options=parse_options(model_opt), epochs=epochs, lr=lr,
                      momentum=momentum, wd=wd, batch_size=batch_size, schedule=schedule, seed=seed,
                      data_seed=data_seed, data_dir=data_dir, device=device)
    info = train_mode(cfg, out, resume=resume, quiet=quiet)
    if not quiet and info.get("final"):
        f = info["final"]
        click.echo(f"{out}: train loss {f['train']['loss']:.4f} acc {f['train']['accuracy']:.4f} | "
                   f"test loss {f['test']['loss']:.4f} acc {f['test']['accuracy']:.4f} "
                   f"ece {f['test']['ece']:.4f} ({info.get('train_seconds', 0):.1f}s)")
