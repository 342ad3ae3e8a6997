"""lowloss complex: a simplicial complex of low loss connecting several modes (SPRO)."""

from __future__ import annotations

import click

from ..cli import common_options
from .simplex import make_config, spro_options


def _parse_simplex(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of vertex indices (e.g. 0,2,3)") from None


@click.command(name="complex")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--connectors", "-m", type=int, default=3, show_default=True,
              help="Connecting points trained one at a time (vertices len(RUNS) .. len(RUNS)+M-1).")
@click.option("--simplex", "simplexes", multiple=True, metavar="I,J,K",
              help="A simplex of the complex as vertex indices (modes first, then connectors); repeatable. "
                   "Default: each mode with all connectors, as in the paper's figures.")
@click.option("--eval-samples", type=int, default=10, show_default=True,
              help="Sampled models per simplex for the reported loss and error.")
@spro_options(lmbda=0.1)
@common_options(out="runs/complex")
def command(runs, connectors, simplexes, eval_samples, epochs, lr, lmbda, samples, wd, batch_size, resume, out,
            seed, device, quiet):
    """Connect the modes RUNS (fixed) through trained connectors; report loss and error per simplex.

    Writes OUT/simplex.safetensors (modes and connectors), OUT/complex.json and OUT/structure.png.
    """
    from ..methods.spro import mode_complex

    cfg = make_config(epochs, lr, lmbda, samples, wd, batch_size)
    structure = [_parse_simplex(s) for s in simplexes] or None
    res = mode_complex(list(runs), out, connectors=connectors, cfg=cfg, simplexes=structure,
                       eval_samples=eval_samples, seed=seed, device=device, resume=resume, quiet=quiet)
    if not quiet:
        for s, lv in zip(res["simplexes"], res["simplex_log_volumes"]):
            m = s["mean"]
            click.echo(f"  simplex {s['simplex']}: log-volume {lv:.2f}  train loss {m['train_loss']:.4f} "
                       f"err {100 * m['train_error']:.2f}%  test loss {m['test_loss']:.4f} "
                       f"err {100 * m['test_error']:.2f}%")
