"""lowloss vardrop: variational dropout / variance networks and their three prediction schemes."""

from __future__ import annotations

import click

from ..cli import common_options, data_options
from ..methods.vardrop import VardropConfig
from ..variational import POSTERIORS

_D = VardropConfig()


@click.command()
@data_options
@click.option("--model", default=_D.model, show_default=True,
              help="mlp, convnet, lenet5, lowloss.methods.vardrop:lenet5_ref (the 20-50-500 LeNet-5 with BatchNorm of "
                   "the variance-network experiments), lowloss.methods.vardrop:lenet5_bn (6-16-120-84 with BatchNorm) "
                   "or package.module:factory; its nn.Linear/nn.Conv2d layers become variational.")
@click.option("--model-opt", "model_opt", multiple=True, metavar="KEY=VALUE",
              help="Model option, repeatable: width=2, bn=false, widths=128,128.")
@click.option("--posterior", default="all", show_default=True,
              help=f"{', '.join(POSTERIORS)}, a comma-separated list, or all. weight/neuron/layer: "
                   "N(mu, alpha mu^2) with alpha per weight/output unit/layer; additive: N(mu, sigma^2); "
                   "variance: N(0, sigma^2) in the layers of --variance-layers; dropout: Gaussian dropout with fixed "
                   "alpha = p/(1-p) in the same layers.")
@click.option("--epochs", type=int, default=_D.epochs, show_default=True, help="Epochs per posterior.")
@click.option("--lr", type=float, default=_D.lr, show_default=True,
              help="Adam learning rate, decayed linearly to lr * --final-lr-ratio.")
@click.option("--final-lr-ratio", type=float, default=_D.final_lr_ratio, show_default=True,
              help="Learning rate at the end of training relative to --lr.")
@click.option("--batch-size", type=int, default=_D.batch_size, show_default=True, help="Minibatch size.")
@click.option("--anneal-epochs", type=float, default=None,
              help="KL warm-up: the KL weight rises linearly from 0 to 1 over this many epochs (0: off). Without "
                   "it the KL drives the additive posterior's means to zero on small datasets  [default: half of "
                   "--epochs].")
@click.option("--log-alpha-init", type=float, default=_D.log_alpha_init, show_default=True,
              help="Initial log alpha (weight/neuron/layer; additive starts at sigma^2 = alpha mu^2).")
@click.option("--log-sigma2-init", type=float, default=None,
              help="Initial log sigma^2 of variance layers, one value for all weights  [default: sigma = |w| of "
                   "the source (or freshly initialised) weights, which breaks the symmetry between units].")
@click.option("--noise-lr", type=float, default=_D.noise_lr, show_default=True,
              help="Adam learning rate of the noise parameters, log alpha and log sigma^2 (decayed like --lr): "
                   "on their log scale they need far larger steps than the weights to move in a few thousand "
                   "steps.")
@click.option("--dropout-p", type=float, default=_D.dropout_p, show_default=True,
              help="Dropout baseline rate: alpha = p / (1 - p) (0.5 -> alpha = 1).")
@click.option("--variance-last", type=click.Choice(["weight", "plain", "variance", "additive"]),
              default=_D.variance_last, show_default=True,
              help="Output layer of the variance network: a weight-wise VD layer, a plain point-estimate layer, "
                   "or a variance layer too (zero-mean logits: one-sample accuracy <= 50%).")
@click.option("--variance-layers", default=_D.variance_layers, show_default=True,
              help="Hidden layers of the variance network that are variance layers, and of the dropout baseline "
                   "that are dropout layers: last (the layer that feeds the output layer), first, alternate "
                   "(dense/conv layers 1, 3, 5, ...), all, or 1-based positions / layer names such as 1,3; the "
                   "others stay point estimates. One variance layer already routes all information through "
                   "variances; stacks train slowly (mnist5k lenet5_ref, 30 epochs: all three 84.5% ensemble "
                   "accuracy, last 98.1%).")
@click.option("--init", "init_run", type=click.Path(exists=True, file_okay=False), default=None,
              help="Take mu (and biases) from a finished `lowloss train` run of the same model and data "
                   "[default: fresh initialisation].")
@click.option("--samples", type=int, default=_D.samples, show_default=True,
              help="K, the number of posterior samples of the ensemble scheme.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted posterior from its checkpoint (finished posteriors are always skipped).")
@common_options(out="runs/vardrop")
def command(data, data_dir, data_seed, model, model_opt, posterior, epochs, lr, final_lr_ratio, batch_size,
            anneal_epochs, log_alpha_init, log_sigma2_init, noise_lr, dropout_p, variance_last, variance_layers,
            init_run, samples, resume, out, seed, device, quiet):
    """Train variational-dropout / variance networks (ELBO, Adam) into OUT/<posterior>/ and compare the
    stochastic, deterministic and ensemble prediction schemes (OUT/schemes.json, OUT/schemes.md,
    OUT/log_alpha.png)."""
    from ..methods.vardrop import train_all
    from ..models import parse_options
    from ..utils import LowlossError

    posts = POSTERIORS if posterior == "all" else tuple(p.strip() for p in posterior.split(",") if p.strip())
    bad = [p for p in posts if p not in POSTERIORS]
    if bad or not posts:
        raise LowlossError(f"unknown posterior {', '.join(bad) or repr(posterior)}; valid: {', '.join(POSTERIORS)} "
                           "or all")
    cfg = VardropConfig(data=data, model=model, model_options=parse_options(model_opt), epochs=epochs, lr=lr,
                        final_lr_ratio=final_lr_ratio, batch_size=batch_size, anneal_epochs=anneal_epochs,
                        log_alpha_init=log_alpha_init, log_sigma2_init=log_sigma2_init, noise_lr=noise_lr,
                        dropout_p=dropout_p, variance_last=variance_last, variance_layers=variance_layers,
                        init=init_run, samples=samples, seed=seed, data_seed=data_seed, data_dir=data_dir,
                        device=device)
    from pathlib import Path

    schemes = train_all(cfg, out, posts, resume=resume, quiet=quiet)
    if not quiet:
        click.echo((Path(out) / "schemes.md").read_text())
        click.echo(f"written: {out}/schemes.json, {out}/schemes.md, {out}/log_alpha.png "
                   f"({len(schemes)} posteriors)")
