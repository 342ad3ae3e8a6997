"""Variational dropout and variance networks, and their three prediction schemes.

Trains a network whose nn.Linear / nn.Conv2d layers are variational (lowloss.variational) by maximising the
ELBO  sum_n E_q log p(y_n | x_n, w) - KL(q || log-uniform prior)  (the data term estimated on a minibatch and
scaled to the dataset size; reported per example) with Adam and a linearly decaying learning rate, as in the
reference setting (Molchanov et al. 2017; Neklyudov et al. 2018), then scores the posterior with the
three schemes: ensemble (average of the probabilities of K samples), stochastic (one sample) and
deterministic (the mean weights E w).

Posteriors (--posterior): weight / neuron / layer: N(mu, alpha mu^2) with alpha per weight / output unit /
layer; additive: N(mu, sigma^2); variance: N(0, sigma^2) in the layers of --variance-layers; dropout:
Gaussian dropout with fixed alpha = p/(1-p) in the same layers.

With one posterior, OUT is one network: model.safetensors, log_alpha.safetensors (per-layer log alpha) and
run.json (history, ELBO, per-layer log alpha summary, schemes). With several (or all), each posterior is
such a run in OUT/<posterior>/, and OUT/run.json holds the comparison (schemes per posterior), with
OUT/schemes.md (the table) and OUT/log_alpha.png (per posterior, a histogram of log alpha per layer).

Why the defaults are what they are (measured on mnist5k; docs/vardrop.md has the tables):

--variance-layers: which hidden layers of a variance network are variance layers. One is enough for the
phenomenon: a variance layer's mean output is the same for every input, so all information about the input
that reaches the output passes through its variances and the deterministic scheme is at chance. The default is
the last hidden layer, whose inputs are non-negative ReLU features. A variance layer sees only x^2, so as a
first layer on standardised inputs it cannot tell a pixel below the mean from one above it (digits mlp: 87%
ensemble accuracy, against 98% for the last hidden layer). Stacks of variance layers train slowly: mnist5k
lenet5_ref, 30 epochs, all three hidden layers 84.5%, conv1 + dense1 97.0%, the last alone 98.1%. The dropout
baseline puts Gaussian dropout into the same layers, so the two networks differ only in the kind of noise
(the reference's LeNet-5 has its dropout before the same dense layer).

--noise-lr: log alpha and log sigma^2 live on a log scale, where Adam's step (about lr per step, whatever the
gradient's size) is small: at lr 1e-3 a few thousand steps move log alpha by a few units, so on a small
dataset the posteriors stay near their initial alpha = e^-5 and variance layers barely learn. The reference
code runs 60k steps, and parameterises a variance layer's sigma itself (Adam at lr 1e-3 then changes sigma^2
by 1-10% per step). We keep the log scale and give these parameters their own, larger learning rate.

--anneal-epochs: the KL term pulls the means of the additive posterior N(mu, sigma^2) to zero with a force
~1/(N mu) per weight; on a small training set (mnist5k: N = 4,000) that wins in the first epoch, every layer
including the output becomes a variance layer, and the network predicts at chance (ELBO -9.3e3; lenet5, 30
epochs). Raising the KL weight from 0 to 1 over the first half of training lets the data term set the means
first (ELBO -2.3e3, ensemble accuracy 96.8%). The objective is the true ELBO once the weight reaches 1.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import metrics as M
from .. import params as P
from ..config import option, replace, require
from ..data import Dataset, load_dataset
from ..engine.evaluate import evaluate_vectors, predict_probs
from ..engine.schedules import lr_schedule
from ..engine.train import TensorState, Trainer
from ..models import parse_options
from ..rundir import (
    MODEL_FILE,
    Run,
    RunDir,
    build_from_config,
    load_run,
    load_state_into,
    load_tensors,
    read_result,
    run_method,
)
from ..utils import LowlossError, atomic_path, echo, resolve_device, seed_everything
from ..variational import (
    POSTERIORS,
    convertible_layers,
    kl_divergence,
    layer_statistics,
    log_alpha_per_layer,
    prediction_mode,
    select_layers,
    to_variational,
    variational_layers,
)
from .train import Network

INPUTS = None  # trains from scratch (or from --init)

SCHEMES = ("stochastic", "deterministic", "ensemble")
VARIANCE_LAYERS = ("last", "first", "alternate", "all")
VARIANCE_LAST = ("weight", "plain", "variance", "additive")
LOG_ALPHA_FILE = "log_alpha.safetensors"
KL_NOTE = ("KL to the log-uniform prior, Molchanov et al. (2017) approximation, normalised to 0 as alpha -> inf; "
           "variance layers: the constant KL counted as that limit, 0; dropout: the constant KL at alpha = p/(1-p) "
           "(no gradient, reported only); biases, and the layers a variance or dropout network leaves "
           "deterministic, are point estimates without KL.")


@dataclass
class Config(Network):
    """Variational training runs (reference: Adam 1e-3 decayed linearly, 200 epochs, log alpha initialised
    at -5)."""

    model: str = option("lenet5", "mlp, convnet, lenet5, lowloss.variational:lenet5_ref (the 20-50-500 LeNet-5 "
                                  "with BatchNorm of the variance-network experiments), lowloss.variational:lenet5_bn "
                                  "(6-16-120-84 with BatchNorm) or package.module:factory; its nn.Linear/nn.Conv2d "
                                  "layers become variational.")
    posterior: str = option("all", f"{', '.join(POSTERIORS)}, a comma-separated list, or all. weight/neuron/layer: "
                                   "N(mu, alpha mu^2) with alpha per weight/output unit/layer; additive: "
                                   "N(mu, sigma^2); variance: N(0, sigma^2) in the layers of --variance-layers; "
                                   "dropout: Gaussian dropout with fixed alpha = p/(1-p) in the same layers. Several "
                                   "posteriors train one run each into OUT/<posterior>/.")
    epochs: int = option(200, "Epochs per posterior.")
    lr: float = option(1e-3, "Adam learning rate, decayed linearly to lr * --final-lr-ratio.")
    final_lr_ratio: float = option(0.0, "Learning rate at the end of training relative to --lr.")
    batch_size: int = 100
    anneal_epochs: float | None = option(None, "KL warm-up: the KL weight rises linearly from 0 to 1 over this "
                                               "many epochs (0: off). Without it the KL drives the additive "
                                               "posterior's means to zero on small datasets  [default: half of "
                                               "--epochs].")
    log_alpha_init: float = option(-5.0, "Initial log alpha (weight/neuron/layer; additive starts at sigma^2 = "
                                         "alpha mu^2).")
    log_sigma2_init: float | None = option(None, "Initial log sigma^2 of variance layers, one value for all "
                                                 "weights  [default: sigma = |w| of the source (or freshly "
                                                 "initialised) weights, which breaks the symmetry between units].")
    noise_lr: float | None = option(0.05, "Adam learning rate of the noise parameters, log alpha and log sigma^2 "
                                          "(decayed like --lr): on their log scale they need far larger steps than "
                                          "the weights to move in a few thousand steps (None: --lr).")
    dropout_p: float = option(0.5, "Dropout baseline rate: alpha = p / (1 - p) (0.5 -> alpha = 1).")
    variance_last: str = option("plain", "Output layer of the variance network: a weight-wise VD layer, a plain "
                                         "point-estimate layer, or a variance layer too (zero-mean logits: "
                                         "one-sample accuracy <= 50%).", choices=VARIANCE_LAST)
    variance_layers: str = option("last", "Hidden layers of the variance network that are variance layers, and of "
                                          "the dropout baseline that are dropout layers: last (the layer that feeds "
                                          "the output layer), first, alternate (dense/conv layers 1, 3, 5, ...), "
                                          "all, or 1-based positions / layer names such as 1,3; the others stay "
                                          "point estimates. One variance layer already routes all information "
                                          "through variances; stacks train slowly (mnist5k lenet5_ref, 30 epochs: "
                                          "all three 84.5% ensemble accuracy, last 98.1%).")
    init: str | None = option(None, "Take mu (and biases) from a finished `lowloss train` run of the same model "
                                    "and data  [default: fresh initialisation].", metavar="DIR")
    samples: int = option(20, "K, the number of posterior samples of the ensemble scheme.")
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        self.model_options = parse_options(self.model_options)
        posts = posteriors_of(self.posterior)
        if str(self.posterior).strip() != "all":
            self.posterior = ",".join(posts)
        require(self.epochs >= 1 and self.samples >= 1 and self.batch_size >= 1,
                "--epochs, --samples and --batch-size must be positive")
        require(anneal_epochs_of(self) >= 0,
                f"--anneal-epochs must be >= 0 (0: no KL warm-up), got {self.anneal_epochs}")
        require(self.lr > 0 and (self.noise_lr is None or self.noise_lr > 0), "--lr and --noise-lr must be positive")
        require(0 < self.dropout_p < 1, f"--dropout-p must be in (0, 1), got {self.dropout_p}")
        require(self.variance_last in VARIANCE_LAST,
                f"--variance-last must be one of {', '.join(VARIANCE_LAST)} (got {self.variance_last!r})")
        if self.init is not None:
            rec = read_result(self.init, needs=(MODEL_FILE,))
            rc = rec.get("model") if isinstance(rec.get("model"), dict) else rec.get("config", {})
            require((rc.get("model"), rc.get("model_options") or {}, rc.get("data"), rc.get("data_seed", 0)) == (
                    self.model, self.model_options, self.data, self.data_seed),
                    f"--init {self.init} was trained with model {rc.get('model')} on {rc.get('data')}; pass the "
                    "same --model/--model-opt/--data/--data-seed")
        # the data and the model decide what is valid: a classification task, and the layer choice
        with torch.random.fork_rng(devices=[]):
            base, data = build_from_config(architecture(self), None, "cpu")
        require(data.num_classes >= 2, f"vardrop needs a classification dataset; {data.name} is a regression task")
        if any(p in ("variance", "dropout") for p in posts):
            resolve_variance_layers(self.variance_layers, base)


def posteriors_of(spec: str) -> tuple[str, ...]:
    """The posteriors a --posterior value names: "all", one name, or a comma-separated list (in that order)."""
    spec = str(spec).strip()
    posts = POSTERIORS if spec == "all" else tuple(dict.fromkeys(p.strip() for p in spec.split(",") if p.strip()))
    bad = [p for p in posts if p not in POSTERIORS]
    require(bool(posts) and not bad, f"unknown posterior {', '.join(bad) or repr(spec)}; valid: "
                                     f"{', '.join(POSTERIORS)} or all")
    return posts


def architecture(config: Config) -> dict:
    """The base network (before it is made variational): model, model_options, data, data_seed, data_dir."""
    return {"model": config.model, "model_options": parse_options(config.model_options), "data": config.data,
            "data_seed": config.data_seed, "data_dir": config.data_dir, "device": config.device}


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


def build_variational(config: Config, data: Dataset | None = None, device=None):
    """The base model of `config` made variational with `config.posterior` (mu from the --init run's weights
    when given), and the data."""
    if config.init:
        run = load_run(config.init, device=device or config.device, data=data)
        base, data = run.model, run.data
    else:
        base, data = build_from_config(architecture(config), data, device)
    variance = config.posterior == "variance"
    # the variance network and its dropout counterpart put their noise into the same hidden layers
    layers = (resolve_variance_layers(config.variance_layers, base)
              if config.posterior in ("variance", "dropout") else None)
    model = to_variational(base, config.posterior, from_weights=True, log_alpha_init=config.log_alpha_init,
                           log_sigma2_init=config.log_sigma2_init, dropout_p=config.dropout_p,
                           last_posterior=config.variance_last if variance else None, layers=layers)
    return model, data


def anneal_epochs_of(config: Config) -> float:
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


# ---------------------------------------------------------------------------------------------- the method
def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False, data: Dataset | None = None,
        stop_after_epochs: int | None = None) -> dict:
    """Train the posterior(s) of `config` into the run directory. Returns run.json's contents."""
    posts = posteriors_of(config.posterior)
    if len(posts) > 1:
        return _fit_comparison(config, posts, run_dir, quiet=quiet, data=data, stop_after_epochs=stop_after_epochs)
    return _fit_network(config, run_dir, quiet=quiet, data=data, stop_after_epochs=stop_after_epochs)


