"""Training variational-dropout and variance networks, and their three prediction schemes.

:func:`train_vardrop` maximises the ELBO  sum_n E_q log p(y_n | x_n, w) - KL(q || log-uniform prior)
(the data term estimated on a minibatch and scaled to the dataset size; reported per example) with Adam
and a linearly decaying learning rate, as in the reference setting (Molchanov et al. 2017; Neklyudov et al.
2018). :func:`evaluate_schemes` scores the trained posterior with the three schemes of the slides:
ensemble (average of the probabilities of K samples), stochastic (one sample) and deterministic (the mean
weights E w). :func:`train_all` trains several posteriors into DIR/<posterior>/ and writes the comparison
(DIR/schemes.json, DIR/schemes.md, DIR/log_alpha.png).

Why the defaults are what they are (measured on mnist5k; docs/vardrop.md has the tables):

variance_layers: Which hidden layers of a variance network are variance layers. One is enough for the
phenomenon: a variance layer's mean output is the same for every input, so all information about the input
that reaches the output passes through its variances and the deterministic scheme is at chance. The default is
the last hidden layer, whose inputs are non-negative ReLU features. A variance layer sees only x^2, so as a
first layer on standardised inputs it cannot tell a pixel below the mean from one above it (digits mlp: 87%
ensemble accuracy, against 98% for the last hidden layer). Stacks of variance layers train slowly: mnist5k
lenet5_ref, 30 epochs, all three hidden layers 84.5%, conv1 + dense1 97.0%, the last alone 98.1%; see
docs/vardrop.md. The dropout baseline puts Gaussian dropout into the same layers, so the two networks differ
only in the kind of noise (the reference's LeNet-5 has its dropout before the same dense layer).

noise_lr: log alpha and log sigma^2 live on a log scale, where Adam's step (about lr per step, whatever the
gradient's size) is small: at lr 1e-3 a few thousand steps move log alpha by a few units, so on a small
dataset the posteriors stay near their initial alpha = e^-5 and variance layers barely learn. The reference
code runs 60k steps, and parameterises a variance layer's sigma itself (Adam at lr 1e-3 then changes sigma^2
by 1-10% per step). We keep the log scale and give these parameters their own, larger learning rate.

anneal_epochs: The KL term pulls the means of the additive posterior N(mu, sigma^2) to zero with a force ~1/(N
mu) per weight; on a small training set (mnist5k: N = 4,000) that wins in the first epoch, every layer
including the output becomes a variance layer, and the network predicts at chance (ELBO -9.3e3; lenet5, 30
epochs). Raising the KL weight from 0 to 1 over the first half of training lets the data term set the means
first (ELBO -2.3e3, ensemble accuracy 96.8%). The objective is the true ELBO once the weight reaches 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from .. import metrics as M
from .. import params as P
from ..data import Dataset
from ..engine.evaluate import evaluate_vectors, predict_probs
from ..engine.schedules import lr_schedule
from ..engine.train import Stateful, TensorState, Trainer
from ..rundir import build_from_config, load_run, load_state_into, start_run_dir
from ..rundir import save_tensors as save_state
from ..utils import LowlossError, echo, read_json, resolve_device, seed_everything, versions, write_json
from ..variational import (
    POSTERIORS,
    VARIATIONAL_TYPES,
    convertible_layers,
    kl_divergence,
    layer_statistics,
    prediction_mode,
    select_layers,
    to_variational,
    variational_layers,
)

RUN_FILE = "vardrop.json"
MODEL_FILE = "model.safetensors"
SCHEMES = ("stochastic", "deterministic", "ensemble")


@dataclass
class VardropConfig:
    """One variational training run (METHODS.md section 7; reference: Adam 1e-3 decayed linearly,
    200 epochs, log alpha initialised at -5)."""

    data: str = "digits"
    model: str = "lenet5"
    model_options: dict = field(default_factory=dict)
    posterior: str = "weight"
    epochs: int = 200                     # the reference setting (METHODS.md section 7)
    lr: float = 1e-3
    final_lr_ratio: float = 0.0          # linear decay from lr to lr * final_lr_ratio
    batch_size: int = 100
    anneal_epochs: float | None = None   # KL weight rises linearly from 0 to 1 over these epochs (0: off;
    #                                       None: half of `epochs`). See the module docstring.
    log_alpha_init: float = -5.0
    log_sigma2_init: float | None = None  # additive/variance fresh init; None: sigma = |w| of the (fresh) weights
    noise_lr: float | None = 0.05         # Adam lr of the noise parameters, log alpha and log sigma^2 (same
    #                                       linear decay); None: --lr. See the module docstring.
    dropout_p: float = 0.5                # the dropout baseline: alpha = p / (1 - p)
    init: str | None = None               # a finished `lowloss train` run to take mu from (None: fresh)
    variance_last: str = "plain"          # posterior of the output layer of a variance network (or "plain",
    #                                       "variance"; see lowloss.variational.to_variational)
    variance_layers: str = "last"         # hidden layers that become variance layers (and, for the dropout
    #                                       baseline, dropout layers): last, first, alternate, all, or 1-based
    #                                       positions / names ("1,3"); the rest stay point estimates.
    #                                       See the module docstring.
    samples: int = 20                     # K of the ensemble scheme
    seed: int = 0
    data_seed: int = 0
    data_dir: str | None = None
    device: str = "auto"


VARIANCE_LAYERS = ("last", "first", "alternate", "all")


def resolve_variance_layers(spec: str, base: torch.nn.Module) -> list[str]:
    """The qualified names of the hidden layers that a variance network of `base` makes variance layers.

    `spec`: "last" (the hidden layer that feeds the output layer), "first", "alternate" (hidden dense/conv layers
    1, 3, 5, ... in module order), "all", or a comma-separated list of 1-based positions (numbers) or qualified
    layer names. The output layer (the last dense/conv layer) is never among them: it follows ``variance_last``.
    """
    names = convertible_layers(base)
    if len(names) < 2:
        raise LowlossError(f"{type(base).__name__} has {len(names)} dense/conv layer(s); a variance network needs at "
                           "least one hidden layer before the output layer")
    hidden, output = names[:-1], names[-1]
    key = str(spec).strip().lower()
    if key in VARIANCE_LAYERS:
        return {"last": hidden[-1:], "first": hidden[:1], "alternate": hidden[::2], "all": hidden}[key]
    items = [int(t) if t.isdigit() else t for t in (t.strip() for t in str(spec).split(",")) if t]
    chosen = select_layers(names, items)
    if output in chosen:
        raise LowlossError(f"layer {len(names)} ({output}) is the output layer; choose its posterior with "
                           f"--variance-last, and list hidden layers only in --variance-layers")
    return chosen


class LeNet5BN(torch.nn.Module):
    """LeNet-5 with BatchNorm after every hidden layer (conv/linear -> BN -> ReLU [-> max pool]), as in the
    variance-network experiments: BN re-centres and re-scales the zero-mean activations of variance layers,
    which is what lets them train. Pads the convolutions for inputs smaller than 32x32, like lowloss's lenet5.
    Use as ``--model lowloss.methods.vardrop:lenet5_bn``."""

    def __init__(self, input_shape, num_classes, width: float = 1.0):
        super().__init__()
        nn = torch.nn
        c, h = input_shape[0], input_shape[1]
        c1, c2, f1, f2 = (max(1, int(round(k * width))) for k in (6, 16, 120, 84))
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 5, padding=2 if h < 32 else 0, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2 if h < 16 else 0, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten())
        with torch.no_grad():
            d = self.features.eval()(torch.zeros(1, *input_shape)).shape[1]
        self.features.train()
        self.classifier = nn.Sequential(nn.Linear(d, f1, bias=False), nn.BatchNorm1d(f1), nn.ReLU(),
                                        nn.Linear(f1, f2, bias=False), nn.BatchNorm1d(f2), nn.ReLU(),
                                        nn.Linear(f2, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def lenet5_bn(input_shape, num_classes, width: float = 1.0) -> LeNet5BN:
    return LeNet5BN(input_shape, num_classes, width)


def lenet5_ref(input_shape, num_classes, width: float = 1.0) -> torch.nn.Sequential:
    """The LeNet-5 of the variance-network experiments (Caffe's 20-50-500 LeNet with BatchNorm): conv 5x5 (20)
    -> BN -> ReLU -> max pool, conv 5x5 (50) -> BN -> ReLU -> max pool, dense 500 -> BN -> ReLU, dense
    num_classes. Hidden layers have no bias (BN's shift takes its place). Unpadded on 28x28 inputs (800
    features before the dense layer); padded for small inputs such as 8x8 digits. `width` scales 20/50/500.
    Use as ``--model lowloss.methods.vardrop:lenet5_ref``."""
    nn = torch.nn
    c = input_shape[0]
    c1, c2, f1 = (max(1, int(round(k * width))) for k in (20, 50, 500))
    pad1 = 2 if min(input_shape[1:]) < 16 else 0
    s1 = [(k + 2 * pad1 - 4) // 2 for k in input_shape[1:]]
    pad2 = 2 if min(s1) < 8 else 0
    s2 = [(k + 2 * pad2 - 4) // 2 for k in s1]
    if min(s2) < 1:
        raise LowlossError(f"input {tuple(input_shape)} is too small for lenet5_ref")
    return nn.Sequential(
        nn.Conv2d(c, c1, 5, padding=pad1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=pad2, bias=False), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(c2 * s2[0] * s2[1], f1, bias=False),
        nn.BatchNorm1d(f1), nn.ReLU(), nn.Linear(f1, num_classes))


def build_variational(cfg: dict, data: Dataset | None = None, device=None):
    """The base model of `cfg` made variational (from an `init` run's weights when given) and the data."""
    if cfg.get("init"):
        run = load_run(cfg["init"], device=device or cfg.get("device", "auto"), data=data)
        rc = run.config
        if (rc["model"], rc.get("model_options", {}), rc["data"], rc.get("data_seed", 0)) != (
                cfg["model"], cfg.get("model_options", {}), cfg["data"], cfg.get("data_seed", 0)):
            raise LowlossError(f"--init {cfg['init']} was trained with model {rc['model']} on {rc['data']}; "
                               f"pass the same --model/--model-opt/--data/--data-seed")
        base, data = run.model, run.data
    else:
        base, data = build_from_config(cfg, data, device)
    variance = cfg["posterior"] == "variance"
    # the variance network and its dropout counterpart put their noise into the same hidden layers; runs written
    # before variance_layers existed made every hidden layer a variance layer, and every layer a dropout layer
    layers = None
    if variance or (cfg["posterior"] == "dropout" and "variance_layers" in cfg):
        layers = resolve_variance_layers(cfg.get("variance_layers", "all"), base)
    model = to_variational(base, cfg["posterior"], from_weights=True, log_alpha_init=cfg["log_alpha_init"],
                           log_sigma2_init=cfg.get("log_sigma2_init"), dropout_p=cfg["dropout_p"],
                           last_posterior=cfg.get("variance_last") if variance else None, layers=layers)
    return model, data


class OptimizerState(Stateful):
    """Checkpoints the per-parameter state of any torch optimiser (Adam's moments and step counts)."""

    def __init__(self, opt: torch.optim.Optimizer, names: dict):
        self.opt, self.names = opt, names  # names: param tensor id -> name

    def state_tensors(self):
        out = {}
        for p, st in self.opt.state.items():
            for k, v in st.items():
                out[f"{self.names[id(p)]}/{k}"] = v if torch.is_tensor(v) else torch.tensor(float(v))
        return out

    def load_state_tensors(self, tensors):
        by_name = {self.names[id(p)]: p for g in self.opt.param_groups for p in g["params"]}
        for key, v in tensors.items():
            name, _, k = key.rpartition("/")
            if name not in by_name:
                raise LowlossError(f"optimiser state for unknown parameter '{name}': the checkpoint belongs to a "
                                   "different configuration")
            p = by_name[name]
            self.opt.state[p][k] = v.to(p.device) if k != "step" else v.clone()


class ScaledAdam(torch.optim.Adam):
    """Adam whose parameter groups may carry an ``lr_scale``: each step uses lr * lr_scale for that group, so a
    schedule that sets every group's lr (as :class:`lowloss.engine.train.Trainer` does) keeps the ratio."""

    def step(self, closure=None):
        saved = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * g.get("lr_scale", 1.0)
        try:
            return super().step(closure)
        finally:
            for g, lr in zip(self.param_groups, saved):
                g["lr"] = lr


class AdamTrainer(Trainer):
    """:class:`lowloss.engine.train.Trainer` (progress bar, per-epoch atomic checkpoint, exact resume) with Adam.
    `lr_scales` maps parameter names to a multiplier of the scheduled learning rate (default 1)."""

    def __init__(self, params, loss_fn, data, *, betas=(0.9, 0.999), lr_scales: dict | None = None, **kw):
        kw.setdefault("momentum", 0.0)
        super().__init__(params, loss_fn, data, **kw)
        scales = lr_scales or {}
        groups: dict[float, list] = {}
        for name, p in self.params.items():
            groups.setdefault(float(scales.get(name, 1.0)), []).append(p)
        self.opt = ScaledAdam([{"params": ps, "lr_scale": k} for k, ps in groups.items()], lr=self.lr(0.0),
                              betas=betas)
        self.extra["adam"] = OptimizerState(self.opt, {id(p): n for n, p in self.params.items()})


def anneal_epochs_of(config) -> float:
    """The KL warm-up length in epochs: `anneal_epochs`, or half of the epochs when it is None."""
    return config.epochs / 2 if config.anneal_epochs is None else float(config.anneal_epochs)


def kl_weight(anneal_epochs: float, epoch: float) -> float:
    """KL annealing: the weight of the KL term rises linearly from 0 to 1 over `anneal_epochs`."""
    return 1.0 if anneal_epochs <= 0 else min(1.0, epoch / anneal_epochs)


@torch.no_grad()
def elbo_terms(model, split, batch_size: int = 1000) -> dict:
    """One-sample (local reparameterisation) estimate of the ELBO on `split`: total and per example."""
    nll_sum, n = 0.0, 0
    device = next(model.parameters()).device
    with prediction_mode(model, "sample"):
        was = model.training
        model.eval()
        for x, y in split.batches(batch_size, device=device):
            nll_sum += torch.nn.functional.cross_entropy(model(x), y, reduction="sum").item()
            n += len(y)
        model.train(was)
    kl = kl_divergence(model).item()
    return {"elbo": -(nll_sum + kl), "elbo_per_example": -(nll_sum + kl) / n, "expected_nll": nll_sum / n,
            "kl": kl, "kl_per_example": kl / n, "num_examples": n}


@torch.no_grad()
def evaluate_schemes(model, data: Dataset, samples: int = 20, seed: int = 0, split: str = "test") -> dict:
    """Accuracy, NLL and ECE of the three prediction schemes on `split`.

    deterministic: one pass with the mean weights E w. ensemble: the mean of the softmax outputs of
    `samples` stochastic passes (K independent posterior samples per example, through the shared
    evaluation engine). stochastic: a single sample; reported as the mean (and std) over those K
    single-sample scores, which estimates the one-sample scheme with less noise than one draw would.
    """
    vec = P.flatten(model)
    with torch.random.fork_rng(devices=[vec.device] if vec.device.type == "cuda" else []):
        torch.manual_seed(seed)
        with prediction_mode(model, "mean"):
            pd, y = predict_probs(model, vec, getattr(data, split))
        with prediction_mode(model, "sample"):
            res = evaluate_vectors(model, vec.unsqueeze(0).expand(samples, -1), data, splits=(split,),
                                   recompute=False, calibration=True, return_probs=(split,))
    probs = res["probs"][split].double()
    det = M.classification_metrics(pd.cpu(), y.cpu())
    ens = M.classification_metrics(M.ensemble_probs(probs), res["labels"][split])
    single = {"accuracy": 1.0 - res[f"{split}_error"], "nll": res[f"{split}_nll"], "ece": res[f"{split}_ece"]}
    stoch = {k: v.mean().item() for k, v in single.items()}
    stoch.update({f"{k}_std": v.std().item() if samples > 1 else 0.0 for k, v in single.items()})
    keep = ("accuracy", "nll", "ece")
    return {"stochastic": stoch, "deterministic": {k: det[k] for k in keep},
            "ensemble": {k: ens[k] for k in keep}, "samples": samples, "split": split}


def is_finished(out: Path) -> bool:
    return (out / RUN_FILE).exists() and (out / MODEL_FILE).exists()


def train_vardrop(config: VardropConfig, out: str | Path, *, resume: bool = False, quiet: bool = False,
                  data: Dataset | None = None, stop_after_epochs: int | None = None) -> dict:
    """Train one variational network into the run directory `out`; returns the contents of vardrop.json."""
    out = Path(out)
    cfg = asdict(config)
    if cfg["posterior"] not in POSTERIORS:
        raise LowlossError(f"unknown posterior '{cfg['posterior']}'; valid: {', '.join(POSTERIORS)} (or all)")
    if cfg["epochs"] < 1 or cfg["samples"] < 1 or cfg["batch_size"] < 1:
        raise LowlossError("--epochs, --samples and --batch-size must be positive")
    anneal = anneal_epochs_of(config)
    if anneal < 0:
        raise LowlossError(f"--anneal-epochs must be >= 0 (0: no KL warm-up), got {config.anneal_epochs}")
    if config.lr <= 0 or (config.noise_lr is not None and config.noise_lr <= 0):
        raise LowlossError("--lr and --noise-lr must be positive")
    finished = read_json(out / RUN_FILE) if is_finished(out) else None
    if finished is None:  # bad options (model, layers, init run) fail before anything is written
        device = resolve_device(config.device)
        gen = seed_everything(config.seed)
        model, data = build_variational(cfg, data, device)
    done = start_run_dir(out, cfg, resume=resume, quiet=quiet, finished=finished)
    if done is not None:
        return done
    if data.num_classes < 2:
        raise LowlossError(f"vardrop needs a classification dataset; {data.name} is a regression task")
    model.to(device).train()
    n_train = len(data.train)
    n_batches = data.train.num_batches(config.batch_size)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    lr_scales = {}
    if config.noise_lr is not None:
        lr_scales = {f"{n}.{k}": config.noise_lr / config.lr for n, m in variational_layers(model)
                     for k in ("log_alpha", "log_sigma2") if f"{n}.{k}" in trainable}

    def loss_fn(x, y, step):
        logits = model(x)
        nll = torch.nn.functional.cross_entropy(logits, y)
        beta = kl_weight(anneal, step / n_batches)
        # the negative ELBO per example: mean NLL + KL / N (the data term scaled to the dataset size)
        loss = nll + beta * kl_divergence(model) / n_train
        return loss, (logits.argmax(-1) == y).sum().item()

    def after_epoch(epoch):
        rec = {"kl_weight": kl_weight(anneal, epoch), "kl_per_example": kl_divergence(model).item() / n_train}
        vec = P.flatten(model)
        with torch.random.fork_rng(devices=[vec.device] if vec.device.type == "cuda" else []):
            for mode in ("sample", "mean"):
                with prediction_mode(model, mode):
                    p, y = predict_probs(model, vec, data.test)
                rec[f"test_accuracy_{'stochastic' if mode == 'sample' else 'deterministic'}"] = M.accuracy(p, y)
        model.train()
        return rec

    buffers = dict(model.named_buffers())
    trainer = AdamTrainer(trainable, loss_fn, data.train, epochs=config.epochs, batch_size=config.batch_size,
                          lr_scales=lr_scales,
                          lr=lr_schedule("linear", config.lr, config.epochs, final_ratio=config.final_lr_ratio),
                          generator=gen, device=device, run_dir=out, quiet=quiet, desc=f"vardrop {config.posterior}",
                          after_epoch=after_epoch, augment=False,
                          extra={"buffers": TensorState(buffers)} if buffers else None,
                          nan_hint="lower --lr, or raise --log-alpha-init / use --anneal-epochs")
    t0 = time.time()
    trainer.run(resume=resume, stop_after_epochs=stop_after_epochs)
    if trainer.state.epoch < config.epochs:
        return {"stopped_after_epoch": trainer.state.epoch}
    train_seconds = time.time() - t0
    torch.manual_seed(config.seed + 1)
    elbo = elbo_terms(model, data.train)
    schemes = evaluate_schemes(model, data, samples=config.samples, seed=config.seed + 2)
    info = {"config": cfg, "seed": config.seed, "versions": versions(), "data": data.describe(),
            "num_params": P.num_params(model), "variational_layers": list(model.variational_layer_names),
            "history": trainer.state.history, "elbo": elbo, "schemes": schemes, "layers": layer_statistics(model),
            "train_seconds": train_seconds, "kl_note": KL_NOTE}
    save_state(out / MODEL_FILE, model.state_dict(), {"posterior": config.posterior, "model": config.model})
    write_json(out / RUN_FILE, info)
    (out / Trainer.CKPT).unlink(missing_ok=True)
    return info


KL_NOTE = ("KL to the log-uniform prior, Molchanov et al. (2017) approximation, normalised to 0 as alpha -> inf; "
           "variance layers: the constant KL counted as that limit, 0; dropout: the constant KL at alpha = p/(1-p) "
           "(no gradient, reported only); biases, and the layers a variance or dropout network leaves "
           "deterministic, are point estimates without KL.")


def load_vardrop(path: str | Path, device=None, data: Dataset | None = None):
    """A finished vardrop run directory -> (variational model with its weights, data, info)."""
    path = Path(path)
    if not is_finished(path):
        hint = " (interrupted: rerun the same command with --resume)" if (path / Trainer.CKPT).exists() else ""
        raise LowlossError(f"{path} is not a finished vardrop run: it needs {RUN_FILE} and {MODEL_FILE}{hint}")
    info = read_json(path / RUN_FILE)
    cfg = dict(info["config"], init=None)  # the saved state holds every weight; no need for the init run
    model, data = build_variational(cfg, data, device)
    load_state_into(model, load_file(str(path / MODEL_FILE), device=str(next(model.parameters()).device)),
                    source=str(path / MODEL_FILE))
    return model, data, info


def vardrop_predictor(path, device=None, samples: int | None = None):
    """A finished vardrop run as a :class:`lowloss.methods.predictor.Predictor` whose K members are K
    posterior samples (the same vector; every stochastic forward pass draws new noise)."""
    from .predictor import Predictor

    model, data, info = load_vardrop(path, device=device)
    vec = P.flatten(model)
    k = samples or info["config"]["samples"]
    return Predictor(model, data, fixed=[(vec, P.buffers(model))] * k, name=f"vardrop {info['config']['posterior']}",
                     info={"posterior": info["config"]["posterior"]})


# ---------------------------------------------------------------------------------------------- several runs
def format_table(schemes: dict) -> str:
    """The slides' table: rows posterior; ELBO and stochastic / deterministic / ensemble accuracy (%)."""
    lines = ["| posterior | ELBO | stochastic acc. (%) | deterministic acc. (%) | ensemble acc. (%) | "
             "ensemble NLL | ensemble ECE |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for post, r in schemes.items():
        lines.append(f"| {post} | {r['elbo']:.4g} | {100 * r['stochastic']['accuracy']:.1f} | "
                     f"{100 * r['deterministic']['accuracy']:.1f} | {100 * r['ensemble']['accuracy']:.1f} | "
                     f"{r['ensemble']['nll']:.4f} | {r['ensemble']['ece']:.4f} |")
    return "\n".join(lines)


def train_all(config: VardropConfig, out: str | Path, posteriors=POSTERIORS, *, resume: bool = False,
              quiet: bool = False, data: Dataset | None = None) -> dict:
    """Train each posterior in turn into out/<posterior>/ (finished ones are skipped), then write
    out/schemes.json, out/schemes.md and out/log_alpha.png. Returns the schemes dict. `data` (the dataset of
    `config`, already loaded) saves loading it again."""
    from ..plots.vardrop import plot_log_alpha

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    infos = {}
    for post in posteriors:
        cfg = replace(config, posterior=post)
        run_dir = out / post
        if data is None and not is_finished(run_dir):
            _, data = build_from_config(asdict(cfg), None, resolve_device(cfg.device))
        info = train_vardrop(cfg, run_dir, resume=resume, quiet=quiet, data=data)
        infos[post] = info
        if not quiet:
            s = info["schemes"]
            echo(f"{post}: ELBO {info['elbo']['elbo']:.4g} | accuracy stochastic {s['stochastic']['accuracy']:.4f} "
                 f"deterministic {s['deterministic']['accuracy']:.4f} ensemble {s['ensemble']['accuracy']:.4f} "
                 f"({info['train_seconds']:.0f}s)")
    schemes = {p: {"elbo": i["elbo"]["elbo"], "elbo_per_example": i["elbo"]["elbo_per_example"],
                   "kl_per_example": i["elbo"]["kl_per_example"],
                   **{s: i["schemes"][s] for s in SCHEMES}} for p, i in infos.items()}
    merged = read_json(out / "schemes.json") if (out / "schemes.json").exists() else {}
    merged.update(schemes)  # runs of other posteriors already in DIR stay in the table
    merged = {p: merged[p] for p in [*POSTERIORS, *merged] if p in merged}
    write_json(out / "schemes.json", merged)
    table = format_table(merged)
    samples = config.samples
    (out / "schemes.md").write_text(
        f"Prediction schemes on the {config.data} test set ({config.model}, {config.epochs} epochs, ensemble of "
        f"{samples} samples; ELBO on the training set, nats, one sample).\n\n{table}\n")
    stats = {p: log_alpha_per_layer(out / p, data=data) for p in merged if is_finished(out / p)}
    plot_log_alpha(stats, out / "log_alpha.png", title=f"{config.model} on {config.data}")
    return merged


def log_alpha_per_layer(path: Path, data: Dataset | None = None) -> dict[str, torch.Tensor]:
    """Per dense/conv layer of a finished run, in module order: the per-weight log alpha (+inf for a variance
    layer, -inf for a layer left a point estimate)."""
    model, _, _ = load_vardrop(path, device="cpu", data=data.to("cpu") if data is not None else None)
    out = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, VARIATIONAL_TYPES):
                la = m.weight_log_alpha()
                n = math.prod(m.weight_shape)
                out[name] = torch.full((n,), math.inf, dtype=torch.float64) if la is None else la.reshape(-1).double().cpu()
            elif isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                out[name] = torch.full((m.weight.numel(),), -math.inf, dtype=torch.float64)
    return out
