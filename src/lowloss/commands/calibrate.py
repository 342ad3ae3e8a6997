"""lowloss calibrate: temperature scaling, reliability diagrams, ECE / NLL / Brier before and after."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli import common_options


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--val-source", type=click.Choice(["test-half", "train"]), default="test-half", show_default=True,
              help="Where T is fitted. test-half: a fixed stratified half of the test split (metrics on the other "
                   "half); train: part of the train split (in-sample for lowloss runs, which train on all of it).")
@click.option("--val-size", type=int, default=None,
              help="Examples used to fit T (default: half the test split, or 10% of train).")
@click.option("--val-seed", type=int, default=0, show_default=True, help="Seed of the calibration split.")
@click.option("--samples", type=int, default=30, show_default=True,
              help="Members drawn from sampled predictors (SWAG: samples, simplex/ESPRO: per simplex).")
@click.option("--no-ensemble", is_flag=True, help="With several run directories, do not add their deep ensemble.")
@common_options(out="runs/calibrate")
def command(paths, val_source, val_size, val_seed, samples, no_ensemble, out, seed, device, quiet):
    """Temperature scaling of runs, snapshot/SWAG/simplex/ESPRO directories and of the deep ensemble of the
    run directories given (fitted on the log of mean probabilities). Writes OUT/calibration.json (T, accuracy,
    NLL, ECE, Brier before and after, per-bin reliability) and OUT/reliability.png."""
    import torch

    from ..methods.calibration import calibrate_predictor, calibration_plan
    from ..methods.predictor import LOADERS, ensemble_predictor, load_predictor
    from ..plots.uncertainty import plot_reliability
    from ..utils import LowlossError, echo, versions, write_json

    def open_(p):
        """Sampled predictors get --samples under the name their loader uses."""
        p_ = Path(p)
        if (p_ / "swag.safetensors").exists() or (p_ / "multiswag.json").exists():
            return load_predictor(p, device=device, samples=samples)
        if (p_ / "simplex.safetensors").exists() or (p_ / "espro.json").exists():
            return load_predictor(p, device=device, members=samples)
        return load_predictor(p, device=device)

    preds = {}
    names = _unique([Path(p).name or str(p) for p in paths])
    for name, p in zip(names, paths):
        preds[name] = open_(p)
    plain = [p for p in paths if (Path(p) / "run.json").exists()
             and not any((Path(p) / m).exists() for m in LOADERS if m != "run.json")]
    if len(plain) > 1 and not no_ensemble:
        try:
            preds[f"ensemble of {len(plain)}"] = ensemble_predictor(plain, device=device)
        except LowlossError as e:  # different architectures cannot share one module
            echo(f"no deep ensemble of the runs: {e}", quiet)
    first = next(iter(preds.values()))
    for name, pr in preds.items():
        if pr.data.name != first.data.name or len(pr.data.test) != len(first.data.test):
            raise LowlossError(f"{name} uses data {pr.data.name} ({len(pr.data.test)} test examples), "
                               f"unlike {first.data.name} ({len(first.data.test)}); calibrate them separately")
    plan = calibration_plan(first.data, val_source, val_size, val_seed)
    results = {}
    for name, pr in preds.items():
        results[name] = calibrate_predictor(pr, plan, torch.Generator().manual_seed(seed), quiet=quiet)
        if not quiet:
            b, a = results[name]["before"], results[name]["after"]
            click.echo(f"{name}: T={results[name]['temperature']:.3f}  acc {b['accuracy']:.4f}  "
                       f"nll {b['nll']:.4f}->{a['nll']:.4f}  ece {b['ece']:.4f}->{a['ece']:.4f}  "
                       f"brier {b['brier']:.4f}->{a['brier']:.4f}")
            if results[name]["note"]:
                click.echo(f"  note: {results[name]['note']}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "calibration.json", {"paths": list(paths), "calibration": plan.info, "seed": seed,
                                          "samples": samples, "data": first.data.describe(), "results": results,
                                          "versions": versions()})
    plot_reliability(results, out / "reliability.png",
                     title=f"reliability on {plan.info['eval_size']} held-out {first.data.name} examples; "
                           f"T fitted on {plan.info['calibration_size']} ({plan.info['source']})")
    if not quiet:
        click.echo(f"wrote {out / 'calibration.json'} and {out / 'reliability.png'}")
