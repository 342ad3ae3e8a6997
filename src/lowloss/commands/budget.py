"""lowloss budget: FGE, SSE, deep ensembles, SWA, SWAG and MultiSWAG at equal training budgets."""

from __future__ import annotations

import click

from ..cli import common_options, data_options
from ..methods.budget import METHODS, BudgetConfig

_D = BudgetConfig()


@click.command()
@click.argument("more_budgets", nargs=-1, type=int, metavar="")
@data_options
@click.option("--model", default=_D.model, show_default=True, help="Architecture (as for lowloss train).")
@click.option("--model-opt", "model_opt", multiple=True, metavar="KEY=VALUE", help="Model option, repeatable.")
@click.option("--budgets", type=int, multiple=True, default=list(_D.budgets), show_default=True,
              help="Budgets to compare, in units of one training run: --budgets 1 2 3.")
@click.option("--seeds", type=int, default=_D.seeds, show_default=True, help="Number of seeds (from --seed on).")
@click.option("--epochs", type=int, default=_D.epochs_per_budget, show_default=True,
              help="Epochs of one budget: one ordinary training run, trained to convergence (a digits convnet's "
                   "test NLL stops improving at 40-80 epochs).")
@click.option("--lr", type=float, default=_D.lr, show_default=True, help="Peak lr of ordinary training runs.")
@click.option("--methods", "methods", default=",".join(METHODS), show_default=True,
              help="Comma-separated subset of the methods.")
@click.option("--members-per-budget", type=int, default=_D.members_per_budget, show_default=True,
              help="Deep-ensemble and MultiSWAG members per budget (each trains epochs/M epochs; 1 = the papers' "
                   "'Ind', a single network at budget 1).")
@click.option("--pretrain-fraction", type=float, default=_D.pretrain_fraction, show_default=True,
              help="Share of one budget spent pretraining before FGE / SWA / SWAG.")
@click.option("--fge-cycle-epochs", type=float, default=_D.fge_cycle_epochs, show_default=True,
              help="FGE cycle length in epochs.")
@click.option("--fge-lr-high", type=float, default=_D.fge_lr_high, show_default=True, help="FGE a1.")
@click.option("--fge-lr-low", type=float, default=_D.fge_lr_low, show_default=True, help="FGE a2.")
@click.option("--sse-cycles", type=int, default=_D.sse_cycles_per_budget, show_default=True,
              help="SSE cosine cycles per budget.")
@click.option("--sse-lr", type=float, default=_D.sse_lr, show_default=True, help="SSE lr at each restart.")
@click.option("--swa-lr", type=float, default=_D.swa_lr, show_default=True, help="Constant lr of SWA / SWAG.")
@click.option("--collect-per-epoch", type=int, default=_D.collect_per_epoch, show_default=True,
              help="SWA / SWAG iterates collected per epoch.")
@click.option("--rank", type=int, default=_D.rank, show_default=True, help="SWAG K (deviations kept).")
@click.option("--scale", type=float, default=_D.scale, show_default=True, help="SWAG sampling scale.")
@click.option("--samples", type=int, default=_D.samples, show_default=True,
              help="SWAG samples (MultiSWAG: in all, split evenly among members).")
@common_options(out="runs/budget")
def command(more_budgets, data, data_dir, data_seed, model, model_opt, budgets, seeds, epochs, lr, methods, members_per_budget,
            pretrain_fraction, fge_cycle_epochs, fge_lr_high, fge_lr_low, sse_cycles, sse_lr, swa_lr,
            collect_per_epoch, rank, scale, samples, out, seed, device, quiet):
    """Compare single / ensemble / sse / fge / swa / swag / multiswag at equal epoch budgets over seeds.

    Writes OUT/budget.json ({method: {budget: {metric: {mean, std}}}}), OUT/budget.md (tables),
    OUT/budget.png (accuracy and NLL vs budget), OUT/budget_details.json (per-seed numbers, accounting,
    config) and every trained artifact with cached predictions under OUT/work (re-running retrains nothing).
    """
    from ..methods.budget import BudgetRunner
    from ..models import parse_options

    cfg = BudgetConfig(data=data, model=model, model_options=parse_options(model_opt), data_seed=data_seed,
                       data_dir=data_dir, budgets=tuple(sorted(set(budgets) | set(more_budgets))), seeds=seeds, first_seed=seed,
                       epochs_per_budget=epochs, lr=lr, members_per_budget=members_per_budget,
                       pretrain_fraction=pretrain_fraction, fge_cycle_epochs=fge_cycle_epochs,
                       fge_lr_high=fge_lr_high, fge_lr_low=fge_lr_low, sse_cycles_per_budget=sse_cycles,
                       sse_lr=sse_lr, swa_lr=swa_lr, collect_per_epoch=collect_per_epoch, rank=rank, scale=scale,
                       samples=samples, methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                       device=device)
    BudgetRunner(cfg, out, quiet=quiet).run()
    if not quiet:
        click.echo((__import__("pathlib").Path(out) / "budget.md").read_text())
