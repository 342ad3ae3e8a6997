"""`lowloss study`: the papers' experiments as resumable stages, one run directory each, and a report.

A stage is a row of :data:`STAGES`: a name, a title, the stages it needs, and the method runs it makes
(:class:`Job`: a method of :mod:`lowloss.api`, its input runs, the fields of its Config that the study
sets). Each job runs in-process through :func:`lowloss.api.run` into DIR/<stage>/[<sub>]; a stage is
marked finished by an atomic DIR/<stage>/stage.json. A re-run skips finished stages, and an interrupted
stage resumes from its runs' own checkpoints. After the stages, every claim of the papers is checked
against the measured numbers (:mod:`lowloss.claims`) and written to DIR/summary.json (claims as data),
DIR/summary.md (the claims table in Markdown)
and DIR/report.html (self-contained, figures embedded).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from .config import option
from .errors import LowlossError

STAGE_FILE = "stage.json"
STUDY_CONFIG = "study_config.json"

# every size knob of the study, per preset: "full" (three replicates of every claim; about half an hour on 2 CPU
# cores), "quick" (under 5 minutes on 2 CPU cores), "tiny" (seconds; for tests of the pipeline only, numbers
# meaningless). regression, spirals and budget hold fields of those methods' Configs.
SIZES: dict[str, dict] = {
    "full": dict(mode1d_epochs=30, budget1d_epochs=32, signal_shifts="all",
                 mode_epochs=80, curve_epochs=20, curve_points=61, curve1d_points=61, grid=31, replicates=3,
                 bn_subset=None, budget_seeds=3, swag_epochs=10,
                 espro_epochs=10, members=25, complex_epochs=8, dim_connectors=12, dim_epochs=5,
                 shift_samples=30, vardrop_epochs=300, cswag_epochs=5, cswag_samples=10,
                 regression={}, spirals={}, budget={}),
    "quick": dict(mode1d_epochs=15, budget1d_epochs=8, signal_shifts="all",
                  mode_epochs=12, curve_epochs=10, curve_points=31, curve1d_points=21, grid=11, replicates=1,
                  bn_subset=512, budget_seeds=2, swag_epochs=3, espro_epochs=2, members=6, complex_epochs=3,
                  dim_connectors=4, dim_epochs=2, shift_samples=4, vardrop_epochs=45, cswag_epochs=3,
                  cswag_samples=5, regression=dict(modes=3, espro_modes=2, epochs=700, vertex_epochs=100),
                  spirals=dict(epochs=700, vertex_epochs=60, grid=100, members=20), budget={}),
    "tiny": dict(mode1d_epochs=1, budget1d_epochs=4, signal_shifts="noise",
                 mode_epochs=4, curve_epochs=1, curve_points=11, curve1d_points=11, grid=4, replicates=1,
                 bn_subset=128, budget_seeds=1, swag_epochs=1,
                 espro_epochs=1, members=2, complex_epochs=1, dim_connectors=2, dim_epochs=1,
                 shift_samples=2, vardrop_epochs=1, cswag_epochs=1, cswag_samples=2,
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
    executor: str = option("local", choices=("local", "ray"),
                           help="local: on this machine, --jobs stages at a time; ray: stages whose needs "
                                "are met run at the same time as tasks on this machine's node of a Ray cluster, "
                                "their trainings, planes, ensembles, budgets, shift settings and simplexes as "
                                "tasks across the cluster (pip install 'lowloss[ray]').")
    ray_address: str | None = None
    jobs: int = option(0, "With the local executor: stages whose needs are met run at the same time, this many, "
                          "each in a worker process with its share of the CPU cores (0: one per core, at most 4; "
                          "1: one after the other in this process). Numbers can differ from a --jobs 1 study in "
                          "the last digits (fewer threads per network).")
    quiet: bool = option(False, cli=False)

    def __post_init__(self):
        if self.quick and self.size == "full":
            self.size = "quick"
        if self.size not in SIZES:
            raise LowlossError(f"--size must be one of {', '.join(SIZES)} (got {self.size})")
        if self.executor not in ("local", "ray"):
            raise LowlossError(f"--executor must be one of local, ray (got {self.executor})")
        if self.jobs < 0:
            raise LowlossError(f"--jobs must be 0 (one per CPU core) or a positive count (got {self.jobs})")

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
    threads: int | None = None  # intra-op CPU threads for this job (tiny networks: 1 avoids threading overhead)


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    jobs: Callable[[Settings, Path], list[Job]]  # (settings, study dir) -> the runs of the stage
    needs: tuple[str, ...] = ()


# The uncertainty stages (budget, calibration, shift) run on MNIST-1D with 1-D convnets whatever --data is: on
# the 8x8 digits the networks are near-perfect and underconfident, so ensembles' NLL gains, temperature scaling
# and accuracy loss under shift cannot show (see the report's last section); MNIST-1D is generated locally by the
# mnist1d package, and small CNNs reach ~95% there in seconds.
UNCERTAINTY_DATA = {"data": "mnist1d", "model": "convnet1d"}


def mode_dirs(study: Path, s: Settings) -> list[Path]:
    return [study / "modes" / f"seed{k}" for k in s.seeds]


def mode1d_dirs(study: Path, s: Settings) -> list[Path]:
    return [study / "modes1d" / f"seed{k}" for k in s.seeds]


REPLICATE = "rep_"  # sub-directory prefix of a stage's further replicates (pairs of modes, seeds)


def mode_pairs(study: Path, s: Settings, modes: list[Path] | None = None) -> list[tuple[str, list[Path]]]:
    """(sub-directory, two modes) of the replicates of a two-mode stage: the pairs (0, 1), (1, 2), (0, 2) of the
    three modes (default the study's modes), as many as the size's ``replicates``; the first pair is the stage
    directory itself."""
    modes = modes or mode_dirs(study, s)
    pairs = [(0, 1), (1, 2), (0, 2)][:s.replicates]
    return [("" if n == 0 else f"{REPLICATE}pair{i}{j}", [modes[i], modes[j]]) for n, (i, j) in enumerate(pairs)]


def replicate_seeds(s: Settings) -> list[tuple[str, int]]:
    """(sub-directory, seed) of the replicates of a one-run stage; the first seed is the stage directory."""
    return [("" if n == 0 else f"{REPLICATE}seed{k}", k) for n, k in enumerate(s.seeds[:s.replicates])]


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
        return [Job("connect", pair, {"curve": kind, "bends": 1 if kind == "bezier" else 2, "epochs": s.curve_epochs,
                                      "points": s.curve_points, "seed": s.seed}, sub)
                for sub, pair in mode_pairs(study, s)]

    return jobs


def _modes1d(s, study):
    return [Job("train", None, {**UNCERTAINTY_DATA, "epochs": s.mode1d_epochs, "seed": k}, f"seed{k}", threads=1)
            for k in s.seeds]


def _connect1d(s, study):
    # the endpoint-ensemble claim needs an ensemble gain to reach: on the digits two modes ensembled are no
    # better than one, on MNIST-1D they are (see STAGE_DATA_WHY)
    return [Job("connect", pair, {"curve": "bezier", "bends": 1, "epochs": s.curve_epochs, "seed": s.seed,
                                  "points": s.curve1d_points},
                sub, threads=1)
            for sub, pair in mode_pairs(study, s, mode1d_dirs(study, s))]


def _shift(s, study):
    extra = {}
    if _finished(study, "swag"):
        extra["swag"] = tuple(str(study / "swag" / m.name) for m in mode1d_dirs(study, s))
    return [Job("shift", mode1d_dirs(study, s), {**extra, "corruptions": s.signal_shifts, "severities": "1-5",
                                                  "samples": s.shift_samples, "seed": s.seed}, threads=1)]


def _vardrop(s, study):
    # the slides' setting is LeNet-5 on MNIST for 200 epochs; on the embedded digits a wide MLP trained with Adam
    # at lr 1e-2 shows the phenomenon in a few minutes of CPU: its last hidden layer is the variance layer (the
    # default variance_layers), so every bit of information reaches the output through variances
    data = s.data if s.data in ("digits", "mnist5k", "mnist", "fashion-mnist") else "digits"
    return [Job("vardrop", None, {"data": data, "model": "mlp", "model_options": {"widths": "512,512"},
                                  "posterior": "dropout,variance", "lr": 0.01, "epochs": s.vardrop_epochs,
                                  "seed": k}, sub) for sub, k in replicate_seeds(s)]


# a Bezier curve between the first two modes of each replicate of the regression stage (SGD on the MSE, the
# modes' weight decay), its frames at the size's count and grid; the video of the first replicate's curve
REGRESSION_PATHS = {"full": dict(epochs=200, frames=40, frame_grid=41),
                    "quick": dict(epochs=100, frames=12, frame_grid=31),
                    "tiny": dict(epochs=2, frames=2, frame_grid=5)}


def _regression_paths(s, study):
    size = REGRESSION_PATHS[s.size]
    jobs = [Job("connect", [study / "regression" / sub / "modes" / f"mode_{i}" for i in (0, 1)],
                {"lr": 0.05, "wd": 1e-4, "batch_size": 40, "marks": 5, "seed": k, "device": "cpu", **size}, sub,
                device=False, threads=1)
            for sub, k in replicate_seeds(s)]
    return jobs + [Job("animate", [study / "regression_paths"], {"formats": ("gif",)}, "video", device=False)]


def _curve_dirs(study: Path, s: Settings) -> list[tuple[str, Path]]:
    """(sub-directory, Bezier curve run) of every replicate of the connect_bezier stage."""
    return [(sub, study / "connect_bezier" / sub) for sub, _ in mode_pairs(study, s)]


ALIGN_PAIRS = ((0, 1), (1, 2), (0, 2))  # the seed pairs whose lines are compared before and after alignment


def align_mlp_dirs(study: Path, s: Settings) -> list[Path]:
    return [study / "align" / "mlp" / f"seed{k}" for k in s.seeds]


def _align(s, study):
    # weight matching on two architectures: MLPs trained here (3 seeds) and the study's modes; then one curve
    # between an MLP pair before and after alignment
    epochs = s.mode_epochs if s.size == "full" else max(2, s.mode_epochs // 3)
    mlp = align_mlp_dirs(study, s)
    jobs = [Job("train", None, {**_data(s), "model": "mlp", "epochs": epochs, "seed": k}, f"mlp/seed{k}", threads=1)
            for k in s.seeds]
    for name, dirs in (("mlp", mlp), (s.model, mode_dirs(study, s))):
        jobs += [Job("align", [dirs[i], dirs[j]], {"points": 11 if s.size == "full" else 7, "seed": s.seed, **_bn(s)},
                     f"{name}/align{i}{j}") for i, j in ALIGN_PAIRS]
    curve = {"curve": "bezier", "bends": 1, "epochs": _path_epochs(s), "points": 21, "seed": s.seed, **_bn(s)}
    jobs += [Job("connect", pair, {**curve, "align": al}, f"mlp/{sub}{'/' if sub else ''}"
                                                          f"{'curve_aligned' if al else 'curve'}", threads=1)
             for sub, pair in mode_pairs(study, s, mlp) for al in (False, True)]
    return jobs


# sightseeing (Skorokhodov & Burtsev): a plane next to each of the align stage's digits MLPs trained to draw
# the built-in "LL"; the MLPs are fast enough to train the plane's origin and directions for several epochs
SIGHTSEE = {"full": dict(epochs=20, plane_grid=41), "quick": dict(epochs=4, plane_grid=21),
            "tiny": dict(epochs=1, plane_grid=5, grid=6)}


def _sightsee(s, study):
    return [Job("sightsee", [m], {**SIGHTSEE[s.size], "seed": k, **_bn(s)}, sub, threads=1)
            for (sub, k), m in zip(replicate_seeds(s), align_mlp_dirs(study, s))]


def _path_epochs(s: Settings) -> int:
    return s.curve_epochs if s.size == "full" else max(1, s.curve_epochs // 4)


def _paths(s, study):
    # AutoNEB between the same MLP pairs as the align stage's curves, at the same number of epochs
    neb = {} if s.size == "full" else {"neb_rounds": 2, "neb_pivots": 1}
    return [Job("connect", pair, {"epochs": _path_epochs(s), "points": 21, "seed": s.seed, "method": "neb", **neb,
                                  **_bn(s)}, f"{sub}/neb" if sub else "neb", threads=1)
            for sub, pair in mode_pairs(study, s, align_mlp_dirs(study, s))]


# the width stage (Izmailov et al.'s "optima width"): SWA at the modes' peak learning rate from each mode, then
# the line through the mode and its SWA (ten times their distance beyond each: on the digits SWA moves a small
# fraction of the valley's width) and filter-normalised random rays (span 1, Li et al.'s) from both
WIDTH = {"full": dict(swa_epochs=10, directions=10, ray_points=11, refine=6, line_points=41),
         "quick": dict(swa_epochs=5, directions=6, ray_points=6, refine=3, line_points=25),
         "tiny": dict(swa_epochs=1, directions=2, ray_points=3, refine=1, line_points=5)}


def _swa_modes(s, study):
    return [Job("swa", [study / "modes" / f"seed{k}"], {"epochs": WIDTH[s.size]["swa_epochs"], "lr": 0.05,
                                                          "every_epochs": 0.25, "seed": k}, sub)
            for sub, k in replicate_seeds(s)]


def _width(s, study):
    size = {k: v for k, v in WIDTH[s.size].items() if k != "swa_epochs"}
    return [Job("width", [study / "modes" / f"seed{k}", study / "swa_modes" / sub],
                {**size, "extend": 10.0, "filter_norm": True, "max_distance": 1.0, "seed": k}, sub)
            for sub, k in replicate_seeds(s)]


STAGES: list[Stage] = [
    Stage("modes", "Train three independent modes", _modes),
    Stage("connect_bezier", "Connect two modes with a Bezier curve", _connect("bezier"), ("modes",)),
    Stage("connect_polychain", "Connect two modes with a polygonal chain", _connect("polychain"), ("modes",)),
    Stage("plane_modes", "Loss plane through three modes",
          lambda s, study: [Job("plane", mode_dirs(study, s), {"grid": s.grid, **_bn(s)})], ("modes",)),
    Stage("plane_curve", "Loss plane through the Bezier curve",
          lambda s, study: [Job("plane", None, {"curve": str(c), "grid": s.grid, **_bn(s)}, sub)
                            for sub, c in _curve_dirs(study, s)], ("connect_bezier",)),
    Stage("modes1d", "Train three 1-D convnets on MNIST-1D", _modes1d),
    Stage("connect1d", "Connect two MNIST-1D modes: endpoint ensembles along the curve", _connect1d, ("modes1d",)),
    Stage("budget", "FGE, SSE, SWA, SWAG, MultiSWAG, deep ensembles at equal budget (MNIST-1D)",
          lambda s, study: [Job("budget", None, {**UNCERTAINTY_DATA, "budgets": (1,), "seeds": s.budget_seeds,
                                                 "epochs": s.budget1d_epochs, "seed": s.seed, **s.budget},
                            threads=1)]),
    Stage("curve_swag", "SWAG over the Bezier curve's bend",
          lambda s, study: [Job("swag", None, {"curve": str(c), "epochs": s.cswag_epochs, "lr": 0.01,
                                               "samples": s.cswag_samples, "points": 11, "seed": s.seed}, sub)
                            for sub, c in _curve_dirs(study, s)], ("connect_bezier",)),
    Stage("swag", "SWAG from each MNIST-1D mode (MultiSWAG, for the shift)",
          lambda s, study: [Job("swag", [m], {"epochs": s.swag_epochs, "seed": k}, m.name, threads=1)
                            for k, m in zip(s.seeds, mode1d_dirs(study, s))], ("modes1d",)),
    Stage("espro", "ESPRO simplexes from each mode vs the deep ensemble",
          lambda s, study: [Job("espro", mode_dirs(study, s), {"vertices": 3, "epochs": s.espro_epochs,
                                                               "members": s.members, "seed": s.seed})], ("modes",)),
    Stage("complex", "A mode-connecting simplicial complex (SPRO)",
          lambda s, study: [Job("complex", pair, {"connectors": 2, "epochs": s.complex_epochs, "seed": s.seed}, sub)
                            for sub, pair in mode_pairs(study, s)], ("modes",)),
    Stage("dimension", "Dimensionality of the low-loss valley",
          lambda s, study: [Job("dimension", pair, {"max_connectors": s.dim_connectors, "epochs": s.dim_epochs,
                                                    "seed": s.seed}, sub)
                            for sub, pair in mode_pairs(study, s)], ("modes",)),
    Stage("calibration", "Calibration and temperature scaling (MNIST-1D)",
          lambda s, study: [Job("calibrate", mode1d_dirs(study, s), threads=1)], ("modes1d",)),
    Stage("shift", "Dataset shift: MNIST-1D generator knobs turned up", _shift, ("modes1d",)),
    Stage("vardrop", "Variational dropout vs variance networks", _vardrop),
    Stage("regression", "1-D regression uncertainty bands",
          lambda s, study: [Job("regression", None, {"method": ("ensemble", "swag", "espro"), **s.regression,
                                                     "seed": k}, sub, device=False)
                            for sub, k in replicate_seeds(s)]),
    Stage("regression_paths", "Paths between 1-D regression modes: functions along a curve, and its video",
          lambda s, study: _regression_paths(s, study), ("regression",)),
    Stage("spirals", "Two spirals: functional diversity in a simplex",
          lambda s, study: [Job("spirals", None, {**s.spirals, "seed": k}, sub, device=False)
                            for sub, k in replicate_seeds(s)]),
    Stage("align", "Permutation alignment (weight matching): lines and curves", _align, ("modes",)),
    Stage("paths", "Curve training vs AutoNEB between the same two modes", _paths, ("align",)),
    Stage("sightsee", "Loss-landscape sightseeing: a plane whose loss draws a picture", _sightsee, ("align",)),
    Stage("swa_modes", "SWA from each mode (for the width stage)", _swa_modes, ("modes",)),
    Stage("width", "Optimum width: SGD vs SWA along their line and random directions", _width, ("swa_modes",)),
]


# where each stage measures its phenomenon, and why (the report's "where each stage runs" section)
STAGE_DATA_WHY = {
    "modes": "--data (default the 8x8 digits): the loss-surface stages (curves, planes, simplexes, complex, "
             "dimension) need three modes of one architecture, and the digits train in seconds",
    "modes1d": "MNIST-1D (mnist1d package, generated locally, 4,000/1,000 signals): 1-D convnets reach 95-97.5%, "
               "not ~99%, so there are errors for ensembles and temperature scaling to act on, and the generator's "
               "own knobs give a shift that costs a large part of the accuracy",
    "connect1d": "MNIST-1D: on the digits two modes ensembled are no better than one (quick study: test error "
                 "1.7% vs 1.4%, NLL 0.050 vs 0.051), so the curve has no ensemble gain to reach",
    "budget": "MNIST-1D: on digits the networks are underconfident, so averaging probabilities raises NLL and "
              "the ensembles' NLL gain cannot show",
    "calibration": "MNIST-1D: on the digits every one of the 180 calibration images is classified correctly, "
                   "so no temperature can be fitted",
    "swag": "MNIST-1D (SWAG from each 1-D convnet: MultiSWAG for the shift)",
    "shift": "MNIST-1D with the generator's noise, shear, scale and translation turned up: on the digits "
             "Gaussian noise costs a single convnet about one point of accuracy (98.3% to 97.2%)",
    "vardrop": "a wide MLP on the digits (or --data when it is an MNIST-like image set)",
    "regression": "the synthetic 1-D regression toy", "spirals": "the synthetic two spirals",
    "regression_paths": "the regression stage's modes (the synthetic 1-D toy): the functions can be drawn",
}


def matmul_gflops(n: int = 512, seconds: float = 0.2, trials: int = 5, threads: int | None = None) -> float:
    """This machine's float32 matrix-multiply rate in GFLOP/s (n x n products, the median of `trials` windows of
    about `seconds` each, at `threads` torch threads, default this process's), printed beside the study's time
    so timings on different machines can be compared. One short window varies by a third from run to run on a
    shared 2-core machine; the median of five does not."""
    import statistics

    import torch

    from .utils import torch_threads

    with torch_threads(threads or torch.get_num_threads()):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        rates = []
        for _ in range(trials):
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                a @ b
                reps += 1
            rates.append(2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def run_stage(stage: Stage, settings: Settings, study: Path) -> None:
    """Every run of `stage`, in-process; finished runs are kept, interrupted ones continue. With the Ray
    executor the stage's `train` runs are trained at the same time as tasks across the cluster first, and
    every method that has an executor of its own gets the study's."""
    from .api import run
    from .utils import torch_threads

    d = study / stage.name
    jobs = stage.jobs(settings, study)
    if settings.executor != "local":
        _train_on_cluster(jobs, settings, d)
    for job in jobs:
        inputs = [str(p) for p in job.inputs] if job.inputs is not None else None
        device = {"device": settings.device} if job.device else {}
        with torch_threads(job.threads) if job.threads else contextlib.nullcontext():
            run(job.method, None, inputs, d / job.sub if job.sub else d, resume=True, quiet=settings.quiet,
                **device, **_executor_fields(job.method, settings), **job.config)


def _executor_fields(method: str, settings: Settings) -> dict:
    """The study's executor for a method whose Config has one (nothing with the local executor: those runs'
    configs stay as they were)."""
    import dataclasses

    from .api import method_module

    if settings.executor == "local":
        return {}
    names = {f.name for f in dataclasses.fields(method_module(method).Config)}
    return {"executor": settings.executor, "ray_address": settings.ray_address} if "executor" in names else {}


def _train_on_cluster(jobs: list[Job], settings: Settings, d: Path) -> None:
    """The stage's `train` runs that need no other run (the modes of several seeds), as tasks across the Ray
    cluster; this process writes their run directories (the figures follow in run_stage)."""
    from .api import method_module
    from .config import replace
    from .engine.executor import make_executor
    from .methods.ensemble import RunJob, run_jobs

    todo = []
    for job in jobs:
        if job.method == "train" and job.inputs is None:
            mod = method_module("train")
            device = {"device": settings.device} if job.device else {}
            todo.append(RunJob(mod.__name__, replace(mod.Config(), **device, **job.config), None,
                               d / job.sub if job.sub else d))
    if todo:
        for _ in run_jobs(todo, make_executor(settings.executor, settings.ray_address, device=settings.device),
                          quiet=settings.quiet):
            pass


def _stage_task(settings: Settings, study: str, stage: Stage | str) -> None:
    """A stage as a task: a Ray task on the driver's node (whose study directory it writes), or a worker
    process of --jobs (a stage of :data:`STAGES` travels by name: its job lists are lambdas)."""
    if isinstance(stage, str):
        stage = next(st for st in STAGES if st.name == stage)
    run_stage(stage, settings, Path(study))


def stage_slots(settings: Settings) -> tuple[int, int]:
    """(stages at the same time, torch threads of each) of a local study: --jobs, 0 = one stage per CPU core
    up to 4, the cores shared evenly between them."""
    import os

    cores = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    jobs = settings.jobs or min(4, cores)
    return jobs, max(1, cores // jobs)


def _stage_executor(settings: Settings):
    from .engine.executor import ProcessExecutor, make_executor

    if settings.executor != "local":
        return make_executor(settings.executor, settings.ray_address)
    return ProcessExecutor(*stage_slots(settings))


def _run_concurrently(planned: list[Stage], settings: Settings, study: Path, done_stage) -> None:
    """The `planned` stages as tasks (Ray tasks on this machine's node, or --jobs worker processes), each
    started as soon as the stages it needs (among the planned ones) are finished, at most one per slot of
    the executor at a time (a Ray stage task holds no CPU while it waits for the tasks it starts itself).
    `done_stage(stage, seconds)` records each stage as it finishes. A stage that fails stops new stages from
    starting; the running ones finish and are recorded, then its one-line error is raised."""
    from .utils import echo

    ex = _stage_executor(settings)
    names = {st.name for st in planned}
    task_settings = settings
    if ex.name == "processes":  # the driver prints the stages' lines; a worker's own output would interleave
        import dataclasses

        task_settings = dataclasses.replace(settings, quiet=True)
    waiting, running, finished, failure = list(planned), {}, set(), None
    try:
        while running or (waiting and failure is None):
            for st in list(waiting) if failure is None else []:
                if len(running) < ex.workers and all(dep not in names or dep in finished for dep in st.needs):
                    (study / st.name).mkdir(parents=True, exist_ok=True)
                    echo(f"{st.title:<48} started (with {len(running)} other stage(s) running)", settings.quiet)
                    item = st.name if st in STAGES else st
                    h = ex.submit(_stage_task, item, shared=(task_settings, str(study)), on_driver_node=True,
                                  label=f"study stage {st.name}", coordinator=True)
                    running[h] = (st, time.time())
                    waiting.remove(st)
            if not running:
                break
            try:
                h, _ = ex.wait(list(running))
            except LowlossError as e:
                if getattr(e, "handle", None) not in running:
                    raise
                running.pop(e.handle)
                failure = failure or e
                continue
            st, t0 = running.pop(h)
            finished.add(st.name)
            done_stage(st, time.time() - t0)
    except BaseException:  # Ctrl-C, or an error of the driver: stop the stages now (they resume on a re-run)
        ex.cancel(list(running))
        if hasattr(ex, "close"):
            ex.close(kill=True)
        raise
    ex.cancel(list(running))
    if hasattr(ex, "close"):
        ex.close()
    if failure is not None:
        raise failure


def _stage_record(marker: Path) -> dict | None:
    """A finished stage's stage.json; None when it is missing or damaged (the stage then runs again: its
    finished runs are kept, so only the damaged marker's work is redone)."""
    from .rundir import read_json_file

    if not marker.exists():
        return None
    try:
        return read_json_file(marker)
    except LowlossError:
        marker.unlink(missing_ok=True)
        return None


def run_study(out: str | Path, settings: Settings, only: list[str] | None = None) -> dict:
    """Run every stage not yet finished, then write summary.json, summary.md and report.html. Returns the
    summary."""
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
    gflops, gflops_1 = matmul_gflops(), matmul_gflops(threads=1)
    t_start = time.time()
    n = len(STAGES)
    planned: list[Stage] = []  # with Ray or --jobs > 1: the stages to run, started when their needs are done
    concurrent = settings.executor != "local" or stage_slots(settings)[0] > 1
    heads = {st.name: f"[{i:>2}/{n}] {st.title:<48}" for i, st in enumerate(STAGES, 1)}

    def done_stage(st: Stage, secs: float) -> None:
        write_json(study / st.name / STAGE_FILE, {"stage": st.name, "seconds": secs,
                                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        status[st.name] = {"status": "done", "seconds": secs}
        echo(f"{heads[st.name]} done in {secs:.1f}s", settings.quiet)

    for i, st in enumerate(STAGES, 1):
        d = study / st.name
        marker = d / STAGE_FILE
        head = f"[{i:>2}/{n}] {st.title:<48}"
        if only and st.name not in only:
            continue
        done = _stage_record(marker)
        if done is not None:
            status[st.name] = {**done, "status": "done (cached)"}
            echo(f"{head} cached ({status[st.name].get('seconds', 0):.1f}s when run)", settings.quiet)
            continue
        missing = [dep for dep in st.needs if not (study / dep / STAGE_FILE).exists()
                   and dep not in {p.name for p in planned}]
        if missing:
            status[st.name] = {"status": f"skipped (needs {', '.join(missing)})", "seconds": 0.0}
            echo(f"{head} skipped: needs {', '.join(missing)}", settings.quiet)
            continue
        if concurrent:
            planned.append(st)
            continue
        echo(f"{head} running ... (study time so far {time.time() - t_start:.0f}s)", settings.quiet)
        t0 = time.time()
        d.mkdir(parents=True, exist_ok=True)
        run_stage(st, settings, study)
        done_stage(st, time.time() - t0)
    if planned:
        _run_concurrently(planned, settings, study, done_stage)
        status = {st.name: status[st.name] for st in STAGES if st.name in status}
    from .claims import collect_claims

    claims = collect_claims(study, mode_dirs(study, settings))
    from .claims import HELD, VERDICTS

    total = time.time() - t_start
    machine = {"matmul_float32_gflops": gflops, "matmul_float32_gflops_1_thread": gflops_1,
               "torch_threads": _thread_count(),
               "stages_at_once": stage_slots(settings)[0] if settings.executor == "local" else "ray",
               "threads_per_stage": stage_slots(settings)[1] if concurrent else _thread_count()}
    summary = {"claims": [{k: c[k] for k in ("id", "statement", "measured", "threshold", "test", "held", "spread",
                                             "note")}
                          for c in claims],
               "verdicts": {v: sum(1 for c in claims if c["held"] == v) for v in VERDICTS},
               "config": cfg, "versions": versions(), "seeds": settings.seeds,
               "stage_seconds": {k: v.get("seconds", 0.0) for k, v in status.items()},
               "stage_data": {k: STAGE_DATA_WHY.get(k, "the modes' data (--data)") for k in status},
               "stages": status, "total_seconds": total, "machine": machine}
    write_json(study / "summary.json", summary)
    from .report import write_markdown, write_report

    held = sum(1 for c in claims if c["held"] == HELD)
    measured = sum(1 for c in claims if c["held"] is not None)
    noise = summary["verdicts"]["within noise"]
    cached = [k for k, v in status.items() if v.get("status") == "done (cached)"]
    cached_text = (f", {len(cached)} of {len(status)} stages cached from earlier runs" if cached else "")
    subtitle = (f"{held} of {measured} measured claims held beyond noise (margin > 2 SE of the paired difference), "
                f"{noise} within noise; seeds {settings.seeds}; {settings.size} settings; {total:.0f} s this run"
                f"{cached_text} ({_slots_text(machine)}) on a machine doing {gflops:.0f} GFLOP/s float32 matmul ({gflops_1:.0f} on "
                f"one thread); lowloss {versions()['lowloss']}, torch {versions()['torch']}")
    write_report(study / "report.html", title=f"lowloss study: {settings.model} on {settings.data}, "
                                              "uncertainty on MNIST-1D",
                 subtitle=subtitle,
                 claims=claims, base=study, stages=status, extra={"config": cfg, "versions": versions(),
                                                                  "machine": machine},
                 stage_data={k: STAGE_DATA_WHY.get(k, "the modes' data (--data)") for k in status})
    write_markdown(study / "summary.md", title=f"lowloss study: {settings.model} on {settings.data}, uncertainty on "
                                               "MNIST-1D", subtitle=subtitle, claims=claims)
    echo(f"study time {total:.0f}s ({_slots_text(machine)}); float32 matmul {gflops:.0f} GFLOP/s on "
         f"{machine['torch_threads']} thread(s), {gflops_1:.0f} on 1", settings.quiet)
    return summary


def _slots_text(machine: dict) -> str:
    at_once = machine.get("stages_at_once")
    if at_once == "ray":
        return "stages as Ray tasks"
    if not at_once or at_once == 1:
        return "one stage at a time"
    return f"{at_once} stages at a time, {machine.get('threads_per_stage')} thread(s) each"


def _thread_count() -> int:
    import torch

    return torch.get_num_threads()


def _command(out, quiet, **kw):
    """Run the whole study (modes, curves, planes, ensembles, simplexes, shift, variational dropout, ...)
    into --out, skipping finished stages, then write summary.json, summary.md and report.html."""
    from .cli import config_from_options

    settings = config_from_options(Settings, kw)
    settings.quiet = quiet
    summary = run_study(out, settings, only=list(settings.stages) or None)
    if not quiet:
        for c in summary["claims"]:
            mark = c["held"] or "n/a"
            click.echo(f"  [{mark:>12}] {c['statement']}")
        click.echo(f"report: {out}/report.html  summary: {out}/summary.json, {out}/summary.md")


def _build_command() -> click.Command:
    from .cli import config_options, out_option, quiet_option

    f = config_options(Settings)(out_option("runs/study")(quiet_option(_command)))
    return click.command(name="study", help=_command.__doc__)(f)


command = _build_command()
