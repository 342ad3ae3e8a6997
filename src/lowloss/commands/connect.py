"""lowloss connect: train a low-loss curve between two runs and compare it with the line segment."""

from __future__ import annotations

import click

from ..cli import common_options
from ..engine.schedules import SCHEDULES
from ..methods.connect import ConnectConfig

_D = ConnectConfig()


@click.command()
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@click.option("--curve", type=click.Choice(["bezier", "polychain"]), default=_D.curve, show_default=True,
              help="Curve family: Bezier (Bernstein weights) or polygonal chain through the bends.")
@click.option("--bends", type=int, default=_D.bends, show_default=True,
              help="Number of trainable bends (control points between the endpoints).")
@click.option("--epochs", type=int, default=_D.epochs, show_default=True, help="Epochs of curve training.")
@click.option("--lr", type=float, default=_D.lr, show_default=True, help="Peak learning rate.")
@click.option("--momentum", type=float, default=_D.momentum, show_default=True, help="SGD momentum.")
@click.option("--wd", type=float, default=_D.wd, show_default=True,
              help="Weight decay, applied to the point phi(t) (not to each control point).")
@click.option("--batch-size", type=int, default=_D.batch_size, show_default=True, help="Minibatch size.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=_D.schedule, show_default=True,
              help="Learning-rate schedule; 'curve' is Garipov et al.'s (constant, linear decay to 1% by 90%).")
@click.option("--t-per-batch", type=int, default=_D.t_per_batch, show_default=True,
              help="Values of t per minibatch (the batch is split among them; lower-variance gradient).")
@click.option("--points", type=int, default=_D.points, show_default=True,
              help="Equally spaced values of t at which the curve and the line are evaluated.")
@click.option("--free-endpoints", is_flag=True, help="Train the endpoints too (fixed to the two runs by default).")
@click.option("--bn-subset", type=int, default=None,
              help="Recompute BN statistics per point on this many training examples (default: all).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out (training or evaluation).")
@common_options(out="runs/curve")
def command(run_a, run_b, curve, bends, epochs, lr, momentum, wd, batch_size, schedule, t_per_batch, points,
            free_endpoints, bn_subset, resume, out, seed, device, quiet):
    """Connect RUN_A and RUN_B (same architecture and data) with a trained curve.

    Writes OUT/curve.safetensors (control points), OUT/curve.json (train/test loss and error along the
    curve and the line, endpoint-ensemble error and NLL, barriers), OUT/curve.png and OUT/ensemble.png.
    """
    from ..methods.connect import connect_runs

    res = connect_runs(run_a, run_b, out=out, device=device, resume=resume, quiet=quiet, curve=curve, bends=bends,
                       epochs=epochs, lr=lr, momentum=momentum, wd=wd, batch_size=batch_size, schedule=schedule,
                       t_per_batch=t_per_batch, points=points, free_endpoints=free_endpoints, seed=seed,
                       bn_subset=bn_subset)
    if not quiet:
        s = res.summary
        pair = res.evaluation["endpoint_ensemble"]
        for name in ("curve", "line"):
            click.echo(f"{name:>5}: barrier {s[name]['barrier']:.4f}  max train loss {s[name]['max_train_loss']:.4f}  "
                       f"max test error {100 * s[name]['max_test_error']:.2f}%")
        click.echo(f"ensemble {{w_A, w_B}}: test error {100 * pair['test_error']:.2f}%  NLL {pair['test_nll']:.4f}")
        click.echo(f"wrote {out}/curve.json, curve.safetensors, curve.png, ensemble.png")
