"""The router probes of the collapse study (cafusion.compare.probes): the block when off, each remedy when on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cafusion.compare.probes import AuxLoss, RouterNormProbe, RouterProbe, kl_to_uniform
from cafusion.layers.caft_layer import ChannelAttentionFusionTLayer
from cafusion.layers.registry import create_attention
from cafusion.models.timeseries import FCN


def _layers(probe: RouterProbe) -> tuple[nn.Conv2d, nn.Conv2d]:
    """The router's two 1x1 convolutions."""
    first, last = probe._router_layers()
    assert first is not None and last is not None
    return first, last


def _bias(probe: RouterProbe) -> torch.Tensor:
    """The bias of the router's last layer: its two logits' offsets."""
    bias = _layers(probe)[1].bias
    assert bias is not None
    return bias


def _bias_grad(probe: RouterProbe) -> torch.Tensor:
    grad = _bias(probe).grad
    assert grad is not None
    return grad


def _backward(t: torch.Tensor) -> None:
    t.backward()  # type: ignore[no-untyped-call]


def _pair(**options: object) -> tuple[ChannelAttentionFusionTLayer, RouterProbe]:
    torch.manual_seed(0)
    block = ChannelAttentionFusionTLayer(16, impl="reference")
    torch.manual_seed(0)
    probe = RouterProbe(16, **options)  # type: ignore[arg-type]
    return block, probe


