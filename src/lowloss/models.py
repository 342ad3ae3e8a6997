"""A small model zoo that adapts to a dataset's input shape and class count.

Any ``nn.Module`` works with lowloss; these are the papers' architectures plus small ones for the
embedded data. A user's own model is ``"package.module:factory"``: the factory is called with
``input_shape=`` and ``num_classes=`` (and any options) when it accepts them.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Sequence

import torch
from torch import nn

from .utils import LowlossError


def _out_shape(module: nn.Module, input_shape: Sequence[int]) -> torch.Size:
    with torch.no_grad():
        was = module.training
        module.eval()
        out = module(torch.zeros(1, *input_shape)).shape[1:]
        module.train(was)
    return out


class MLP(nn.Module):
    """Fully connected ReLU network; flattens any input shape."""

    def __init__(self, input_shape, num_classes, widths: Sequence[int] = (128, 128), bn: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = math.prod(input_shape)
        for w in widths:
            layers.append(nn.Linear(d, w))
            if bn:
                layers.append(nn.BatchNorm1d(w))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = w
        layers.append(nn.Linear(d, max(num_classes, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ConvNet(nn.Module):
    """A small CNN for 8x8 digits (and any image size): three 3x3 conv blocks, global average pooling."""

    def __init__(self, input_shape, num_classes, width: float = 1.0, bn: bool = True):
        super().__init__()
        c = input_shape[0]
        ch = [max(1, int(round(k * width))) for k in (32, 64, 64)]

        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=not bn)] + ([nn.BatchNorm2d(o)] if bn else []) + [nn.ReLU()]

        self.features = nn.Sequential(*block(c, ch[0]), *block(ch[0], ch[1]), nn.MaxPool2d(2),
                                      *block(ch[1], ch[2]), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(ch[2], num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class ConvNet1D(nn.Module):
    """A small 1-D CNN for signals [C, L] (MNIST-1D): three strided convolutions, then a linear layer over the
    flattened features (position matters in MNIST-1D, so no global pooling)."""

    def __init__(self, input_shape, num_classes, width: float = 1.0, bn: bool = True):
        super().__init__()
        if len(input_shape) != 2:
            raise LowlossError(f"convnet1d takes signals [channels, length]; got input shape {tuple(input_shape)}")
        c = input_shape[0]
        ch = [max(1, int(round(k * width))) for k in (32, 32, 32)]

        def block(i, o, k, stride):
            return [nn.Conv1d(i, o, k, stride=stride, padding=k // 2, bias=not bn)] + \
                ([nn.BatchNorm1d(o)] if bn else []) + [nn.ReLU()]

        self.features = nn.Sequential(*block(c, ch[0], 5, 1), *block(ch[0], ch[1], 3, 2), *block(ch[1], ch[2], 3, 2),
                                      nn.Flatten())
        self.classifier = nn.Linear(int(math.prod(_out_shape(self.features, input_shape))), num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class LeNet5(nn.Module):
    """LeNet-5 (ReLU, max pooling); pads the convolutions when the input is smaller than 32x32."""

    def __init__(self, input_shape, num_classes, width: float = 1.0):
        super().__init__()
        c, h = input_shape[0], input_shape[1]
        c1, c2 = int(round(6 * width)), int(round(16 * width))
        pad1 = 2 if h < 32 else 0
        pad2 = 2 if h < 16 else 0
        self.features = nn.Sequential(nn.Conv2d(c, c1, 5, padding=pad1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(c1, c2, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        d = math.prod(_out_shape(self.features, input_shape))
        self.classifier = nn.Sequential(nn.Linear(d, int(120 * width)), nn.ReLU(),
                                        nn.Linear(int(120 * width), int(84 * width)), nn.ReLU(),
                                        nn.Linear(int(84 * width), num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(nn.Module):
    """VGG16 as in Garipov et al. (three 512-wide FC layers with dropout); pools skipped once at 1x1."""

    def __init__(self, input_shape, num_classes, bn: bool = False, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        c, size = input_shape[0], input_shape[1]
        for v in _VGG16:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            o = max(1, int(round(v * width)))
            layers += [nn.Conv2d(c, o, 3, padding=1)] + ([nn.BatchNorm2d(o)] if bn else []) + [nn.ReLU()]
            c = o
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        fc = max(1, int(round(512 * width)))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(c, fc), nn.ReLU(), nn.Dropout(), nn.Linear(fc, fc),
                                        nn.ReLU(), nn.Linear(fc, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class _PreActBasic(nn.Module):
    expansion = 1

    def __init__(self, i, o, stride, dropout=0.0):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(i), nn.Conv2d(i, o, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(o), nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.short = None if (stride == 1 and i == o) else nn.Conv2d(i, o, 1, stride, bias=False)

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        short = x if self.short is None else self.short(out)
        out = self.conv1(out)
        out = self.conv2(self.drop(torch.relu(self.bn2(out))))
        return out + short


class _PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, i, o, stride, dropout=0.0):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(i), nn.Conv2d(i, o, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(o), nn.Conv2d(o, o, 3, stride, 1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(o), nn.Conv2d(o, o * 4, 1, bias=False)
        self.short = None if (stride == 1 and i == o * 4) else nn.Conv2d(i, o * 4, 1, stride, bias=False)

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        short = x if self.short is None else self.short(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        out = self.conv3(torch.relu(self.bn3(out)))
        return out + short


class PreResNet(nn.Module):
    """Pre-activation ResNet (He et al. 2016) for CIFAR-style inputs: depth 20/110 basic, 164 bottleneck."""

    def __init__(self, input_shape, num_classes, depth: int = 20, width: float = 1.0):
        super().__init__()
        # as in the curve paper's code: bottleneck blocks from depth 44 on (9n+2), basic below (6n+2)
        if depth >= 44 and (depth - 2) % 9 == 0:
            block, n = _PreActBottleneck, (depth - 2) // 9
        elif depth < 44 and (depth - 2) % 6 == 0:
            block, n = _PreActBasic, (depth - 2) // 6
        else:
            raise LowlossError(f"preresnet depth {depth} must be 6n+2 below 44 or 9n+2 from 44 on; try 20, 110 or 164")
        w = [max(1, int(round(k * width))) for k in (16, 32, 64)]
        self.conv = nn.Conv2d(input_shape[0], w[0], 3, padding=1, bias=False)
        layers, c = [], w[0]
        for stage, o in enumerate(w):
            for j in range(n):
                layers.append(block(c, o, 2 if (stage > 0 and j == 0) else 1))
                c = o * block.expansion
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        out = self.layers(self.conv(x))
        out = torch.relu(self.bn(out)).mean(dim=(2, 3))
        return self.fc(out)


class WideResNet(nn.Module):
    """Wide ResNet (Zagoruyko & Komodakis), WRN-depth-k with pre-activation basic blocks."""

    def __init__(self, input_shape, num_classes, depth: int = 28, widen: int = 10, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise LowlossError(f"wide resnet depth {depth} is not 6n+4 (e.g. 28)")
        n = (depth - 4) // 6
        w = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv = nn.Conv2d(input_shape[0], w[0], 3, padding=1, bias=False)
        layers, c = [], w[0]
        for stage, o in enumerate(w[1:]):
            for j in range(n):
                layers.append(_PreActBasic(c, o, 2 if (stage > 0 and j == 0) else 1, dropout))
                c = o
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        out = torch.relu(self.bn(self.layers(self.conv(x))))
        return self.fc(out.mean(dim=(2, 3)))


def _mlp(s, k, widths="128,128", **o):
    if isinstance(widths, (int, float)):
        widths = [int(widths)]
    elif isinstance(widths, str):
        widths = [int(w) for w in widths.replace("x", ",").split(",") if w]
    return MLP(s, k, widths=widths, **o)


MODELS = {
    "mlp": _mlp,
    "convnet": lambda s, k, **o: ConvNet(s, k, **o),
    "convnet1d": lambda s, k, **o: ConvNet1D(s, k, **o),
    "lenet5": lambda s, k, **o: LeNet5(s, k, **o),
    "vgg16": lambda s, k, **o: VGG16(s, k, bn=False, **o),
    "vgg16bn": lambda s, k, **o: VGG16(s, k, bn=True, **o),
    "preresnet": lambda s, k, **o: PreResNet(s, k, **o),
    "preresnet20": lambda s, k, **o: PreResNet(s, k, depth=20, **o),
    "preresnet110": lambda s, k, **o: PreResNet(s, k, depth=110, **o),
    "preresnet164": lambda s, k, **o: PreResNet(s, k, depth=164, **o),
    "wrn28x10": lambda s, k, **o: WideResNet(s, k, depth=28, widen=10, **o),
}


def parse_options(items: Sequence[str] | dict | None) -> dict:
    """``["width=2", "bn=false", "widths=128,128"]`` -> ``{"width": 2.0, "bn": False, "widths": "128,128"}``."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for item in items:
        if "=" not in item:
            raise LowlossError(f"model option '{item}' is not KEY=VALUE (e.g. --model-opt width=2)")
        k, v = item.split("=", 1)
        low = v.lower()
        if low in ("true", "false"):
            out[k] = low == "true"
        else:
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
    return out


def build_model(name: str, input_shape: Sequence[int], num_classes: int, options: dict | None = None) -> nn.Module:
    """A model by zoo name or ``package.module:factory``, adapted to the data."""
    options = dict(options or {})
    out_dim = max(num_classes, 1)
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise LowlossError(f"cannot load model factory '{name}' ({e}); give it as package.module:callable "
                               "importable from the current directory or PYTHONPATH") from e
        params = inspect.signature(factory).parameters
        accepts_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
        kw = dict(options)
        if accepts_kw or "input_shape" in params:
            kw["input_shape"] = tuple(input_shape)
        if accepts_kw or "num_classes" in params:
            kw["num_classes"] = out_dim
        model = factory(**kw)
        if not isinstance(model, nn.Module):
            raise LowlossError(f"model factory '{name}' returned {type(model).__name__}, not an nn.Module")
        return model
    key = name.lower()
    if key not in MODELS:
        raise LowlossError(f"unknown model '{name}'; valid names: {', '.join(MODELS)} "
                           "(or package.module:factory for your own)")
    try:
        return MODELS[key](tuple(input_shape), out_dim, **options)
    except TypeError as e:
        raise LowlossError(f"bad option for model '{name}': {e}") from e
