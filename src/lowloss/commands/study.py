"""lowloss study: reproduce the papers' findings on the embedded data as resumable stages + a report."""

from __future__ import annotations

import click

from ..cli import common_options, data_options


@click.command()
@data_options
@click.option("--model", default="convnet", show_default=True, help="Architecture of every network in the study.")
@click.option("--quick", is_flag=True, help="Smaller stages: under 5 minutes on 2 CPU cores for digits.")
@click.option("--size", type=click.Choice(["full", "quick", "tiny"]), default=None,
              help="Preset of stage sizes (--quick = --size quick; tiny only checks the pipeline).  [default: full]")
@click.option("--stage", "stages", multiple=True, help="Run only these stages (repeatable); default all.")
@common_options(out="runs/study")
def command(data, data_dir, data_seed, model, quick, size, stages, out, seed, device, quiet):
    """Run the whole study (modes, curves, planes, ensembles, simplexes, shift, variational dropout, ...)
    into --out, skipping finished stages, then write summary.json and report.html."""
    from ..study import Settings, run_study

    s = Settings(data=data, model=model, device=device, seed=seed, size=size or ("quick" if quick else "full"),
                 data_dir=data_dir, quiet=quiet)
    summary = run_study(out, s, only=list(stages) or None)
    if not quiet:
        for c in summary["claims"]:
            mark = {True: "held", False: "FAILED", None: "n/a"}[c["held"]]
            click.echo(f"  [{mark:>6}] {c['statement']}")
        click.echo(f"report: {out}/report.html  summary: {out}/summary.json")
