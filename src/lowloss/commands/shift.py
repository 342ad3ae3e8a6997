"""lowloss shift: accuracy, NLL and ECE under image corruptions (severities 1-5) for several methods."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli import common_options


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--swag", "swag", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="SWAG or MultiSWAG directory (repeatable): adds multiswa (the SWAG means) and multiswag (samples).")
@click.option("--espro", "espro", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="ESPRO directory (lowloss espro) or simplex directory (repeatable): adds espro.")
@click.option("--corruptions", default="all", show_default=True,
              help="'all' (every corruption that fits the images: saturate needs colour) or names, comma-separated.")
@click.option("--severities", default="1-5", show_default=True, help="Severities: 1-5, 3 or 1,3,5.")
@click.option("--samples", type=int, default=30, show_default=True,
              help="MultiSWAG samples in all; ESPRO samples per simplex.")
@click.option("--val-source", type=click.Choice(["test-half", "train"]), default="test-half", show_default=True,
              help="Clean data T is fitted on (see lowloss calibrate); with test-half every metric is on the other "
                   "half of the test split.")
@click.option("--val-size", type=int, default=None, help="Examples used to fit T (default: half the test split).")
@click.option("--val-seed", type=int, default=0, show_default=True, help="Seed of the calibration split.")
@common_options(out="runs/shift")
def command(runs, swag, espro, corruptions, severities, samples, val_source, val_size, val_seed, out, seed, device,
            quiet):
    """Dataset-shift benchmark: single (the first run), ensemble (all RUNS), multiswa / multiswag (--swag),
    espro (--espro) on corrupted test data, with and without temperature scaling.

    Writes OUT/shift.json ({method: {corruption: {severity: {accuracy, nll, ece, brier}}}}, the same under
    "temperature_scaled", clean numbers under "clean"), OUT/shift.png (box plots over corruptions per severity)
    and OUT/corruptions.png (one test image under every corruption). Member logits are cached under OUT/cache:
    rerunning the same command resumes.
    """
    import torch

    from ..corruptions import corrupt_pixels, parse_corruptions, parse_severities, pixel_stats
    from ..methods.calibration import calibration_plan
    from ..methods.predictor import ensemble_predictor, run_predictor
    from ..methods.shift import espro_method, run_shift, summary, swag_methods
    from ..plots.uncertainty import plot_corruption_gallery, plot_shift
    from ..utils import LowlossError

    sevs = parse_severities(severities)
    methods = {}
    if len(runs) > 1:
        methods["ensemble"] = ensemble_predictor(list(runs), device=device)
    else:
        methods["single"] = run_predictor(runs[0], device=device)
    data = next(iter(methods.values())).data
    if len(data.input_shape) != 3:
        raise LowlossError(f"the runs use {data.name}, not an image dataset; corruptions need [C, H, W] images")
    names = parse_corruptions(corruptions, data.input_shape[0])
    gen = torch.Generator().manual_seed(seed)
    if swag:
        methods.update(swag_methods(swag, samples, gen, device=device))
    if espro:
        methods["espro"] = espro_method(espro, samples, device=device)
    for name, pr in methods.items():
        if pr.data.name != data.name or len(pr.data.test) != len(data.test):
            raise LowlossError(f"{name} was trained on {pr.data.name} ({len(pr.data.test)} test examples), the runs "
                               f"on {data.name} ({len(data.test)}); all methods need the same data and split")
    plan = calibration_plan(data, val_source, val_size, val_seed)
    config = {"runs": [str(Path(r).resolve()) for r in runs], "swag": [str(Path(p).resolve()) for p in swag],
              "espro": [str(Path(p).resolve()) for p in espro], "corruptions": names, "severities": sevs,
              "samples": samples, "val_source": val_source, "val_size": val_size, "val_seed": val_seed, "seed": seed}
    res = run_shift(methods, data, names, sevs, out, plan=plan, config=config, seed=seed, quiet=quiet)
    out = Path(out)
    plot_shift(res, out / "shift.png")
    mean, std = pixel_stats(data)
    x0 = (data.test.x[:1].cpu().double() * std + mean).clamp(0, 1) if hasattr(data.test, "x") else None
    if x0 is not None:
        gallery = {c: [corrupt_pixels(x0, c, s, seed=seed)[0].numpy() for s in range(1, 6)] for c in names}
        plot_corruption_gallery(gallery, x0[0].numpy(), out / "corruptions.png")
    if not quiet:
        for scaled in (False, True):
            s = summary(res, "nll", temperature_scaled=scaled)
            click.echo(f"mean NLL over corruptions{' (temperature scaled)' if scaled else ''}:")
            click.echo("  " + " " * 10 + "".join(f"{'sev ' + k:>9}" for k in next(iter(s.values()))))
            for name, row in s.items():
                click.echo(f"  {name:<10}" + "".join(f"{v:>9.4f}" for v in row.values()))
        click.echo(f"wrote {out / 'shift.json'}, {out / 'shift.png'}")
