"""lowloss regression: predictive bands of ESPRO, deep ensembles and SWAG on the 1-D toy (Figure 10)."""

from __future__ import annotations

import click

from ..cli import common_options
from ..methods.regression import METHODS, RegressionConfig

_D = RegressionConfig()


@click.command()
@click.option("--method", "methods", multiple=True, type=click.Choice(METHODS), default=METHODS, show_default=True,
              help="Method(s) to fit and draw, repeatable.")
@click.option("--modes", type=int, default=_D.modes, show_default=True, help="Deep-ensemble size.")
@click.option("--widths", default=_D.widths, show_default=True, help="Hidden widths of the ReLU MLP.")
@click.option("--epochs", type=int, default=_D.epochs, show_default=True, help="Full-batch Adam steps per mode.")
@click.option("--lr", type=float, default=_D.lr, show_default=True, help="Adam learning rate of the modes.")
@click.option("--wd", type=float, default=_D.wd, show_default=True, help="Weight decay (modes, SWAG, simplexes).")
@click.option("--espro-modes", type=int, default=_D.espro_modes, show_default=True,
              help="Simplexes in the ESPRO ensemble, one grown from each of the first modes.")
@click.option("--vertices", type=int, default=_D.vertices, show_default=True,
              help="Vertices per ESPRO simplex, the mode included.")
@click.option("--vertex-epochs", type=int, default=_D.vertex_epochs, show_default=True,
              help="SPRO epochs per added vertex.")
@click.option("--vertex-lr", type=float, default=_D.vertex_lr, show_default=True, help="SPRO learning rate (SGD).")
@click.option("--lmbda", type=float, default=_D.lmbda, show_default=True, help="SPRO volume-regulariser LAMBDA.")
@click.option("--swag-epochs", type=int, default=_D.swag_epochs, show_default=True, help="SWAG epochs.")
@click.option("--swag-lr", type=float, default=_D.swag_lr, show_default=True, help="SWAG constant learning rate.")
@click.option("--samples", type=int, default=_D.samples, show_default=True,
              help="Members drawn from SWAG and from the ESPRO simplexes (in all).")
@click.option("--data-seed", type=int, default=0, show_default=True, help="Seed of the toy data and true function.")
@common_options(out="runs/regression")
def command(methods, modes, widths, epochs, lr, wd, espro_modes, vertices, vertex_epochs, vertex_lr, lmbda,
            swag_epochs, swag_lr, samples, data_seed, out, seed, device, quiet):
    """Fit the 1-D toy (three clusters, noise 0.1, Gaussian likelihood with fixed sigma 0.1) with each method
    and draw the predictive mean and +-2 std bands (std includes the noise) over the data and the true
    function. Writes OUT/regression.json (test log-likelihood, RMSE) and OUT/regression.png; the modes, the
    SWAG run and the simplexes are kept under OUT and reused when the command is run again. CPU only."""
    from ..methods.regression import run_regression

    cfg = RegressionConfig(methods=tuple(m for m in METHODS if m in methods), widths=widths, modes=modes,
                           epochs=epochs, lr=lr, wd=wd, espro_modes=espro_modes, vertices=vertices,
                           vertex_epochs=vertex_epochs, vertex_lr=vertex_lr, lmbda=lmbda, swag_epochs=swag_epochs,
                           swag_lr=swag_lr, samples=samples, data_seed=data_seed, seed=seed)
    res = run_regression(cfg, out, quiet=quiet)
    if not quiet:
        for name, r in res["results"].items():
            click.echo(f"{name:9s} test log-lik {r['test_ll']:.4f}  mixture {r['test_ll_mixture']:.4f}  "
                       f"rmse {r['rmse']:.4f}")