def _weights(probe: RouterProbe, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = probe.register_inspector(lambda m, ca, w, t: seen.append(torch.as_tensor(w).detach()))
    probe(x)
    handle.remove()
    return seen[0]


def _logits(probe: RouterProbe, x: torch.Tensor) -> torch.Tensor:
    """The router's raw logits r, from its own layers (no tau, no floor)."""
    first, last = _layers(probe)
    s = torch.cat([x.mean(2), x.amax(2)], 1)
    h = F.relu(F.linear(s, first.weight.flatten(1), first.bias))
    return F.linear(h, last.weight.flatten(1), last.bias)


def _saturate(probe: RouterProbe) -> None:
    """Make the router's logits huge, as a collapsed router's are."""
    with torch.no_grad():
        _bias(probe).copy_(torch.tensor([-30.0, 30.0]))


def test_every_option_off_is_the_block_forward_and_backward() -> None:
    block, probe = _pair()
    assert probe.state_dict().keys() == block.state_dict().keys()
    for k, v in block.state_dict().items():  # the same seed draws the same initial weights
        torch.testing.assert_close(probe.state_dict()[k], v, rtol=0, atol=0)
    x = torch.randn(4, 16, 11) * 3
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = block(x1), probe(x2)
    torch.testing.assert_close(y2, y1, atol=1e-6, rtol=1e-5)
    _backward((y1 * torch.arange(11.0)).sum())
    _backward((y2 * torch.arange(11.0)).sum())
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-4)
    for (name, p1), (_, p2) in zip(block.named_parameters(), probe.named_parameters(), strict=True):
        torch.testing.assert_close(p2.grad, p1.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert probe.last_router_penalty is None
    # The explicit 'off' values are the defaults, and registering does not change the block itself.
    _, off = _pair(router_tau=1.0, router_floor=0.0, router_entropy=0.0, router_norm=False)
    torch.testing.assert_close(off(x), probe(x), rtol=0, atol=0)
    assert type(create_attention("caft_router", 16)) is RouterProbe
    assert type(create_attention("caft", 16)) is ChannelAttentionFusionTLayer


def test_fcn_with_a_probe_starts_from_the_caft_weights_of_the_seed() -> None:
    """The paired comparison against caft is about the remedy alone: same seed, same initial weights."""
    torch.manual_seed(3)
    caft = FCN(1, 3, attention="caft").state_dict()
    torch.manual_seed(3)
    probe = FCN(1, 3, attention="caft_router", attention_kwargs={"router_entropy": 0.05, "router_tau": 4.0})
    assert probe.state_dict().keys() == caft.keys()
    assert all(torch.equal(probe.state_dict()[k], v) for k, v in caft.items())


def test_temperature_divides_the_router_logits() -> None:
    _, probe = _pair(router_tau=4.0)
    x = torch.randn(5, 16, 9) * 3
    r = _logits(probe, x)
    torch.testing.assert_close(_weights(probe, x), torch.softmax(r / 4, 1))
    assert not torch.allclose(_weights(probe, x), torch.softmax(r, 1))
    # Where tau = 1 is saturated, tau = 4 still passes a gradient to the router.
    grads = {}
    for tau in (1.0, 4.0):
        _, p = _pair(router_tau=tau)
        with torch.no_grad():
            _bias(p).copy_(torch.tensor([-6.0, 6.0]))  # logit gap 12: w_avg ~ 6e-6 at tau = 1
        _backward(p(x).sum())
        grads[tau] = float(_bias_grad(p).abs().sum())
    assert grads[4.0] > 100 * grads[1.0]


def test_floor_keeps_both_paths_in_the_fusion() -> None:
    _, probe = _pair(router_floor=0.05)
    _saturate(probe)
    x = torch.randn(5, 16, 9)
    w = _weights(probe, x)
    assert torch.all(w >= 0.05 - 1e-7) and torch.all(w <= 0.95 + 1e-7)
    torch.testing.assert_close(w, 0.05 + 0.9 * torch.softmax(_logits(probe, x), 1))
    torch.testing.assert_close(w[:, 0], torch.full((5,), 0.05))  # a saturated router sits on the floor
    # The floor keeps 5% of the avg path in z, but the saturated router itself gets no gradient.
    _backward(probe(x).sum())
    assert float(_bias_grad(probe).abs().max()) < 1e-20


def test_entropy_term_trains_as_if_added_to_the_loss() -> None:
    lam = 0.05
    torch.manual_seed(1)
    x, target = torch.randn(6, 16, 10) * 2, torch.randn(6, 16, 10)
    _, probe = _pair(router_entropy=lam)
    _, plain = _pair()
    y = probe(x)
    torch.testing.assert_close(y, plain(x), rtol=0, atol=0)  # the output is unchanged
    _backward(F.mse_loss(y, target))
    penalty = kl_to_uniform(_logits(plain, x))
    assert probe.last_router_penalty is not None
    torch.testing.assert_close(probe.last_router_penalty, penalty.detach())
    _backward(F.mse_loss(plain(x), target) + lam * penalty)  # the loss a trainer would have to add
    for (name, p1), (_, p2) in zip(plain.named_parameters(), probe.named_parameters(), strict=True):
        torch.testing.assert_close(p2.grad, p1.grad, atol=1e-7, rtol=1e-5, msg=name)
    assert float(_bias_grad(probe).abs().sum()) > 0
    # Evaluation adds nothing and records nothing.
    probe.last_router_penalty = None
    with torch.no_grad():
        probe(x)
    assert probe.last_router_penalty is None


def test_entropy_term_pulls_a_collapsing_router_back() -> None:
    """Trained on a task that pays nothing for routing, the penalty alone moves w_avg to 1/2."""
    torch.manual_seed(2)
    _, probe = _pair(router_entropy=0.05)
    first, last = _layers(probe)
    with torch.no_grad():
        _bias(probe).copy_(torch.tensor([-2.0, 2.0]))  # w_avg ~ 0.02 at the start
    x = torch.randn(8, 16, 10)
    opt = torch.optim.Adam([*first.parameters(), *last.parameters()], lr=0.05)
    start = float(_weights(probe, x)[:, 0].mean())
    for _ in range(100):
        opt.zero_grad()
        _backward((probe(x) * 0).sum())
        opt.step()
    end = float(_weights(probe, x)[:, 0].mean())
    assert start < 0.05 and abs(end - 0.5) < 0.05


def test_kl_to_uniform() -> None:
    assert float(kl_to_uniform(torch.zeros(3, 2))) == pytest.approx(0.0, abs=1e-7)
    w = torch.tensor([[0.01, 0.99]])
    expected = math.log(2) + 0.01 * math.log(0.01) + 0.99 * math.log(0.99)
    assert float(kl_to_uniform(w.log())) == pytest.approx(expected, rel=1e-5)


def test_aux_loss_returns_y_and_gives_the_term_gradient_one() -> None:
    y = torch.randn(3, requires_grad=True)
    t = torch.tensor(2.0, requires_grad=True)
    out = AuxLoss.apply(y, t * 3)
    torch.testing.assert_close(out, y.detach())
    _backward((out * 5).sum())
    torch.testing.assert_close(y.grad, torch.full((3,), 5.0))
    torch.testing.assert_close(t.grad, torch.tensor(3.0))


def test_router_norm_probe_keeps_its_name_and_default() -> None:
    probe = create_attention("caft_rn", 16)
    assert isinstance(probe, RouterNormProbe) and probe.router_norm
    assert "router_norm=True" in repr(probe) and "router_tau" not in repr(probe)
    assert "router_tau=4.0" in repr(RouterProbe(16, router_tau=4))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"router_tau": 0}, "router_tau must be > 0"),
        ({"router_tau": float("inf")}, "router_tau must be a finite number"),
        ({"router_floor": 0.5}, "router_floor must be in [0, 0.5)"),
        ({"router_floor": -0.1}, "router_floor must be in [0, 0.5)"),
        ({"router_entropy": -1.0}, "router_entropy must be >= 0"),
        ({"router_entropy": True}, "router_entropy must be a finite number"),
        ({"fusion": "sum"}, "softmax-router blocks"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        RouterProbe(16, **options)  # type: ignore[arg-type]


def test_compare_runs_the_probe_variants(tmp_path: Path) -> None:
    """End to end: the variants as the study runs them, with router diagnostics in each result."""
    pytest.importorskip("aeon")
    pytest.importorskip("scipy")
    from cafusion.cli.main import main

    out = tmp_path / "c"
    argv = ["compare", "--data", "ucr:UnitTest", "--model", "fcn", "--attention", "caft", "--seeds", "1"]
    argv += ["--epochs", "2", "--threads", "1", "--no-figures", "--no-progress", "--out", str(out)]
    argv += ["--variant", "caft_floor=caft_router:router_floor=0.05"]
    argv += ["--variant", "caft_ent=caft_router:router_entropy=0.05"]
    assert main(argv) == 0
    floor = json.loads((out / "runs" / "UnitTest__fcn__caft_floor__seed0.json").read_text())
    assert floor["settings"]["attention_kwargs"] == {"router_floor": 0.05}
    for block in floor["router"].values():
        assert 0.05 - 1e-6 <= block["w_avg_mean"] <= 0.95 + 1e-6
        assert len(block["router_grad_per_epoch"]) == 2
    assert (out / "runs" / "UnitTest__fcn__caft_ent__seed0.json").exists()
    bad = ["compare", "--data", "ucr:UnitTest", "--model", "fcn", "--variant", "x=caft_router:router_floor=0.7"]
    assert main([*bad, "--epochs", "1", "--out", str(tmp_path / "bad")]) == 2
