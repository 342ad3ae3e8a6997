"""lowloss simplex: grow an ESPRO simplex from one trained mode (Benton et al. 2021)."""

from __future__ import annotations

import click

from ..cli import common_options

_DEFAULTS = dict(epochs=3, lr=0.02, lmbda=1e-6, samples=5, wd=5e-4, batch_size=64)


def spro_options(f=None, *, lmbda: float | None = None):
    """Options shared by simplex, espro, complex and dimension: how each connecting vertex is trained.

    `lmbda` overrides the default LAMBDA (complexes use the reference complex script's 0.1)."""
    if f is None:
        return lambda g: spro_options(g, lmbda=lmbda)
    lmbda = _DEFAULTS["lmbda"] if lmbda is None else lmbda
    f = click.option("--resume", is_flag=True,
                     help="Continue an interrupted run in --out (at the next vertex, or inside the vertex "
                          "from its checkpoint).")(f)
    f = click.option("--batch-size", type=int, default=_DEFAULTS["batch_size"], show_default=True,
                     help="Minibatch size.")(f)
    f = click.option("--wd", type=float, default=_DEFAULTS["wd"], show_default=True,
                     help="Weight decay on each sampled parameter vector.")(f)
    f = click.option("--samples", "-J", type=int, default=_DEFAULTS["samples"], show_default=True,
                     help="J: samples of the complex per step whose losses are averaged.")(f)
    f = click.option("--lmbda", type=float, default=lmbda, show_default=True,
                     help="LAMBDA of the volume regulariser; lambda_i = max(LAMBDA / log(Vol^2(K_rand) + 1e-4), 1e-8).")(f)
    f = click.option("--lr", type=float, default=_DEFAULTS["lr"], show_default=True,
                     help="Peak learning rate for each vertex (cosine schedule within the vertex).")(f)
    f = click.option("--epochs-per-vertex", "epochs", type=int, default=_DEFAULTS["epochs"], show_default=True,
                     help="Epochs of SGD for each added vertex.")(f)
    return f


def make_config(epochs, lr, lmbda, samples, wd, batch_size):
    from ..methods.spro import SproConfig

    cfg = SproConfig(epochs=epochs, lr=lr, lmbda=lmbda, samples=samples, wd=wd, batch_size=batch_size)
    cfg.check()
    return cfg


def fmt(m: dict) -> str:
    return f"acc {m['accuracy']:.4f}  nll {m['nll']:.4f}  ece {m['ece']:.4f}  brier {m['brier']:.4f}"


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--vertices", "-k", type=int, default=3, show_default=True,
              help="Vertices of the simplex, the mode included (3 = a triangle: the mode and two trained vertices).")
@click.option("--members", type=int, default=25, show_default=True,
              help="Sampled models in the evaluated ensemble (BN statistics recomputed for each).")
@click.option("--face-planes", "face_grid", type=int, default=0, show_default=True,
              help="Also draw the loss in the plane of every triangular face on a GxG grid (through the plane "
                   "engine, OUT/faces/face_i_j_k/); 0 = skip (each face costs G^2 evaluations).")
@spro_options
@common_options(out="runs/simplex")
def command(run, vertices, members, face_grid, epochs, lr, lmbda, samples, wd, batch_size, resume, out, seed, device, quiet):
    """Grow a low-loss simplex from one mode RUN (ESPRO), vertex by vertex; evaluate its samples.

    Writes OUT/simplex.safetensors (vertex_0 = the mode, ...), OUT/simplex.json (per-vertex logs,
    log_volume after each vertex, test metrics of the mode, the mean sampled model and the ensemble of
    --members samples) and OUT/structure.png.
    """
    from ..methods.spro import espro_simplex

    cfg = make_config(epochs, lr, lmbda, samples, wd, batch_size)
    res = espro_simplex(run, out, vertices=vertices, cfg=cfg, members=members, seed=seed, device=device,
                        resume=resume, quiet=quiet, face_grid=face_grid)
    if not quiet:
        t = res["test"]
        click.echo(f"{out}: log-volume after each vertex {[round(v, 3) for v in res['log_volume']]}")
        for k in ("mode", "sample_mean", "ensemble"):
            click.echo(f"  {k:<12} {fmt(t[k])}")
