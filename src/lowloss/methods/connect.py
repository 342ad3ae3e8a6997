"""Mode connectivity (Garipov et al. 2018): train a curve between two networks, then walk along it.

    l(theta) = E_{t ~ U(0,1)} L(phi_theta(t))  [+ wd/2 ||phi_theta(t)||^2]

:func:`connect` trains the bends of a Bezier curve or polygonal chain between two parameter vectors of
any ``nn.Module`` (through :func:`lowloss.engine.fit.fit_subspace`: one t per minibatch, or the batch
split among ``t_per_batch`` values; BatchNorm in train mode; weight decay on phi(t); endpoints fixed
unless ``free_endpoints``), then evaluates the curve AND the line segment at ``points`` equally spaced t
with the shared engine (:func:`lowloss.engine.evaluate.evaluate_vectors`, BN statistics recomputed per point):
train/test loss and error, plus the error and NLL of the two-model ensemble {w_A, phi(t)}.

With ``out`` it writes a run directory: ``curve.safetensors`` (the control points), ``curve.json`` (the
evaluation, see :func:`connect`), ``curve.png`` and ``ensemble.png``; an interrupted run (training or
evaluation) continues with ``resume=True``. :func:`load_curve` opens such a directory again.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import metrics as M
from ..data import Dataset
from ..engine.evaluate import evaluate_vectors
from ..engine.train import Trainer
from ..params import Forward, flatten, has_batchnorm, num_params
from ..subspaces.curves import CURVES, Curve, Line, curve_class, make_curve
from ..utils import LowlossError, echo, progress, read_json, seed_everything, versions, write_json
from ..engine.fit import FitConfig, fit_subspace

CURVE_FILE = "curve.safetensors"
RESULT_FILE = "curve.json"
CONFIG_FILE = "config.json"
PARTIAL_FILE = "curve_eval.partial.json"
PATH_KEYS = ("train_loss", "train_error", "test_loss", "test_error", "ensemble_test_error", "ensemble_test_nll")


@dataclass
class ConnectConfig:
    """Settings of one curve fit. Defaults measured on digits (convnet and mlp modes of `lowloss train`)."""

    curve: str = "bezier"
    bends: int = 1
    epochs: int = 20
    lr: float = 0.1
    momentum: float = 0.9
    wd: float = 5e-4
    batch_size: int = 64
    schedule: str = "curve"
    t_per_batch: int = 1
    points: int = 61
    free_endpoints: bool = False
    seed: int = 0
    bn_subset: int | None = None

    def check(self) -> None:
        if self.curve not in CURVES or self.curve == "line":
            raise LowlossError(f"--curve must be bezier or polychain (got '{self.curve}'); the line is always "
                               "evaluated as the baseline")
        if self.bends < 1:
            raise LowlossError(f"--bends must be >= 1 (got {self.bends})")
        if self.points < 2:
            raise LowlossError(f"--points must be >= 2 so that both endpoints are evaluated (got {self.points})")
        if self.t_per_batch < 1 or self.t_per_batch > self.batch_size:
            raise LowlossError(f"--t-per-batch must be between 1 and the batch size {self.batch_size} "
                               f"(got {self.t_per_batch})")
        if self.epochs < 0:
            raise LowlossError(f"--epochs must be >= 0 (got {self.epochs})")


@dataclass
class ConnectResult:
    """What :func:`connect` returns: the trained curve, the line baseline and the evaluation (curve.json)."""

    curve: Curve
    line: Line
    evaluation: dict
    history: list = field(default_factory=list)
    out: Path | None = None

    @property
    def summary(self) -> dict:
        return self.evaluation["summary"]


# ------------------------------------------------------------------------------------------ user data
class DataLoaderSplit:
    """A user's ``torch.utils.data.DataLoader`` seen as a lowloss split.

    The loader's own batch size, order and transforms are used (lowloss' ``batch_size``/shuffling do not
    apply); batches are ``(x, y, ...)`` tuples and are moved to the requested device.
    """

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader.dataset)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return len(self.loader)

    def subset(self, n: int, seed: int = 0):
        return self

    def to(self, device):
        return self

    def batches(self, batch_size: int, *, shuffle: bool = False, generator=None, device=None, augment: bool = False,
                drop_last: bool = False):
        for batch in self.loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise LowlossError("the DataLoader must yield (inputs, targets) pairs")
            x, y = batch[0], batch[1]
            if device is not None:
                x, y = x.to(device), y.to(device)
            yield x, y


def as_dataset(data, test=None, num_classes: int | None = None) -> Dataset:
    """A lowloss Dataset from a Dataset, a (train_loader, test_loader) pair, or a train DataLoader (+ `test`)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and test is None:
        data, test = data
    if not isinstance(data, torch.utils.data.DataLoader):
        raise LowlossError("data must be a lowloss Dataset (lowloss.load_dataset), a torch DataLoader, or a "
                           f"(train_loader, test_loader) pair; got {type(data).__name__}")
    if test is None:
        raise LowlossError("pass the test DataLoader too (test=... or data=(train_loader, test_loader)): the "
                           "path is evaluated on train and test data")
    x0, y0 = next(iter(data))[:2]
    if num_classes is None:
        if y0.dtype.is_floating_point:
            raise LowlossError("connect needs classification targets (integer labels); got float targets")
        num_classes = int(max(int(b[1].max()) for b in data)) + 1
    return Dataset("user", DataLoaderSplit(data), DataLoaderSplit(test), tuple(x0.shape[1:]), int(num_classes),
                   meta={"source": "user DataLoader"})