def _fit_network(config: Config, run_dir: RunDir, *, quiet: bool, data: Dataset | None,
                 stop_after_epochs: int | None) -> dict:
    """One variational network: ELBO training with Adam, then the ELBO and the three schemes."""
    device = resolve_device(config.device)
    gen = seed_everything(config.seed)
    model, data = build_variational(config, data, device)
    model.to(device).train()
    anneal = anneal_epochs_of(config)
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
    trainer = Trainer(trainable, loss_fn, data.train, epochs=config.epochs, batch_size=config.batch_size,
                      optimizer="adam", lr_scales=lr_scales,
                      lr=lr_schedule("linear", config.lr, config.epochs, final_ratio=config.final_lr_ratio),
                      generator=gen, device=device, run_dir=run_dir.path, quiet=quiet,
                      desc=f"vardrop {config.posterior}", after_epoch=after_epoch, augment=False,
                      extra={"buffers": TensorState(buffers)} if buffers else None,
                      nan_hint="lower --lr, or raise --log-alpha-init / use --anneal-epochs")
    t0 = time.time()
    trainer.run(resume=run_dir.resuming, stop_after_epochs=stop_after_epochs)
    if trainer.state.epoch < config.epochs:  # stopped early on purpose: the checkpoint resumes it
        return {"stopped_after_epoch": trainer.state.epoch}
    train_seconds = time.time() - t0
    torch.manual_seed(config.seed + 1)
    elbo = elbo_terms(model, data.train)
    schemes = evaluate_schemes(model, data, samples=config.samples, seed=config.seed + 2)
    run_dir.save_tensors(MODEL_FILE, model.state_dict(), {"posterior": config.posterior, "model": config.model})
    log_alpha = log_alpha_per_layer(model)
    run_dir.save_tensors(LOG_ALPHA_FILE, log_alpha, {"layers": ",".join(log_alpha)})
    return run_dir.finish({"seed": config.seed, "data": data.describe(), "num_params": P.num_params(model),
                           "variational_layers": list(model.variational_layer_names),
                           "history": trainer.state.history, "elbo": elbo, "schemes": schemes,
                           "layers": layer_statistics(model), "train_seconds": train_seconds, "kl_note": KL_NOTE,
                           "log_alpha": LOG_ALPHA_FILE}, model=architecture(config))


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


