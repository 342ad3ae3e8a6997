"""`lowloss study`: the papers' experiments as resumable stages, one run directory each, and a report.

A stage is a row of :data:`STAGES`: a name, a title, the stages it needs, and the method runs it makes
(:class:`Job`: a method of :mod:`lowloss.api`, its input runs, the fields of its Config that the study
sets). Each job runs in-process through :func:`lowloss.api.run` into DIR/<stage>/[<sub>]; a stage is
marked finished by an atomic DIR/<stage>/stage.json. A re-run skips finished stages, and an interrupted
stage resumes from its runs' own checkpoints. After the stages, every claim of the papers is checked
against the measured numbers (:mod:`lowloss.claims`) and written to DIR/summary.json (claims as data)
and DIR/report.html (self-contained, figures embedded).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from .config import option
from .errors import LowlossError

STAGE_FILE = "stage.json"
STUDY_CONFIG = "study_config.json"

# every size knob of the study, per preset: "full" (under 30 min on 2 CPU cores for digits), "quick" (under 5),
# "tiny" (seconds; for tests of the pipeline only, numbers meaningless). regression, spirals and budget hold
# fields of those methods' Configs.
SIZES: dict[str, dict] = {
    "full": dict(mode_epochs=80, curve_epochs=20, grid=31, bn_subset=None, budget_seeds=3, swag_epochs=10,
                 espro_epochs=10, members=25, complex_epochs=8, dim_connectors=12, dim_epochs=5,
                 corruptions="all", shift_samples=30, vardrop_epochs=300, cswag_epochs=5, cswag_samples=10,
                 regression={}, spirals={}, budget={}),
    "quick": dict(mode_epochs=12, curve_epochs=10, grid=15, bn_subset=512, budget_seeds=2, swag_epochs=5,
                  espro_epochs=3, members=10, complex_epochs=3, dim_connectors=5, dim_epochs=2,
                  corruptions="gaussian_noise", shift_samples=10, vardrop_epochs=60, cswag_epochs=3,
                  cswag_samples=5, regression=dict(modes=3, espro_modes=2, epochs=1000),
                  spirals=dict(epochs=1000, vertex_epochs=60, grid=100, members=20), budget={}),
    "tiny": dict(mode_epochs=4, curve_epochs=1, grid=4, bn_subset=128, budget_seeds=1, swag_epochs=1,
                 espro_epochs=1, members=2, complex_epochs=1, dim_connectors=2, dim_epochs=1,
                 corruptions="gaussian_noise", shift_samples=2, vardrop_epochs=1, cswag_epochs=1, cswag_samples=2,
                 regression=dict(modes=2, espro_modes=1, epochs=20, vertex_epochs=2, swag_epochs=2, samples=3),
                 spirals=dict(epochs=20, vertex_epochs=1, grid=20, members=3, shown=3),
                 budget=dict(members_per_budget=1, samples=2)),
}


@dataclass
class Settings:
    """The study's configuration: what every stage shares."""

    data: str = "digits"
    data_dir: str | None = None
    model: str = option("convnet", "Architecture of every network in the study.")
    size: str = option("full", "Preset of stage sizes: full, quick (under 5 minutes on 2 CPU cores for digits) or "
                               "tiny (checks the pipeline only).", choices=tuple(SIZES))
    quick: bool = option(False, "Shorthand for --size quick.")
    stages: tuple = option(default_factory=tuple, flag="--stage", multiple=True,
                           help="Run only these stages (repeatable); default all.")
    seed: int = 0
    device: str = "auto"
    quiet: bool = option(False, cli=False)

    def __post_init__(self):
        if self.quick and self.size == "full":
            self.size = "quick"
        if self.size not in SIZES:
            raise LowlossError(f"--size must be one of {', '.join(SIZES)} (got {self.size})")

    def __getattr__(self, name):  # size knobs: settings.mode_epochs, settings.grid, ...
        sizes = SIZES[self.__dict__.get("size", "full")]
        if name in sizes:
            return sizes[name]
        raise AttributeError(name)

    @property
    def seeds(self) -> list[int]:
        return [self.seed, self.seed + 1, self.seed + 2]

    def record(self) -> dict:
        return {"data": self.data, "model": self.model, "seed": self.seed, "size": self.size,
                "data_dir": self.data_dir}


@dataclass(frozen=True)
class Job:
    """One method run of a stage: ``lowloss.api.run(method, inputs=..., **config)`` into DIR/<stage>/<sub>."""

    method: str
    inputs: list | None = None
    config: dict = field(default_factory=dict)
    sub: str = ""
    device: bool = True  # the study's --device applies (False: the method's own default device)


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    jobs: Callable[[Settings, Path], list[Job]]  # (settings, study dir) -> the runs of the stage
    needs: tuple[str, ...] = ()


