"""One epoch of curve training vs one epoch of ordinary training of the same model, measured in one run.

    .venv/bin/python bench/curve_train.py [--model convnet] [--data digits] [--repeats 5] [--device cpu]

Both sides use lowloss' Trainer with the same batch size, data order and SGD settings: the ordinary side
trains the module's own parameters (``model(x)``, weight decay in SGD), the curve side trains the bend of a
one-bend Bezier curve between two random initialisations through ``fit_subspace`` (t ~ U(0,1) per
minibatch, phi(t) computed from the control points, forward with ``functional_call``, weight decay on
phi(t)). Prints the best-of-N seconds per epoch and the ratio (target <= 1.3).
"""

from __future__ import annotations

import argparse
import time

import torch

from lowloss.data import load_dataset
from lowloss.engine.fit import FitConfig, fit_subspace
from lowloss.engine.schedules import lr_schedule
from lowloss.engine.train import Trainer
from lowloss.models import build_model
from lowloss.params import flatten
from lowloss.subspaces.curves import make_curve
from lowloss.utils import resolve_device


def ordinary_epoch(model, data, bs, device):
    model.train()

    def loss_fn(x, y, step):
        out = model(x)
        return torch.nn.functional.cross_entropy(out, y), (out.argmax(-1) == y).sum().item()

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    tr = Trainer(params, loss_fn, data.train, epochs=1, batch_size=bs, lr=lr_schedule("constant", 0.01, 1),
                 momentum=0.9, weight_decay=5e-4, generator=torch.Generator().manual_seed(0), device=device,
                 quiet=True)
    tr.run()


def curve_epoch(model, curve, data, bs, device, t_per_batch):
    cfg = FitConfig(epochs=1, lr=0.01, wd=5e-4, batch_size=bs, schedule="constant", coords_per_batch=t_per_batch)
    fit_subspace(model, curve, data, cfg, generator=torch.Generator().manual_seed(0), quiet=True, device=device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--t-per-batch", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_dataset(args.data).to(device)
    torch.manual_seed(0)
    model = build_model(args.model, data.input_shape, data.num_classes).to(device)
    w_a = flatten(model).clone()
    w_b = flatten(build_model(args.model, data.input_shape, data.num_classes).to(device))
    curve = make_curve("bezier", w_a, w_b, 1)

    # warm-up both paths once, then alternate so that machine load affects both sides alike
    ordinary_epoch(model, data, args.batch_size, device)
    curve_epoch(model, curve, data, args.batch_size, device, args.t_per_batch)
    t_ord, t_cur = [], []
    for _ in range(args.repeats):
        sync(device)
        t0 = time.perf_counter()
        ordinary_epoch(model, data, args.batch_size, device)
        sync(device)
        t1 = time.perf_counter()
        curve_epoch(model, curve, data, args.batch_size, device, args.t_per_batch)
        sync(device)
        t2 = time.perf_counter()
        t_ord.append(t1 - t0)
        t_cur.append(t2 - t1)
    o, c = min(t_ord), min(t_cur)
    steps = data.train.num_batches(args.batch_size)
    print(f"{args.model} on {args.data} ({device}, {steps} steps/epoch, batch {args.batch_size}, "
          f"t per batch {args.t_per_batch}, threads {torch.get_num_threads()})")
    print(f"ordinary training: {o:.3f} s/epoch  (median {sorted(t_ord)[len(t_ord) // 2]:.3f})")
    print(f"curve training:    {c:.3f} s/epoch  (median {sorted(t_cur)[len(t_cur) // 2]:.3f})")
    print(f"ratio curve / ordinary: {c / o:.2f}x  (target <= 1.3x)")


if __name__ == "__main__":
    main()