def _network_line(post: str, info: dict) -> str:
    s = info["schemes"]
    return (f"{post}: ELBO {info['elbo']['elbo']:.4g} | accuracy stochastic {s['stochastic']['accuracy']:.4f} "
            f"deterministic {s['deterministic']['accuracy']:.4f} ensemble {s['ensemble']['accuracy']:.4f} "
            f"({info['train_seconds']:.0f}s)")


def _fit_comparison(config: Config, posts: tuple[str, ...], run_dir: RunDir, *, quiet: bool,
                    data: Dataset | None, stop_after_epochs: int | None) -> dict:
    """Each posterior a sub-run OUT/<posterior>/ (finished ones are kept), then the comparison."""
    if data is None:
        data = load_dataset(config.data, seed=config.data_seed, data_dir=config.data_dir)
    data = data.to(resolve_device(config.device))
    infos = {}
    for post in posts:
        info = run_method(sys.modules[__name__], replace(config, posterior=post), None, run_dir.sub(post),
                          resume=run_dir.resuming, quiet=quiet, data=data, stop_after_epochs=stop_after_epochs)
        if "stopped_after_epoch" in info:
            return info
        infos[post] = info
        echo(_network_line(post, info), quiet)
    schemes = {p: {"elbo": infos[p]["elbo"]["elbo"], "elbo_per_example": infos[p]["elbo"]["elbo_per_example"],
                   "kl_per_example": infos[p]["elbo"]["kl_per_example"],
                   **{s: infos[p]["schemes"][s] for s in SCHEMES}} for p in POSTERIORS if p in infos}
    with atomic_path(run_dir.file("schemes.md")) as tmp:
        tmp.write_text(f"Prediction schemes on the {config.data} test set ({config.model}, {config.epochs} epochs, "
                       f"ensemble of {config.samples} samples; ELBO on the training set, nats, one sample).\n\n"
                       f"{format_table(schemes)}\n")
    return run_dir.finish({"posteriors": list(schemes), "schemes": schemes, "data": data.describe(),
                           "log_alpha": {p: f"{p}/{infos[p]['log_alpha']}" for p in schemes}})