def mode_dirs(study: Path, s: Settings) -> list[Path]:
    return [study / "modes" / f"seed{k}" for k in s.seeds]


def _data(s: Settings) -> dict:
    return {"data": s.data, "data_dir": s.data_dir}


def _bn(s: Settings) -> dict:
    return {"bn_subset": s.bn_subset} if s.bn_subset else {}


def _finished(study: Path, stage: str) -> bool:
    return (study / stage / STAGE_FILE).exists()


def _modes(s, study):
    return [Job("train", None, {**_data(s), "model": s.model, "epochs": s.mode_epochs, "seed": k}, f"seed{k}")
            for k in s.seeds]


def _connect(kind: str):
    def jobs(s, study):
        return [Job("connect", mode_dirs(study, s)[:2],
                    {"curve": kind, "bends": 1 if kind == "bezier" else 2, "epochs": s.curve_epochs, "seed": s.seed})]

    return jobs


def _shift(s, study):
    extra = {}
    if _finished(study, "espro"):
        extra["espro"] = (str(study / "espro"),)
    if _finished(study, "swag"):
        extra["swag"] = tuple(str(study / "swag" / m.name) for m in mode_dirs(study, s))
    return [Job("shift", mode_dirs(study, s), {**extra, "corruptions": s.corruptions, "severities": "1-5",
                                                "samples": s.shift_samples})]


def _vardrop(s, study):
    # the slides' setting is LeNet-5 on MNIST for 200 epochs; on the embedded digits a wide MLP trained with Adam
    # at lr 1e-2 shows the phenomenon in a few minutes of CPU: its last hidden layer is the variance layer (the
    # default variance_layers), so every bit of information reaches the output through variances
    data = s.data if s.data in ("digits", "mnist5k", "mnist", "fashion-mnist") else "digits"
    return [Job("vardrop", None, {"data": data, "model": "mlp", "model_options": {"widths": "512,512"},
                                  "posterior": "dropout,variance", "lr": 0.01, "epochs": s.vardrop_epochs,
                                  "seed": s.seed})]


STAGES: list[Stage] = [
    Stage("modes", "Train three independent modes", _modes),
    Stage("connect_bezier", "Connect two modes with a Bezier curve", _connect("bezier"), ("modes",)),
    Stage("connect_polychain", "Connect two modes with a polygonal chain", _connect("polychain"), ("modes",)),
    Stage("plane_modes", "Loss plane through three modes",
          lambda s, study: [Job("plane", mode_dirs(study, s), {"grid": s.grid, **_bn(s)})], ("modes",)),
    Stage("plane_curve", "Loss plane through the Bezier curve",
          lambda s, study: [Job("plane", None, {"curve": str(study / "connect_bezier"), "grid": s.grid, **_bn(s)})],
          ("connect_bezier",)),
    Stage("budget", "FGE, SSE, SWA, SWAG, MultiSWAG, deep ensembles at equal budget",
          lambda s, study: [Job("budget", None, {**_data(s), "model": s.model, "budgets": (1,),
                                                 "seeds": s.budget_seeds, "epochs": s.mode_epochs, "seed": s.seed,
                                                 **s.budget})]),
    Stage("curve_swag", "SWAG over the Bezier curve's bend",
          lambda s, study: [Job("swag", None, {"curve": str(study / "connect_bezier"), "epochs": s.cswag_epochs,
                                               "lr": 0.01, "samples": s.cswag_samples, "points": 11,
                                               "seed": s.seed})], ("connect_bezier",)),
    Stage("swag", "SWAG from each mode (MultiSWAG)",
          lambda s, study: [Job("swag", [m], {"epochs": s.swag_epochs, "seed": k}, m.name)
                            for k, m in zip(s.seeds, mode_dirs(study, s))], ("modes",)),
    Stage("espro", "ESPRO simplexes from each mode vs the deep ensemble",
          lambda s, study: [Job("espro", mode_dirs(study, s), {"vertices": 3, "epochs": s.espro_epochs,
                                                               "members": s.members, "seed": s.seed})], ("modes",)),
    Stage("complex", "A mode-connecting simplicial complex (SPRO)",
          lambda s, study: [Job("complex", mode_dirs(study, s)[:2], {"connectors": 2,
                                                                     "epochs": s.complex_epochs,
                                                                     "seed": s.seed})], ("modes",)),
    Stage("dimension", "Dimensionality of the low-loss valley",
          lambda s, study: [Job("dimension", mode_dirs(study, s)[:2], {"max_connectors": s.dim_connectors,
                                                                       "epochs": s.dim_epochs,
                                                                       "seed": s.seed})], ("modes",)),
    Stage("calibration", "Calibration and temperature scaling",
          lambda s, study: [Job("calibrate", mode_dirs(study, s))], ("modes",)),
    Stage("shift", "Dataset shift (corrupted test images)", _shift, ("modes",)),
    Stage("vardrop", "Variational dropout vs variance networks", _vardrop),
    Stage("regression", "1-D regression uncertainty bands",
          lambda s, study: [Job("regression", None, {"method": ("ensemble", "swag", "espro"), **s.regression,
                                                     "seed": s.seed}, device=False)]),
    Stage("spirals", "Two spirals: functional diversity in a simplex",
          lambda s, study: [Job("spirals", None, {**s.spirals, "seed": s.seed}, device=False)]),
]