def _as_vector(w, model: nn.Module, name: str) -> torch.Tensor:
    if isinstance(w, nn.Module):
        w = flatten(w)
    if not isinstance(w, torch.Tensor):
        raise LowlossError(f"{name} must be a flat parameter vector (lowloss.flatten(model)) or an nn.Module")
    w = w.detach().reshape(-1)
    p = num_params(model)
    if w.numel() != p:
        raise LowlossError(f"{name} has {w.numel()} entries but the model has {p} trainable parameters: the "
                           "endpoints must come from the model's architecture")
    dev = next((q.device for q in model.parameters()), w.device)
    return w.to(device=dev, dtype=next(model.parameters()).dtype)


# ------------------------------------------------------------------------------------------ metrics
def barrier(t, losses) -> float:
    """max_t [L(t) - ((1-t) L(0) + t L(1))]: the height of the path above the chord between its ends."""
    t = torch.as_tensor(t, dtype=torch.float64)
    loss = torch.as_tensor(losses, dtype=torch.float64)
    chord = (1 - t) * loss[0] + t * loss[-1]
    return float((loss - chord).max())


def path_summary(t, res: dict) -> dict:
    return {"max_train_loss": float(max(res["train_loss"])), "max_test_error": float(max(res["test_error"])),
            "barrier": barrier(t, res["train_loss"])}


