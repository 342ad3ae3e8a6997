"""Variational dropout / variance layers: KL approximation, local reparameterisation, conversion, schemes."""

import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.func import vmap

from lowloss.models import build_model
from lowloss.utils import LowlossError, read_json
from lowloss.variational import (
    EXACT_KL_CONSTANT,
    POSTERIORS,
    VariationalConv2d,
    VariationalLinear,
    kl_divergence,
    kl_log_uniform,
    kl_log_uniform_mc,
    prediction_mode,
    set_mode,
    to_variational,
    variational_layers,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster than two on a shared, loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


K1, K2, K3 = 0.63576, 1.87320, 1.48695  # Molchanov et al. 2017, eq. 14


def _kl_by_hand(la: float) -> float:
    # -KL ~ k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1/alpha) - k1
    return -(K1 / (1 + math.exp(-(K2 + K3 * la))) - 0.5 * math.log1p(math.exp(-la)) - K1)


def test_kl_matches_published_constants_and_values():
    la = torch.tensor([-5.0, 0.0, 5.0, 10.0], dtype=torch.float64)
    kl = kl_log_uniform(la)
    for v, l in zip(kl.tolist(), la.tolist()):
        assert v == pytest.approx(_kl_by_hand(l), rel=1e-12)
    # the published values (rounded): 3.1367, 0.4312, 0.00342, 2e-5 (2.27e-5: the 0.5 log(1+1/alpha) tail)
    assert kl[0].item() == pytest.approx(3.1367, abs=5e-5)
    assert kl[1].item() == pytest.approx(0.4312, abs=5e-5)
    assert kl[2].item() == pytest.approx(0.003415, abs=5e-7)
    assert kl[3].item() == pytest.approx(2.273e-5, abs=5e-8)
    # positive, decreasing in alpha, -> 0 as alpha -> inf (the normalisation the constant -k1 chooses)
    grid = torch.linspace(-20, 40, 601, dtype=torch.float64)
    vals = kl_log_uniform(grid)
    assert (vals > 0).all() and (vals.diff() < 0).all() and vals[-1] < 1e-8
    # k1 is the fitted stand-in for the exact limit constant (gamma + log 2) / 2 = 0.635181...
    assert abs(K1 - EXACT_KL_CONSTANT) < 1e-3
    # and the autograd path does not overflow for extreme log alpha
    x = torch.tensor([-80.0, 80.0], requires_grad=True)
    kl_log_uniform(x).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("la", [-4.0, -2.0, 0.0, 2.0, 4.0, 8.0])
def test_kl_close_to_monte_carlo(la):
    """KL = -0.5 log a + E log|1 + sqrt(a) z| + (gamma + log 2)/2 by Monte Carlo (float64, 4e5 samples)."""
    g = torch.Generator().manual_seed(0)
    mc, se = kl_log_uniform_mc(la, 400_000, generator=g)
    approx = kl_log_uniform(torch.tensor(la, dtype=torch.float64)).item()
    # the published approximation error is below ~0.01 nats per weight; plus 4 standard errors of sampling
    assert abs(approx - mc) < 0.01 + 4 * se, (la, approx, mc, se)


def test_kl_differences_match_monte_carlo_with_common_random_numbers():
    """Free of the prior's arbitrary constant: KL(a) - KL(b) from the approximation vs Monte Carlo."""
    z = torch.randn(400_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def mc(la):  # KL up to the additive constant
        return -0.5 * la + torch.log(torch.abs(1 + math.exp(la / 2) * z)).mean().item()

    las = [-6.0, -3.0, -1.0, 0.0, 1.0, 3.0, 6.0]
    for a, b in zip(las[:-1], las[1:]):
        d_mc = mc(a) - mc(b)
        d_ap = (kl_log_uniform(torch.tensor(a, dtype=torch.float64)) - kl_log_uniform(torch.tensor(b, dtype=torch.float64))).item()
        assert abs(d_mc - d_ap) < 0.015, (a, b, d_mc, d_ap)
    # and the large-alpha limit really is the constant: -0.5 la + E log|sqrt(a) z| -> E log|z| = -(g + log 2)/2
    assert torch.log(z.abs()).mean().item() == pytest.approx(-EXACT_KL_CONSTANT, abs=0.01)


def _posterior_layer(kind, posterior, seed=0):
    torch.manual_seed(seed)
    if kind == "linear":
        layer = VariationalLinear(4, 3, posterior=posterior, log_alpha_init=-0.5)
    else:
        layer = VariationalConv2d(2, 3, 3, stride=1, padding=1, posterior=posterior, log_alpha_init=-0.5)
    layer = layer.double()
    with torch.no_grad():  # spread the posterior parameters so every weight has its own variance
        for name, p in layer.named_parameters():
            if name in ("log_alpha", "log_sigma2"):
                p.add_(0.5 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("posterior", ["weight", "neuron", "layer", "additive", "variance"])
def test_local_reparameterisation_matches_sampling_weights(kind, posterior):
    """Per output: mean and variance of the local-reparameterisation sample == those of x W, W ~ q (MC)."""
    layer = _posterior_layer(kind, posterior)
    x = torch.randn(2, 4, dtype=torch.float64) if kind == "linear" else torch.randn(2, 2, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        mean_exact = layer._op(x, layer.weight_mean(), layer.bias)
        var_exact = layer._op(x * x, layer.weight_var(), None)
        torch.manual_seed(1)
        s = 8000
        with prediction_mode(layer, "sample"):  # every row of the repeated batch gets independent noise
            local = layer(x.repeat(s, *([1] * (x.dim() - 1)))).reshape(s, *mean_exact.shape)
        with prediction_mode(layer, "weights"):  # ground truth: one weight draw per forward pass (vmapped)
            direct = vmap(lambda _: layer(x), randomness="different")(torch.arange(s))
    for samples in (local, direct):
        n = samples.shape[0]
        se_mean = (var_exact / n).sqrt()
        se_var = var_exact * math.sqrt(2.0 / n)
        assert ((samples.mean(0) - mean_exact).abs() <= 5 * se_mean + 1e-12).all()
        assert ((samples.var(0) - var_exact).abs() <= 5 * se_var + 1e-12).all()
    assert var_exact.min() > 0


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_variance_layer_deterministic_scheme_is_bias_only(kind):
    layer = _posterior_layer(kind, "variance")
    assert not hasattr(layer, "weight")  # the mean is fixed at zero, not a parameter
    x = torch.randn(5, 4, dtype=torch.float64) if kind == "linear" else torch.randn(5, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad(), prediction_mode(layer, "mean"):
        out = layer(x)
    bias = layer.bias.reshape(1, -1, *([1] * (out.dim() - 2))).expand_as(out)
    assert torch.equal(out, bias)
    # sample mode: mean = bias, std = sqrt(x^2 sigma^2 + 1e-16): a zero input gives the bias up to 1e-8 noise
    with torch.no_grad():
        z = layer(torch.zeros_like(x))
    assert (z - bias).abs().max() < 1e-6
    assert (z - bias).abs().max() > 0


def test_variance_network_deterministic_prediction_ignores_the_input():
    torch.manual_seed(0)
    net = to_variational(build_model("mlp", (1, 8, 8), 10, {"widths": "16,16"}), "variance")
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad(), prediction_mode(net, "mean"):
        out = net(x)
    # every layer outputs its bias: the logits are the same for every input (chance-level prediction)
    assert torch.allclose(out, out[:1].expand_as(out))
    with torch.no_grad():
        assert net(x).std(0).min() > 0  # the stochastic network does depend on x


@pytest.mark.parametrize("name,opts", [("mlp", {"widths": "16,16"}), ("convnet", {"width": 0.25}), ("lenet5", {}),
                                       ("tiny", {})])
@pytest.mark.parametrize("posterior", ["weight", "neuron", "layer", "additive"])
def test_conversion_keeps_shapes_and_reproduces_model_as_alpha_goes_to_zero(name, opts, posterior, tiny_bn):
    torch.manual_seed(0)
    base = tiny_bn if name == "tiny" else build_model(name, (1, 8, 8), 10, opts)
    base.eval()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    types_before = [type(m) for m in base.modules()]
    var = to_variational(base, posterior, log_alpha_init=-40.0).eval()
    # the user's module is untouched
    assert [type(m) for m in base.modules()] == types_before
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    originals = [(n, m) for n, m in base.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    layers = variational_layers(var)
    assert [n for n, _ in layers] == [n for n, _ in originals] == list(var.variational_layer_names)
    for (_, o), (_, v) in zip(originals, layers):
        assert v.weight.shape == o.weight.shape and torch.equal(v.weight, o.weight)
        assert (v.bias is None) == (o.bias is None)
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        ref = base(x)
        with prediction_mode(var, "mean"):
            assert torch.allclose(var(x), ref, atol=1e-6)
        assert torch.allclose(var(x), ref, atol=1e-5)  # alpha = e^-40: sampling reproduces the model


def test_fresh_conversion_and_errors():
    torch.manual_seed(0)
    base = build_model("mlp", (1, 8, 8), 10, {"widths": "16"})
    fresh = to_variational(base, "weight", from_weights=False)
    assert not torch.equal(variational_layers(fresh)[0][1].weight, base.net[1].weight)
    with pytest.raises(LowlossError, match="posterior"):
        to_variational(base, "gaussian")
    with pytest.raises(LowlossError, match="no nn.Linear"):
        to_variational(nn.Sequential(nn.ReLU()), "weight")
    with pytest.raises(LowlossError, match="mode"):
        set_mode(fresh, "median")
    skipped = to_variational(base, "weight", skip=("net.1",))
    assert isinstance(skipped.net[1], nn.Linear) and isinstance(skipped.net[3], VariationalLinear)


def test_kl_per_posterior_and_mode_switch():
    torch.manual_seed(0)
    base = build_model("mlp", (1, 8, 8), 10, {"widths": "16"})
    n_w = 64 * 16 + 16 * 10
    kl = {p: kl_divergence(to_variational(base, p, log_alpha_init=-5.0)).item() for p in POSTERIORS}
    per_weight = kl_log_uniform(torch.tensor(-5.0)).item()
    for p in ("weight", "neuron", "layer", "additive"):
        assert kl[p] == pytest.approx(n_w * per_weight, rel=1e-4)
    assert kl["variance"] == 0.0
    assert kl["dropout"] == pytest.approx(n_w * kl_log_uniform(torch.tensor(0.0)).item(), rel=1e-5)  # p=0.5: alpha=1
    net = to_variational(base, "dropout")
    assert not any("log_alpha" in n for n, _ in net.named_parameters())  # alpha is fixed: a buffer
    with prediction_mode(net, "mean"):
        assert all(m.mode == "mean" for _, m in variational_layers(net))
    assert all(m.mode == "sample" for _, m in variational_layers(net))


def test_training_resumes_exactly_and_writes_schemes(tmp_path, digits):
    from lowloss.api import run
    from lowloss.methods.vardrop import Config, anneal_epochs_of, kl_weight, load, train_vardrop
    from lowloss.variational import log_alpha_per_layer

    cfg = Config(data="digits", model="mlp", model_options={"widths": "16"}, posterior="weight", epochs=2,
                 samples=4, anneal_epochs=1.0, device="cpu")
    full = train_vardrop(cfg, tmp_path / "full", quiet=True, data=digits)
    assert full["method"] == "vardrop" and full["model"]["model"] == "mlp"
    assert train_vardrop(cfg, tmp_path / "half", quiet=True, data=digits, stop_after_epochs=1) == {
        "stopped_after_epoch": 1}
    with pytest.raises(LowlossError, match="--resume"):
        train_vardrop(cfg, tmp_path / "half", quiet=True, data=digits)
    resumed = train_vardrop(cfg, tmp_path / "half", resume=True, quiet=True, data=digits)
    a, b = load(tmp_path / "full", data=digits).model, load(tmp_path / "half", data=digits).model
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n  # Adam moments and every RNG restored
    assert resumed["schemes"] == full["schemes"] and resumed["elbo"] == full["elbo"]
    assert full["history"][0]["kl_weight"] == 1.0 and full["elbo"]["elbo"] < 0
    for s in ("stochastic", "deterministic", "ensemble"):
        assert set(full["schemes"][s]) >= {"accuracy", "nll", "ece"}
    assert not (tmp_path / "full" / "checkpoint.safetensors").exists()

    out = tmp_path / "all"
    cfg = replace(cfg, epochs=1, posterior="dropout,variance")
    res = run("vardrop", cfg, out=out, quiet=True, fit_kwargs={"data": digits})
    schemes = res["schemes"]
    assert list(schemes) == ["variance", "dropout"] == res["posteriors"]
    assert read_json(out / "run.json") == json.loads(json.dumps(res))
    assert schemes["variance"]["ensemble"] == read_json(out / "variance" / "run.json")["schemes"]["ensemble"]
    assert (out / "schemes.md").read_text().count("\n| ") == 3 and (out / "log_alpha.png").stat().st_size > 0
    # the figure's data: the default variance network has one variance layer; the others are point estimates
    runs = load(out, data=digits)
    assert list(runs) == ["variance", "dropout"]
    stats = log_alpha_per_layer(runs["variance"].model)
    assert list(stats) == ["net.1", "net.3"] and torch.isinf(stats["net.1"]).all() and (stats["net.1"] > 0).all()
    assert (stats["net.3"] == -math.inf).all() and stats["net.3"].numel() == 16 * 10
    # the KL warm-up defaults to half of the epochs
    assert anneal_epochs_of(replace(cfg, epochs=30, anneal_epochs=None)) == 15.0
    assert kl_weight(15.0, 3.0) == pytest.approx(0.2) and kl_weight(15.0, 20.0) == 1.0 == kl_weight(0.0, 0.0)
    # variance network, deterministic scheme: the same prediction for every input
    m = runs["variance"].model
    with torch.no_grad(), prediction_mode(m, "mean"):
        logits = m(digits.test.x[:20])
    assert torch.allclose(logits, logits[:1].expand_as(logits))
    # an interrupted comparison keeps its finished posteriors
    before = (out / "dropout" / "model.safetensors").stat().st_mtime_ns
    (out / "run.json").unlink()
    again = train_vardrop(cfg, out, resume=True, quiet=True, data=digits)
    assert (out / "dropout" / "model.safetensors").stat().st_mtime_ns == before
    assert again["schemes"] == res["schemes"]
    with pytest.raises(LowlossError, match="another config"):
        train_vardrop(cfg, out, quiet=True, data=digits, posterior="dropout")


def test_comparison_stops_and_resumes(tmp_path, digits):
    from lowloss.methods.vardrop import Config, train_vardrop

    cfg = Config(model="mlp", model_options={"widths": "8"}, posterior="layer,dropout", epochs=2, samples=2,
                 device="cpu")
    assert train_vardrop(cfg, tmp_path / "vd", quiet=True, data=digits, stop_after_epochs=1) == {
        "stopped_after_epoch": 1}
    assert (tmp_path / "vd" / "layer" / "checkpoint.safetensors").exists()
    res = train_vardrop(cfg, tmp_path / "vd", resume=True, quiet=True, data=digits)
    full = train_vardrop(cfg, tmp_path / "full", quiet=True, data=digits)
    assert res["schemes"] == full["schemes"]


def test_last_layer_posterior_and_the_variance_output_layer_limit():
    torch.manual_seed(0)
    base = build_model("mlp", (1, 8, 8), 10, {"widths": "16,16"})
    net = to_variational(base, "variance", last_posterior="weight")
    assert [m.posterior for _, m in variational_layers(net)] == ["variance", "variance", "weight"]
    plain = to_variational(base, "variance", last_posterior="plain")
    assert type(plain.net[-1]) is nn.Linear and len(variational_layers(plain)) == 2
    with pytest.raises(LowlossError, match="last-layer"):
        to_variational(base, "variance", last_posterior="bayes")
    # a variance output layer gives logits symmetric around the bias: even with one class's variance
    # dominating, that class is the argmax only about half of the time (never more)
    layer = VariationalLinear(5, 4, posterior="variance").double()
    with torch.no_grad():
        layer.bias.zero_()
        layer.log_sigma2.fill_(-10.0)
        layer.log_sigma2[2] = 5.0
        x = torch.ones(20_000, 5, dtype=torch.float64)
        torch.manual_seed(3)
        wins = (layer(x).argmax(-1) == 2).double().mean().item()
    assert abs(wins - 0.5) < 0.02


def test_adam_groups_give_log_sigma2_its_own_learning_rate():
    from lowloss.data import TensorSplit
    from lowloss.engine.train import Trainer

    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    data = TensorSplit(torch.zeros(4, 1), torch.zeros(4))
    trainer = Trainer({"a": a, "b": b}, lambda x, y, step: (a.sum() + b.sum(), None), data, epochs=1, batch_size=4,
                      lr=lambda e: 1e-3, optimizer="adam", lr_scales={"a": 50.0}, quiet=True)
    trainer.run()
    # Adam's first step moves every coordinate by lr (times the sign of its gradient)
    assert torch.allclose(a, torch.full((3,), -0.05)) and torch.allclose(b, torch.full((3,), -1e-3))


def test_variance_training_uses_noise_lr_and_resumes_exactly(tmp_path, digits):

    from lowloss.methods.vardrop import Config, build_variational, load, train_vardrop
    from lowloss.utils import seed_everything

    cfg = Config(data="digits", model="mlp", model_options={"widths": "16"}, posterior="variance", epochs=2,
                        samples=2, noise_lr=0.05, device="cpu")
    full = train_vardrop(cfg, tmp_path / "full", quiet=True, data=digits)
    assert full["config"]["noise_lr"] == 0.05
    train_vardrop(cfg, tmp_path / "half", quiet=True, data=digits, stop_after_epochs=1)
    train_vardrop(cfg, tmp_path / "half", resume=True, quiet=True, data=digits)  # two Adam groups restored
    a, b = load(tmp_path / "full", data=digits).model, load(tmp_path / "half", data=digits).model
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    # with the larger rate the log sigma^2 move much further than with --lr alone
    slow = train_vardrop(replace(cfg, noise_lr=None, epochs=1), tmp_path / "slow", quiet=True, data=digits)
    fast = train_vardrop(replace(cfg, epochs=1), tmp_path / "fast", quiet=True, data=digits)
    assert slow["config"]["noise_lr"] is None
    seed_everything(cfg.seed)  # the start of both runs, as train_vardrop builds it
    start = dict(variational_layers(build_variational(cfg, digits, "cpu")[0]))
    moved = {}
    for name in ("slow", "fast"):
        m = load(tmp_path / name, data=digits).model
        moved[name] = max((layer.log_sigma2 - start[n].log_sigma2).abs().max().item()
                          for n, layer in variational_layers(m))
    assert fast["history"] and moved["fast"] > 5 * moved["slow"]
    with pytest.raises(LowlossError, match="noise-lr"):
        train_vardrop(replace(cfg, noise_lr=-1.0), tmp_path / "bad", quiet=True, data=digits)


def test_lenet5_ref_shapes():
    from lowloss.variational import lenet5_ref

    for shape, feats in (((1, 28, 28), 800), ((1, 8, 8), 200), ((3, 32, 32), 1250)):
        net = lenet5_ref(shape, 10)
        assert net[9].in_features == feats and net[9].out_features == 500 and net[9].bias is None
        v = to_variational(net, "variance", last_posterior="plain")
        assert [m.posterior for _, m in variational_layers(v)] == ["variance"] * 3 and type(v[-1]) is nn.Linear
        assert v.eval()(torch.randn(2, *shape)).shape == (2, 10)
    assert lenet5_ref((1, 28, 28), 10, width=0.5)[0].out_channels == 10
    with pytest.raises(LowlossError, match="too small"):
        lenet5_ref((1, 2, 2), 10)


def test_only_some_layers_become_variational():
    base = build_model("mlp", (1, 8, 8), 10, {"widths": "16,16,16"})  # dense layers net.1, net.3, net.5, net.7
    net = to_variational(base, "variance", layers=[1, "net.5"], last_posterior="plain")
    assert net.variational_layer_names == ("net.1", "net.5")
    assert type(net.net[3]) is nn.Linear and type(net.net[7]) is nn.Linear
    assert torch.equal(net.net[3].weight, base.net[3].weight)  # untouched layers keep their weights
    # the output layer is converted when listed, or when last_posterior names a posterior
    assert to_variational(base, "weight", layers=[4]).variational_layer_names == ("net.7",)
    assert to_variational(base, "variance", layers=[2], last_posterior="weight").variational_layer_names == (
        "net.3", "net.7")
    with pytest.raises(LowlossError, match=r"layer 5 does not exist.*1=net.1, 2=net.3, 3=net.5, 4=net.7"):
        to_variational(base, "variance", layers=[5])
    with pytest.raises(LowlossError, match="unknown layer 'conv1'"):
        to_variational(base, "variance", layers=["conv1"])
    with pytest.raises(LowlossError, match="unknown layer '1'"):  # strings are names, ints positions
        to_variational(base, "variance", layers=["1"])
    with pytest.raises(LowlossError, match="no layer of MLP is left"):
        to_variational(base, "variance", layers=[4], last_posterior="plain")


def test_variance_layers_spec(digits):
    from lowloss.methods.vardrop import Config, build_variational, resolve_variance_layers
    from lowloss.variational import lenet5_ref

    net = lenet5_ref((1, 28, 28), 10)
    assert resolve_variance_layers("all", net) == ["0", "4", "9"]       # conv1, conv2, dense1
    assert resolve_variance_layers("alternate", net) == ["0", "9"]      # conv1, dense1
    assert resolve_variance_layers("first", net) == ["0"]
    assert resolve_variance_layers("last", net) == ["9"]
    assert resolve_variance_layers("2, 3", net) == ["4", "9"]
    with pytest.raises(LowlossError, match="output layer.*--variance-last"):
        resolve_variance_layers("1,4", net)
    with pytest.raises(LowlossError, match="at least one hidden layer"):
        resolve_variance_layers("all", nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))

    cfg = Config(model="mlp", model_options={"widths": "8,8,8"}, posterior="variance", device="cpu")
    names = lambda c: [m.posterior for _, m in variational_layers(build_variational(c, digits, "cpu")[0])]  # noqa: E731
    assert build_variational(cfg, digits, "cpu")[0].variational_layer_names == ("net.5",)  # default: last hidden
    alt = replace(cfg, variance_layers="alternate")
    assert build_variational(alt, digits, "cpu")[0].variational_layer_names == ("net.1", "net.5")
    assert names(replace(cfg, variance_layers="all")) == ["variance"] * 3
    assert names(replace(cfg, posterior="weight")) == ["weight"] * 4    # VD posteriors convert every layer
    # the dropout baseline puts its noise into the variance network's layers
    drop = build_variational(replace(cfg, posterior="dropout"), digits, "cpu")[0]
    assert drop.variational_layer_names == ("net.5",)
    assert names(replace(cfg, posterior="dropout", variance_layers="all")) == ["dropout"] * 3


def test_bad_variance_layers_fail_before_writing(tmp_path, digits):
    from lowloss.methods.vardrop import Config, train_vardrop

    cfg = Config(model="mlp", model_options={"widths": "8"}, posterior="variance", variance_layers="2",
             epochs=1, device="cpu")
    with pytest.raises(LowlossError, match="output layer"):
        train_vardrop(cfg, tmp_path / "bad", quiet=True, data=digits)
    for bad, match in ((dict(anneal_epochs=-1.0), "anneal-epochs"), (dict(noise_lr=0.0), "noise-lr"),
                       (dict(variance_layers="fc9"), "unknown layer 'fc9'.*1=net.1, 2=net.3")):
        with pytest.raises(LowlossError, match=match):
            train_vardrop(replace(cfg, **{"variance_layers": "1", **bad}), tmp_path / "bad", quiet=True, data=digits)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("posterior,param", [("layer", "log_alpha"), ("additive", "log_sigma2")])
def test_noise_lr_moves_log_alpha_and_log_sigma2_of_every_posterior(tmp_path, digits, posterior, param):
    from lowloss.methods.vardrop import Config, build_variational, load, train_vardrop
    from lowloss.utils import seed_everything

    cfg = Config(model="mlp", model_options={"widths": "16"}, posterior=posterior, epochs=1, samples=2,
                        device="cpu")
    seed_everything(cfg.seed)  # the start of every run, as train_vardrop builds it
    start = dict(variational_layers(build_variational(cfg, digits, "cpu")[0]))
    moved = {}
    for name, lr in (("slow", None), ("fast", 0.05)):
        train_vardrop(replace(cfg, noise_lr=lr), tmp_path / name, quiet=True, data=digits)
        m = load(tmp_path / name, data=digits).model
        moved[name] = max((getattr(layer, param) - getattr(start[n], param)).abs().median().item()
                          for n, layer in variational_layers(m))
    assert moved["fast"] > 5 * moved["slow"], moved


def test_variance_network_matches_dropout_with_the_ensemble_scheme(tmp_path, digits):
    """The slides' phenomenon end to end (the quick study's setting, about 15 s): the variance network predicts
    at chance with the mean weights, and its ensemble is within 2 points of Gaussian dropout's."""
    from lowloss.methods.vardrop import Config, train_vardrop

    cfg = Config(model="mlp", model_options={"widths": "512,512"}, posterior="variance,dropout", lr=0.01, epochs=60,
                 device="cpu")
    s = train_vardrop(cfg, tmp_path, quiet=True, data=digits)["schemes"]
    v, d = s["variance"], s["dropout"]
    assert v["deterministic"]["accuracy"] <= 0.2 < 0.9 <= d["deterministic"]["accuracy"]
    assert v["ensemble"]["accuracy"] >= d["ensemble"]["accuracy"] - 0.02
    assert v["ensemble"]["accuracy"] > v["stochastic"]["accuracy"]
    assert v["elbo"] > d["elbo"]  # the variance network has the better ELBO, as in the slides