def run_stage(stage: Stage, settings: Settings, study: Path) -> None:
    """Every run of `stage`, in-process; finished runs are kept, interrupted ones continue."""
    from .api import run

    d = study / stage.name
    for job in stage.jobs(settings, study):
        inputs = [str(p) for p in job.inputs] if job.inputs is not None else None
        device = {"device": settings.device} if job.device else {}
        run(job.method, None, inputs, d / job.sub if job.sub else d, resume=True, quiet=settings.quiet,
            **device, **job.config)


def run_study(out: str | Path, settings: Settings, only: list[str] | None = None) -> dict:
    """Run every stage not yet finished, then write summary.json and report.html. Returns the summary."""
    from .rundir import read_json_file
    from .utils import echo, versions, write_json

    study = Path(out)
    study.mkdir(parents=True, exist_ok=True)
    cfg_path = study / STUDY_CONFIG
    cfg = settings.record()
    if cfg_path.exists() and read_json_file(cfg_path) != cfg:
        raise LowlossError(f"{study} holds a study with another configuration ({read_json_file(cfg_path)}); "
                           "use a new --out")
    write_json(cfg_path, cfg)
    status: dict[str, dict] = {}
    t_start = time.time()
    n = len(STAGES)
    for i, st in enumerate(STAGES, 1):
        d = study / st.name
        marker = d / STAGE_FILE
        head = f"[{i:>2}/{n}] {st.title:<48}"
        if only and st.name not in only:
            continue
        if marker.exists():
            status[st.name] = {**read_json_file(marker), "status": "done (cached)"}
            echo(f"{head} cached ({status[st.name].get('seconds', 0):.1f}s when run)", settings.quiet)
            continue
        missing = [dep for dep in st.needs if not (study / dep / STAGE_FILE).exists()]
        if missing:
            status[st.name] = {"status": f"skipped (needs {', '.join(missing)})", "seconds": 0.0}
            echo(f"{head} skipped: needs {', '.join(missing)}", settings.quiet)
            continue
        echo(f"{head} running ... (study time so far {time.time() - t_start:.0f}s)", settings.quiet)
        t0 = time.time()
        d.mkdir(parents=True, exist_ok=True)
        run_stage(st, settings, study)
        secs = time.time() - t0
        write_json(marker, {"stage": st.name, "seconds": secs, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        status[st.name] = {"status": "done", "seconds": secs}
        echo(f"{head} done in {secs:.1f}s", settings.quiet)
    from .claims import collect_claims

    claims = collect_claims(study, mode_dirs(study, settings))
    summary = {"claims": [{k: c[k] for k in ("id", "statement", "measured", "threshold", "test", "held")}
                          for c in claims],
               "config": cfg, "versions": versions(), "seeds": settings.seeds,
               "stage_seconds": {k: v.get("seconds", 0.0) for k, v in status.items()},
               "stages": status, "total_seconds": time.time() - t_start}
    write_json(study / "summary.json", summary)
    from .report import write_report

    held = sum(1 for c in claims if c["held"])
    measured = sum(1 for c in claims if c["held"] is not None)
    write_report(study / "report.html", title=f"lowloss study: {settings.model} on {settings.data}",
                 subtitle=f"{held} of {measured} measured claims held; seeds {settings.seeds}; "
                          f"{settings.size} settings; lowloss {versions()['lowloss']}, "
                          f"torch {versions()['torch']}",
                 claims=claims, base=study, stages=status, extra={"config": cfg, "versions": versions()})
    return summary


def _command(out, quiet, **kw):
    """Run the whole study (modes, curves, planes, ensembles, simplexes, shift, variational dropout, ...)
    into --out, skipping finished stages, then write summary.json and report.html."""
    from .cli import config_from_options

    settings = config_from_options(Settings, kw)
    settings.quiet = quiet
    summary = run_study(out, settings, only=list(settings.stages) or None)
    if not quiet:
        for c in summary["claims"]:
            mark = {True: "held", False: "FAILED", None: "n/a"}[c["held"]]
            click.echo(f"  [{mark:>6}] {c['statement']}")
        click.echo(f"report: {out}/report.html  summary: {out}/summary.json")


def _build_command() -> click.Command:
    from .cli import config_options, out_option, quiet_option

    f = config_options(Settings)(out_option("runs/study")(quiet_option(_command)))
    return click.command(name="study", help=_command.__doc__)(f)


command = _build_command()
