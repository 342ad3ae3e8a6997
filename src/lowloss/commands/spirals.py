"""lowloss spirals: decision functions of models sampled from one simplex on two spirals (Figure 7)."""

from __future__ import annotations

import click

from ..cli import common_options
from ..methods.spirals import SpiralsConfig

_D = SpiralsConfig()


@click.command()
@click.option("--widths", default=_D.widths, show_default=True, help="Hidden widths of the ReLU MLP.")
@click.option("--epochs", type=int, default=_D.epochs, show_default=True, help="Full-batch Adam steps of the mode.")
@click.option("--lr", type=float, default=_D.lr, show_default=True, help="Adam learning rate of the mode.")
@click.option("--wd", type=float, default=_D.wd, show_default=True, help="Weight decay (mode and simplex).")
@click.option("--vertices", type=int, default=_D.vertices, show_default=True,
              help="Vertices of the simplex, the mode included (4 = a tetrahedron).")
@click.option("--vertex-epochs", type=int, default=_D.vertex_epochs, show_default=True,
              help="SPRO epochs per added vertex.")
@click.option("--vertex-lr", type=float, default=_D.vertex_lr, show_default=True, help="SPRO learning rate (SGD).")
@click.option("--lmbda", type=float, default=_D.lmbda, show_default=True, help="SPRO volume-regulariser LAMBDA.")
@click.option("--batch-size", type=int, default=_D.batch_size, show_default=True, help="SPRO minibatch size.")
@click.option("--shown", type=int, default=_D.shown, show_default=True, help="Sampled models drawn.")
@click.option("--members", type=int, default=_D.members, show_default=True, help="Samples in the ensemble.")
@click.option("--grid", type=int, default=_D.grid, show_default=True, help="Resolution of each picture.")
@click.option("--data-seed", type=int, default=0, show_default=True, help="Seed of the spirals data.")
@common_options(out="runs/spirals")
def command(widths, epochs, lr, wd, vertices, vertex_epochs, vertex_lr, lmbda, batch_size, shown, members, grid,
            data_seed, out, seed, device, quiet):
    """Train a small MLP on two spirals, grow a simplex from it (SPRO) and draw the decision functions of
    models sampled from the simplex plus their ensemble's. Writes OUT/spirals.png, OUT/spirals.json
    (accuracies of the samples, the vertices and the ensemble) and the mode and simplex (reused on rerun). CPU."""
    from ..methods.spirals import run_spirals

    cfg = SpiralsConfig(widths=widths, epochs=epochs, lr=lr, wd=wd, vertices=vertices, vertex_epochs=vertex_epochs,
                        vertex_lr=vertex_lr, lmbda=lmbda, batch_size=batch_size, shown=shown, members=members,
                        grid=grid, data_seed=data_seed, seed=seed)
    run_spirals(cfg, out, quiet=quiet)