def _chunk_size(p: int, k: int) -> int:
    """Points per call of the engine: all of them for small models, fewer when [K, P] would be large."""
    return max(1, min(k, (256 * 2**20) // max(4 * p, 1), 64))


def evaluate_path(model: nn.Module, path: Curve, t: torch.Tensor, data: Dataset, probs_a: torch.Tensor,
                  labels: torch.Tensor, *, done: dict | None = None, on_chunk=None, bar=None,
                  bn_subset: int | None = None, forward: Forward | None = None) -> dict:
    """Train/test loss and error at each t (BN recomputed per point) and the {w_A, phi(t)} ensemble.

    `done` holds lists already computed (resumed evaluation); `on_chunk(res)` is called after each chunk.
    """
    res = {k: list((done or {}).get(k, [])) for k in PATH_KEYS}
    start = len(res["train_loss"])
    chunk = _chunk_size(path.control(0).numel(), len(t))
    for s in range(start, len(t), chunk):
        with torch.no_grad():
            vecs = path.points(t[s:s + chunk, None].to(path.device)).detach()
        r = evaluate_vectors(model, vecs, data, return_probs=("test",), bn_subset=bn_subset, forward=forward)
        for k in ("train_loss", "train_error", "test_loss", "test_error"):
            res[k].extend(float(v) for v in r[k])
        for pk in r["probs"]["test"]:
            ens = (probs_a + pk.double()) / 2  # the ensemble averages probabilities
            res["ensemble_test_error"].append(1.0 - M.accuracy(ens, labels))
            res["ensemble_test_nll"].append(M.nll(ens, labels))
        if bar is not None:
            bar.update(len(vecs))
        if on_chunk is not None:
            on_chunk(res)
    return res


# ------------------------------------------------------------------------------------------ API
def connect(model: nn.Module, w_a, w_b, data, *, curve: str = "bezier", bends: int = 1,
            epochs: int = ConnectConfig.epochs, lr: float = ConnectConfig.lr, wd: float = ConnectConfig.wd,
            momentum: float = ConnectConfig.momentum, batch_size: int = ConnectConfig.batch_size,
            schedule: str = ConnectConfig.schedule, t_per_batch: int = 1, points: int = ConnectConfig.points,
            free_endpoints: bool = False, seed: int = 0, bn_subset: int | None = None, out=None,
            resume: bool = False, quiet: bool = False, forward: Forward | None = None, test=None,
            num_classes: int | None = None, runs=None, plots: bool = True, evaluate: bool = True) -> ConnectResult:
    """Train a curve from `w_a` to `w_b` on `data` and evaluate it against the line segment.

    `model` is any ``nn.Module`` (never modified); `w_a`, `w_b` are flat parameter vectors
    (``lowloss.flatten(net)``) or modules of the same architecture. `data` is a lowloss Dataset, a
    ``(train_loader, test_loader)`` pair, or a train DataLoader with `test=` (classification). `forward`
    customises the call for models that do not take ``model(x)``.

    Returns a :class:`ConnectResult`. ``result.evaluation`` (also ``out/curve.json``) has ``t``; for
    ``curve`` and ``line`` the lists train_loss, train_error, test_loss, test_error, ensemble_test_error,
    ensemble_test_nll ({w_A, phi(t)}, mean of probabilities); ``summary`` per path (max_train_loss,
    max_test_error, barrier on the train loss); ``endpoint_ensemble`` ({w_A, w_B}); ``endpoints``;
    ``config``, ``versions``, ``timing``, ``history``. Errors are fractions, losses mean NLL.
    """
    cfg = ConnectConfig(curve=curve, bends=bends, epochs=epochs, lr=lr, momentum=momentum, wd=wd,
                        batch_size=batch_size, schedule=schedule, t_per_batch=t_per_batch, points=points,
                        free_endpoints=free_endpoints, seed=seed, bn_subset=bn_subset)
    cfg.check()
    data = as_dataset(data, test, num_classes)
    if data.num_classes <= 0:
        raise LowlossError("connect evaluates classifiers (loss = cross-entropy, error = 1 - accuracy); "
                           f"the data '{data.name}' is a regression task")
    w_a, w_b = _as_vector(w_a, model, "w_a"), _as_vector(w_b, model, "w_b")
    device = w_a.device
    data = data.to(device)
    runs = [str(r) for r in (runs or [])]
    record = {**asdict(cfg), "runs": runs}

    out = Path(out) if out is not None else None
    if out is not None:
        finished = _check_out(out, record, resume)
        if finished is not None:
            echo(f"{out} is already finished; nothing to do", quiet)
            return finished
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG_FILE, record)

    gen = seed_everything(seed)
    path = make_curve(curve, w_a, w_b, bends, fix_endpoints=not free_endpoints)
    fit = FitConfig(epochs=epochs, lr=lr, momentum=momentum, wd=wd, batch_size=batch_size, schedule=schedule,
                    coords_per_batch=t_per_batch)
    t0 = time.time()
    history = fit_subspace(model, path, data, fit, generator=gen, run_dir=out, resume=resume, quiet=quiet,
                           desc=f"connect {out.name if out else curve}", device=device, forward=forward)
    train_seconds = time.time() - t0
    if out is not None:
        save_curve(out / CURVE_FILE, path, runs, free_endpoints)
    line = Line(w_a, w_b)
    if not evaluate:
        return ConnectResult(path, line, {}, history, out)

    t1 = time.time()
    evaluation = _evaluate(model, path, line, data, cfg, out, resume, quiet, forward)
    evaluation.update({"config": record, "runs": runs, "versions": versions(), "history": history,
                       "num_params": int(w_a.numel()), "data": data.describe(),
                       "timing": {"train_seconds": train_seconds, "eval_seconds": time.time() - t1,
                                  "points_evaluated": 2 * cfg.points + 2}})
    if out is not None:
        write_json(out / RESULT_FILE, evaluation)
        (out / PARTIAL_FILE).unlink(missing_ok=True)
        (out / Trainer.CKPT).unlink(missing_ok=True)
        if plots:
            from ..plots.curves import plot_curve, plot_ensemble

            plot_curve(evaluation, out / "curve.png")
            plot_ensemble(evaluation, out / "ensemble.png")
    return ConnectResult(path, line, evaluation, history, out)


def _evaluate(model, path, line, data, cfg: ConnectConfig, out: Path | None, resume: bool, quiet: bool,
              forward) -> dict:
    """Endpoints, then the curve and the line at cfg.points values of t; resumable through a partial file."""
    t = torch.linspace(0, 1, cfg.points, dtype=torch.float64)
    partial = {}
    if out is not None and resume and (out / PARTIAL_FILE).exists():
        partial = read_json(out / PARTIAL_FILE)
    total = 2 + 2 * cfg.points
    bar = progress(total=total, desc="evaluate path", quiet=quiet, unit="pt")
    try:
        ends = evaluate_vectors(model, torch.stack([line.control(0), line.control(1)]), data,
                                return_probs=("test",), bn_subset=cfg.bn_subset, forward=forward)
        bar.update(2)
        probs_a, probs_b = (p.double() for p in ends["probs"]["test"])
        labels = ends["labels"]["test"]
        pair = (probs_a + probs_b) / 2
        endpoints = {name: {k: float(ends[k][i]) for k in ("train_loss", "train_error", "test_loss", "test_error")}
                     for i, name in enumerate(("w_a", "w_b"))}
        result = {"t": t.tolist()}

        def save_partial(name):
            def f(res):
                if out is not None:
                    write_json(out / PARTIAL_FILE, {**{k: v for k, v in result.items() if k != "t"}, name: res})
            return f

        for name, p in (("curve", path), ("line", line)):
            done = partial.get(name)
            if done:
                bar.update(len(done["train_loss"]))
            result[name] = evaluate_path(model, p, t, data, probs_a, labels, done=done, on_chunk=save_partial(name),
                                         bar=bar, bn_subset=cfg.bn_subset, forward=forward)
    finally:
        bar.close()
    result["summary"] = {name: path_summary(t, result[name]) for name in ("curve", "line")}
    result["endpoint_ensemble"] = {"test_error": 1.0 - M.accuracy(pair, labels), "test_nll": M.nll(pair, labels)}
    result["endpoints"] = endpoints
    result["bn"] = ({"recomputed": True, "subset": cfg.bn_subset or "all training data"}
                    if has_batchnorm(model)
                    else {"recomputed": False})
    return result


def _check_out(out: Path, record: dict, resume: bool) -> ConnectResult | None:
    """The finished result when `out` already holds this run; an error when it holds another one."""
    if (out / RESULT_FILE).exists() and (out / CURVE_FILE).exists():
        info = read_json(out / RESULT_FILE)
        if _same(info.get("config"), record) or resume:
            curve, _ = _load_controls(out)
            ends = [curve.control(0), curve.control(curve.num_controls - 1)]
            return ConnectResult(curve, Line(*ends), info, info.get("history", []), out)
        raise LowlossError(f"{out} already holds a finished curve with another config; choose a new --out")
    busy = (out / Trainer.CKPT).exists() or (out / PARTIAL_FILE).exists()
    if busy and not resume:
        raise LowlossError(f"{out} holds an interrupted connect run: continue it with --resume or choose a new --out")
    if resume and (out / CONFIG_FILE).exists() and not _same(read_json(out / CONFIG_FILE), record):
        raise LowlossError(f"--resume with a different config than the interrupted run in {out} "
                           f"(it was {read_json(out / CONFIG_FILE)})")
    return None


def _same(a, b) -> bool:
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


# ------------------------------------------------------------------------------------------ files
def save_curve(path: Path, curve: Curve, runs, free_endpoints: bool = False) -> None:
    """control_0..control_{n-1} as flat [P] float32 vectors; metadata curve, num_bends, runs (JSON list)."""
    from ..rundir import save_tensors as save_state

    tensors = {f"control_{i}": curve.control(i).detach().float() for i in range(curve.num_controls)}
    save_state(path, tensors, {"curve": curve.kind, "num_bends": str(curve.num_bends), "runs": json.dumps(runs),
                               "free_endpoints": json.dumps(bool(free_endpoints))})


def _load_controls(directory: Path, device=None) -> tuple[Curve, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    f = Path(directory) / CURVE_FILE
    if not f.exists():
        hint = (" (training was interrupted: finish it with lowloss connect --resume)"
                if (Path(directory) / Trainer.CKPT).exists() else "")
        raise LowlossError(f"{directory} has no {CURVE_FILE}: it is not a finished `lowloss connect` run{hint}")
    with safe_open(str(f), "pt") as fh:
        meta = fh.metadata() or {}
    tensors = load_file(str(f), device=str(device) if device is not None else "cpu")
    n = int(meta.get("num_bends", len(tensors) - 2)) + 2
    try:
        controls = [tensors[f"control_{i}"] for i in range(n)]
    except KeyError as e:
        raise LowlossError(f"{f} lacks {e}: it was not written by lowloss connect") from None
    kind = meta.get("curve", "bezier")
    free = json.loads(meta.get("free_endpoints", "false"))
    if kind == "line":
        curve = Line(controls[0], controls[-1])
    else:
        curve = curve_class(kind)(controls, [free] + [True] * (n - 2) + [free])
    return curve, meta


def load_curve(directory, device=None):
    """Open a `lowloss connect` directory: (the trained curve as a subspace, the Run of RUN_A).

    The curve's controls are on the run's device; the Run gives the module, the data and w_A.
    """
    from ..rundir import load_run

    directory = Path(directory)
    curve, meta = _load_controls(directory)
    runs = json.loads(meta.get("runs", "[]"))
    if not runs:
        raise LowlossError(f"{directory / CURVE_FILE} records no run directories (it was made with the Python API "
                           "on a user model): load the controls with lowloss.methods.connect.load_controls")
    run_a = _find_run(runs[0], directory)
    run = load_run(run_a, device=device)
    if run.vector.numel() != curve.control(0).numel():
        raise LowlossError(f"{run_a} has {run.vector.numel()} parameters but the curve in {directory} has "
                           f"{curve.control(0).numel()}: the run directory was replaced")
    return curve.to(run.vector.device), run


def load_controls(directory, device=None) -> Curve:
    """Just the curve of a `lowloss connect` directory (no run needed)."""
    return _load_controls(Path(directory), device)[0]


def _find_run(p: str, directory: Path) -> Path:
    """A recorded run path: as recorded, else next to the curve directory (a moved project tree)."""
    cands = [Path(p), directory.parent / Path(p).name, directory / Path(p).name]
    for c in cands:
        if (c / "run.json").exists():
            return c
    raise LowlossError(f"the curve in {directory} was trained between runs {p} ...; that run directory is gone "
                       f"(looked in {', '.join(str(c) for c in cands)})")


# ------------------------------------------------------------------------------------------ runs
def connect_runs(run_a, run_b, *, out, device=None, resume: bool = False, quiet: bool = False,
                 **kw) -> ConnectResult:
    """`lowloss connect RUN_A RUN_B`: load two finished runs (same architecture and data) and connect them."""
    from ..rundir import load_runs

    runs = load_runs([run_a, run_b], device=device)
    a, b = runs
    if torch.equal(a.vector, b.vector):
        raise LowlossError(f"{run_a} and {run_b} hold identical weights: connect two different modes "
                           "(e.g. lowloss train --seed 0 and --seed 1)")
    paths = [str(Path(r).resolve()) for r in (run_a, run_b)]
    return connect(a.model, a.vector, b.vector, a.data, out=out, resume=resume, quiet=quiet, runs=paths, **kw)


__all__ = ["ConnectConfig", "ConnectResult", "as_dataset", "barrier", "connect", "connect_runs",
           "evaluate_path", "load_controls", "load_curve", "save_curve"]