def summary(info: dict) -> str:
    if "posteriors" in info:
        return f"{len(info['posteriors'])} posteriors\n{format_table(info['schemes'])}"
    return _network_line(info["config"]["posterior"], info)


# ---------------------------------------------------------------------------------------------- loading
def _config_of(record: dict) -> Config:
    names = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in record.items() if k in names})


def load(path: str | Path, device=None, data: Dataset | None = None):
    """A finished vardrop run: one network as a :class:`lowloss.rundir.Run` (the variational module with its
    weights, the data, the base architecture); a comparison of several posteriors as {posterior: Run}."""
    path = Path(path)
    info = read_result(path, "vardrop")
    if "posteriors" in info:
        runs = {}
        for post in info["posteriors"]:
            runs[post] = load(path / post, device=device, data=data)
            data = runs[post].data
        return runs
    info = read_result(path, "vardrop", needs=(MODEL_FILE,))
    config = replace(_config_of(info["config"]), init=None)  # the saved state holds every weight
    model, data = build_variational(config, data, resolve_device(device or config.device))
    state, _ = load_tensors(path / MODEL_FILE, device=next(model.parameters()).device)
    load_state_into(model, state, source=str(path / MODEL_FILE))
    return Run(path, architecture(config), model, data, resolve_device(device or config.device))


