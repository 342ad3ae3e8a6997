"""`lowloss study`: the papers' experiments as resumable stages, one run directory each, and a report.

Each stage runs lowloss commands in-process into DIR/<stage>/ and is marked finished by an atomic
DIR/<stage>/stage.json; a re-run skips finished stages, and an interrupted stage resumes from its own
checkpoints. After the stages, every claim of the papers is checked against the measured numbers and
written to DIR/summary.json (claims as data) and DIR/report.html (self-contained, figures embedded).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .utils import LowlossError, echo, read_json, versions, write_json

STAGE_FILE = "stage.json"


# every size knob of the study, per preset: "full" (under 30 min on 2 CPU cores for digits), "quick" (under 5),
# "tiny" (seconds; for tests of the pipeline only, numbers meaningless)
SIZES: dict[str, dict] = {
    "full": dict(mode_epochs=80, curve_epochs=20, grid=31, bn_subset=None, budget_seeds=3, swag_epochs=10,
                 espro_epochs=10, members=25, complex_epochs=8, dim_connectors=12, dim_epochs=5,
                 corruptions="all", shift_samples=30, vardrop_epochs=300, cswag_epochs=5, cswag_samples=10,
                 regression=[], spirals=[], budget=[]),
    "quick": dict(mode_epochs=12, curve_epochs=10, grid=15, bn_subset=512, budget_seeds=2, swag_epochs=5,
                  espro_epochs=3, members=10, complex_epochs=3, dim_connectors=5, dim_epochs=2,
                  corruptions="gaussian_noise", shift_samples=10, vardrop_epochs=60, cswag_epochs=3,
                  cswag_samples=5, regression=["--modes", 3, "--espro-modes", 2, "--epochs", 1000],
                  spirals=["--epochs", 1000, "--vertex-epochs", 60, "--grid", 100, "--members", 20], budget=[]),
    "tiny": dict(mode_epochs=4, curve_epochs=1, grid=4, bn_subset=128, budget_seeds=1, swag_epochs=1,
                 espro_epochs=1, members=2, complex_epochs=1, dim_connectors=2, dim_epochs=1,
                 corruptions="gaussian_noise", shift_samples=2, vardrop_epochs=1, cswag_epochs=1, cswag_samples=2,
                 regression=["--modes", 2, "--espro-modes", 1, "--epochs", 20, "--vertex-epochs", 2,
                             "--swag-epochs", 2, "--samples", 3],
                 spirals=["--epochs", 20, "--vertex-epochs", 1, "--grid", 20, "--members", 3, "--shown", 3],
                 budget=["--members-per-budget", 1, "--samples", 2]),
}


@dataclass
class Settings:
    data: str = "digits"
    model: str = "convnet"
    device: str = "auto"
    seed: int = 0
    size: str = "full"
    data_dir: str | None = None
    quiet: bool = False

    def __getattr__(self, name):  # size knobs: settings.mode_epochs, settings.grid, ...
        sizes = SIZES[self.__dict__.get("size", "full")]
        if name in sizes:
            return sizes[name]
        raise AttributeError(name)

    @property
    def quick(self) -> bool:
        return self.size != "full"

    @property
    def seeds(self) -> list[int]:
        return [self.seed, self.seed + 1, self.seed + 2]


def run_cli(args: list[str], quiet: bool) -> None:
    """Run a lowloss command in-process (errors propagate as exceptions)."""
    from .cli import cli

    argv = [str(a) for a in args] + (["--quiet"] if quiet else [])
    rc = cli.main(args=argv, standalone_mode=False, prog_name="lowloss")
    if isinstance(rc, int) and rc != 0:
        raise LowlossError(f"lowloss {' '.join(argv)} exited with {rc}")


@dataclass
class Stage:
    name: str
    title: str
    run: Callable[[Path, Settings, Path], None]  # (stage_dir, settings, study_dir)
    needs: tuple[str, ...] = ()
    optional_module: str | None = None  # a stage whose method module is missing is skipped, not failed


def _common(s: Settings) -> list[str]:
    out = ["--device", s.device]
    return out


def _bn(s: Settings) -> list:
    return ["--bn-subset", s.bn_subset] if s.bn_subset else []


def _data_args(s: Settings) -> list[str]:
    a = ["--data", s.data]
    if s.data_dir:
        a += ["--data-dir", s.data_dir]
    return a


def mode_dirs(study: Path, s: Settings) -> list[Path]:
    return [study / "modes" / f"seed{k}" for k in s.seeds]


def _stage_modes(d: Path, s: Settings, study: Path) -> None:
    for k, m in zip(s.seeds, mode_dirs(study, s)):
        resume = ["--resume"] if (m / "checkpoint.safetensors").exists() else []
        run_cli(["train", *_data_args(s), "--model", s.model, "--epochs", s.mode_epochs, "--seed", k,
                 "--out", m, *resume, *_common(s)], s.quiet)


def _stage_connect(kind: str):
    def run(d: Path, s: Settings, study: Path) -> None:
        a, b = mode_dirs(study, s)[:2]
        resume = ["--resume"] if (d / "checkpoint.safetensors").exists() else []
        run_cli(["connect", a, b, "--curve", kind, "--bends", 1 if kind == "bezier" else 2,
                 "--epochs", s.curve_epochs, "--out", d, "--seed", s.seed, *resume, *_common(s)], s.quiet)

    return run


def _stage_plane_modes(d: Path, s: Settings, study: Path) -> None:
    run_cli(["plane", *mode_dirs(study, s), "--grid", s.grid, *_bn(s), "--out", d, *_common(s)], s.quiet)


def _stage_plane_curve(d: Path, s: Settings, study: Path) -> None:
    run_cli(["plane", "--curve", study / "connect_bezier", "--grid", s.grid, *_bn(s), "--out", d, *_common(s)], s.quiet)


def _resume(d: Path) -> list[str]:
    """--resume when the stage directory holds any partial work (checkpoints, finished sub-runs)."""
    return ["--resume"] if d.exists() and any(d.iterdir()) else []


def _stage_budget(d: Path, s: Settings, study: Path) -> None:
    run_cli(["budget", *_data_args(s), "--model", s.model, "--budgets", 1, "--seeds", s.budget_seeds, *s.budget,
             "--epochs", s.mode_epochs, "--seed", s.seed, "--out", d, *_common(s)], s.quiet)


def _stage_swag(d: Path, s: Settings, study: Path) -> None:
    for k, m in zip(s.seeds, mode_dirs(study, s)):
        sub = d / f"seed{k}"
        run_cli(["swag", m, "--epochs", s.swag_epochs, "--seed", k, "--out", sub, *_resume(sub),
                 *_common(s)], s.quiet)


def _stage_espro(d: Path, s: Settings, study: Path) -> None:
    run_cli(["espro", *mode_dirs(study, s), "--vertices", 3, "--epochs-per-vertex", s.espro_epochs,
             "--members", s.members, "--seed", s.seed, "--out", d, *_resume(d), *_common(s)], s.quiet)


def _stage_complex(d: Path, s: Settings, study: Path) -> None:
    run_cli(["complex", *mode_dirs(study, s)[:2], "--connectors", 2, "--epochs-per-vertex", s.complex_epochs,
             "--seed", s.seed, "--out", d, *_resume(d), *_common(s)], s.quiet)


def _stage_dimension(d: Path, s: Settings, study: Path) -> None:
    run_cli(["dimension", *mode_dirs(study, s)[:2], "--max-connectors", s.dim_connectors,
             "--epochs-per-vertex", s.dim_epochs, "--seed", s.seed, "--out", d, *_resume(d), *_common(s)],
            s.quiet)


def _stage_calibration(d: Path, s: Settings, study: Path) -> None:
    run_cli(["calibrate", *mode_dirs(study, s), "--out", d, *_common(s)], s.quiet)


def _stage_shift(d: Path, s: Settings, study: Path) -> None:
    extra = []
    if (study / "espro" / STAGE_FILE).exists():
        extra += ["--espro", study / "espro"]
    if (study / "swag" / STAGE_FILE).exists():
        extra += [a for m in mode_dirs(study, s) for a in ("--swag", study / "swag" / m.name)]
    run_cli(["shift", *mode_dirs(study, s), *extra, "--corruptions",
             s.corruptions, "--severities", "1-5",
             "--samples", s.shift_samples, "--out", d, *_common(s)], s.quiet)


def _stage_vardrop(d: Path, s: Settings, study: Path) -> None:
    # the slides' setting is LeNet-5 on MNIST for 200 epochs; on the embedded digits a wide MLP trained with Adam
    # at lr 1e-2 shows the phenomenon in a few minutes of CPU: its last hidden layer is the variance layer (the
    # default --variance-layers), so every bit of information reaches the output through variances
    data = s.data if s.data in ("digits", "mnist5k", "mnist", "fashion-mnist") else "digits"
    run_cli(["vardrop", "--data", data, "--model", "mlp", "--model-opt", "widths=512,512",
             "--posterior", "dropout,variance", "--lr", 0.01, "--epochs", s.vardrop_epochs,
             "--seed", s.seed, "--out", d, *_resume(d), *_common(s)], s.quiet)


def _stage_regression(d: Path, s: Settings, study: Path) -> None:
    run_cli(["regression", "--method", "ensemble", "--method", "swag", "--method", "espro", *s.regression, "--seed", s.seed,
             "--out", d, *_common(s)], s.quiet)


def _stage_curve_swag(d: Path, s: Settings, study: Path) -> None:
    run_cli(["swag", "--curve", study / "connect_bezier", "--epochs", s.cswag_epochs, "--lr", 0.01,
             "--samples", s.cswag_samples, "--points", 11, "--seed", s.seed, "--out", d, *_resume(d),
             *_common(s)], s.quiet)


def _stage_spirals(d: Path, s: Settings, study: Path) -> None:
    run_cli(["spirals", *s.spirals, "--seed", s.seed, "--out", d, *_common(s)], s.quiet)


STAGES: list[Stage] = [
    Stage("modes", "Train three independent modes", _stage_modes),
    Stage("connect_bezier", "Connect two modes with a Bezier curve", _stage_connect("bezier"), ("modes",),
          "lowloss.methods.connect"),
    Stage("connect_polychain", "Connect two modes with a polygonal chain", _stage_connect("polychain"), ("modes",),
          "lowloss.methods.connect"),
    Stage("plane_modes", "Loss plane through three modes", _stage_plane_modes, ("modes",), "lowloss.methods.plane"),
    Stage("plane_curve", "Loss plane through the Bezier curve", _stage_plane_curve, ("connect_bezier",),
          "lowloss.methods.plane"),
    Stage("budget", "FGE, SSE, SWA, SWAG, MultiSWAG, deep ensembles at equal budget", _stage_budget, (),
          "lowloss.methods.budget"),
    Stage("curve_swag", "SWAG over the Bezier curve's bend", _stage_curve_swag, ("connect_bezier",),
          "lowloss.methods.swag"),
    Stage("swag", "SWAG from each mode (MultiSWAG)", _stage_swag, ("modes",), "lowloss.methods.swag"),
    Stage("espro", "ESPRO simplexes from each mode vs the deep ensemble", _stage_espro, ("modes",),
          "lowloss.methods.spro"),
    Stage("complex", "A mode-connecting simplicial complex (SPRO)", _stage_complex, ("modes",), "lowloss.methods.spro"),
    Stage("dimension", "Dimensionality of the low-loss valley", _stage_dimension, ("modes",), "lowloss.methods.spro"),
    Stage("calibration", "Calibration and temperature scaling", _stage_calibration, ("modes",),
          "lowloss.methods.calibration"),
    Stage("shift", "Dataset shift (corrupted test images)", _stage_shift, ("modes",), "lowloss.methods.shift"),
    Stage("vardrop", "Variational dropout vs variance networks", _stage_vardrop, (), "lowloss.methods.vardrop"),
    Stage("regression", "1-D regression uncertainty bands", _stage_regression, (), "lowloss.methods.regression"),
    Stage("spirals", "Two spirals: functional diversity in a simplex", _stage_spirals, (), "lowloss.methods.spirals"),
]


def _module_available(name: str | None) -> bool:
    import importlib.util

    return name is None or importlib.util.find_spec(name) is not None


def run_study(out: str | Path, settings: Settings, only: list[str] | None = None) -> dict:
    """Run every stage not yet finished, then write summary.json and report.html. Returns the summary."""
    study = Path(out)
    study.mkdir(parents=True, exist_ok=True)
    cfg_path = study / "study_config.json"
    cfg = {"data": settings.data, "model": settings.model, "seed": settings.seed, "size": settings.size,
           "data_dir": settings.data_dir}
    if cfg_path.exists() and read_json(cfg_path) != cfg:
        raise LowlossError(f"{study} holds a study with another configuration ({read_json(cfg_path)}); "
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
            status[st.name] = {**read_json(marker), "status": "done (cached)"}
            echo(f"{head} cached ({status[st.name].get('seconds', 0):.1f}s when run)", settings.quiet)
            continue
        if not _module_available(st.optional_module):
            status[st.name] = {"status": "skipped (method not installed)", "seconds": 0.0}
            echo(f"{head} skipped: {st.optional_module} not available", settings.quiet)
            continue
        missing = [dep for dep in st.needs if not (study / dep / STAGE_FILE).exists()]
        if missing:
            status[st.name] = {"status": f"skipped (needs {', '.join(missing)})", "seconds": 0.0}
            echo(f"{head} skipped: needs {', '.join(missing)}", settings.quiet)
            continue
        echo(f"{head} running ... (study time so far {time.time() - t_start:.0f}s)", settings.quiet)
        t0 = time.time()
        d.mkdir(parents=True, exist_ok=True)
        st.run(d, settings, study)
        secs = time.time() - t0
        write_json(marker, {"stage": st.name, "seconds": secs, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        status[st.name] = {"status": "done", "seconds": secs}
        echo(f"{head} done in {secs:.1f}s", settings.quiet)
    from .claims import collect_claims

    claims = collect_claims(study, settings)
    summary = {"claims": [{k: c[k] for k in ("id", "statement", "measured", "held")} for c in claims],
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


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
