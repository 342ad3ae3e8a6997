"""Connect the modes RUNS (fixed) through connectors trained one at a time (SPRO); loss and error per simplex.

By default every mode forms a simplex with all --connectors connectors (vertices len(RUNS) ..
len(RUNS)+M-1), as in the paper's figures; --simplex I,J,K (repeatable) gives the structure instead.
Each connector starts at the mean of the vertices before it and minimises the expected loss over the
complex minus lambda_i log(Vol^2 + 1e-4).

Writes OUT/simplex.safetensors (modes and connectors), OUT/structure.npz and OUT/structure.png, and
OUT/run.json: log_volume after each connector, simplex_log_volumes, the modes' test metrics and, per
simplex, train/test loss and error of --eval-samples sampled models. --resume continues an interrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import option, require
from ..engine.evaluate import evaluate_vectors
from ..errors import LowlossError
from ..rundir import RunDir, load_runs, read_result
from .spro import (
    PROGRESS_FILE,
    SIMPLEX_FILE,
    STRUCTURE_FILE,
    ConnectingSproConfig,
    SproConfig,
    grow_complex,
    load_complex,
    mode_connector_structure,
    mode_metrics,
    sample_vectors,
    save_complex,
    save_structure,
    spro_fields,
)

INPUTS = {"metavar": "RUNS", "nargs": -1}


def parse_simplexes(value) -> tuple[tuple[int, ...], ...]:
    """``("0,2,3", "1,2,3")`` (or lists of indices) -> ``((0, 2, 3), (1, 2, 3))``."""
    out = []
    for s in value or ():
        if isinstance(s, str):
            try:
                s = [int(t) for t in s.replace(" ", "").split(",") if t]
            except ValueError:
                raise LowlossError(f"--simplex '{s}' is not a comma-separated list of vertex indices "
                                 "(e.g. 0,2,3)") from None
        out.append(tuple(int(i) for i in s))
    return tuple(out)


@dataclass
class Config(ConnectingSproConfig):
    """A simplicial complex of low loss connecting several modes."""

    connectors: int = option(3, "Connecting points trained one at a time (vertices len(RUNS) .. len(RUNS)+M-1).")
    simplexes: tuple = option((), "A simplex of the complex as vertex indices (modes first, then connectors); "
                                  "repeatable. Default: each mode with all connectors, as in the paper's figures.",
                              flag="--simplex", metavar="I,J,K", multiple=True, parse=parse_simplexes)
    eval_samples: int = option(10, "Sampled models per simplex for the reported loss and error.")
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        super().check()
        self.simplexes = parse_simplexes(self.simplexes)
        require(self.connectors >= 1, f"--connectors must be at least 1 (got {self.connectors})")
        require(self.eval_samples >= 1, f"--eval-samples must be at least 1 (got {self.eval_samples})")
        for s in self.simplexes:
            require(len(s) >= 2 and len(set(s)) == len(s) and min(s) >= 0,
                    f"--simplex {','.join(map(str, s))} must name at least two different vertex indices >= 0")


def structure_of(config: Config, num_modes: int) -> list[tuple[int, ...]]:
    """The complex's simplexes over num_modes + connectors vertices (checked against that range)."""
    structure = list(parse_simplexes(config.simplexes)) or mode_connector_structure(num_modes, config.connectors)
    n = num_modes + config.connectors
    for s in structure:
        require(max(s) < n, f"simplex {list(s)} refers to a vertex outside 0..{n - 1} (modes 0..{num_modes - 1}, "
                            f"connectors {num_modes}..{n - 1})")
    return structure


def check_inputs(config: Config, inputs) -> None:
    """At least two modes, and every --simplex within the modes and connectors."""
    require(len(inputs or ()) >= 2, f"a mode-connecting complex needs at least two runs (got {len(inputs or ())})")
    structure_of(config, len(inputs))


def per_simplex_eval(model, cplx, data, n: int, seed: int, quiet: bool) -> list[dict]:
    """Train/test loss and error of n sampled models of every simplex of the complex."""
    out = []
    for s in range(len(cplx.simplexes)):
        vecs = sample_vectors(cplx, n, torch.Generator().manual_seed(seed * 31 + s), simplex=s)
        res = evaluate_vectors(model, vecs, data, splits=("train", "test"), quiet=quiet)
        out.append({"simplex": list(cplx.simplexes[s]),
                    "train_loss": res["train_loss"].tolist(), "train_error": res["train_error"].tolist(),
                    "test_loss": res["test_loss"].tolist(), "test_error": res["test_error"].tolist(),
                    "mean": {k: float(res[k].mean()) for k in ("train_loss", "train_error", "test_loss", "test_error")}})
    return out


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """Grow the connectors and evaluate every simplex. Returns run.json's contents."""
    config.check()
    check_inputs(config, inputs)
    structure = structure_of(config, len(inputs))
    runs = load_runs(inputs, device=config.device)
    model, data = runs[0].model, runs[0].data
    grown = grow_complex(model, data, [r.vector for r in runs], structure, config.connectors,
                         SproConfig(**spro_fields(config)), seed=config.seed, out=run_dir.path,
                         resume=run_dir.resuming, quiet=quiet, desc="complex")
    cplx = grown.complex
    save_complex(run_dir.file(SIMPLEX_FILE), cplx, inputs)
    save_structure(run_dir.file(STRUCTURE_FILE), cplx)
    with torch.no_grad():
        lvs = cplx.log_volumes().tolist()
    return run_dir.finish({"log_volume": [lg["log_volume"] for lg in grown.logs], "simplex_log_volumes": lvs,
                           "modes": [mode_metrics(r) for r in runs],
                           "simplexes": per_simplex_eval(model, cplx, data, config.eval_samples, config.seed, quiet),
                           "vertex_logs": grown.logs}, remove=(PROGRESS_FILE,))


def summary(result: dict) -> str:
    lines = [f"{len(result['modes'])} modes, {result['config']['connectors']} connectors"]
    for s, lv in zip(result["simplexes"], result["simplex_log_volumes"]):
        m = s["mean"]
        lines.append(f"  simplex {s['simplex']}: log-volume {lv:.2f}  train loss {m['train_loss']:.4f} "
                     f"err {100 * m['train_error']:.2f}%  test loss {m['test_loss']:.4f} "
                     f"err {100 * m['test_error']:.2f}%")
    return "\n".join(lines)


def load(path: str | Path, device=None):
    """The complex of a finished complex run: (:class:`~lowloss.subspaces.simplex.Complex`, the first mode's
    :class:`~lowloss.rundir.Run`, whose module and data the vertices belong to)."""
    read_result(path, "complex", needs=(SIMPLEX_FILE,))
    return load_complex(path, device=device)


__all__ = ["Config", "INPUTS", "check_inputs", "fit", "load", "parse_simplexes", "per_simplex_eval", "structure_of", "summary"]