def vardrop_predictor(path, device=None, samples: int | None = None):
    """A finished one-posterior vardrop run as a :class:`lowloss.methods.predictor.Predictor` whose K members
    are K posterior samples (the same vector; every stochastic forward pass draws new noise)."""
    from .predictor import Predictor

    run = load(path, device=device)
    if isinstance(run, dict):
        raise LowlossError(f"{path} compares {len(run)} posteriors; open one of {', '.join(str(Path(path) / p) for p in run)}")
    info = read_result(path, "vardrop")
    post = info["config"]["posterior"]
    k = samples or info["config"]["samples"]
    return Predictor(run.model, run.data, fixed=[(run.vector, run.buffers)] * k, name=f"vardrop {post}",
                     info={"posterior": post})


def train_vardrop(config: Config | None = None, out: str | Path = "runs/vardrop", *, resume: bool = False,
                  quiet: bool = False, data: Dataset | None = None, stop_after_epochs: int | None = None,
                  **overrides) -> dict:
    """Python API: ``train_vardrop(Config(posterior="variance,dropout", model="mlp"), "runs/vd")``; `data` (the
    dataset of the config, already loaded) saves loading it again. Returns run.json's contents."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), None, out, resume=resume,
                      quiet=quiet, data=data, stop_after_epochs=stop_after_epochs)


__all__ = ["Config", "INPUTS", "POSTERIORS", "SCHEMES", "anneal_epochs_of", "build_variational", "elbo_terms",
           "evaluate_schemes", "fit", "format_table", "kl_weight", "load", "posteriors_of",
           "resolve_variance_layers", "summary", "train_vardrop", "vardrop_predictor"]
