"""A whole network's training step split into forward + backward and the optimizer's step, per attention
block: how much of a block's cost in ``cafusion bench --networks`` is the optimizer's work on its
parameters rather than the block's own computation.

PyTorch's Adam and SGD on CPU tensors update one parameter tensor at a time by default, so each
parameter tensor costs a fixed amount per step whatever its size; the block keeps the reference's eight
(fc1, fc2 and two router convolutions, weight and bias each; SE has four). Same networks, seeds and
inputs as the benchmark; the contenders are timed in alternation (``cafusion.bench.measure``). Prints a
table and writes JSON: ``python scripts/step_split.py [--networks cnn1d] [--out bench-results]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from cafusion.bench.measure import interleaved_ms
from cafusion.bench.networks import CLASSES, NETWORKS
from cafusion.dispatch import cpu_kernels_ready

ATTENTIONS = ("none", "se", "caft", "caft_sum")


def split(name: str, repeats: int) -> list[dict[str, object]]:
    """Per attention: parameter tensors, ms of forward + backward, ms of the optimizer's step."""
    net = NETWORKS[name]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(net.input_shape, generator=gen)
    target = torch.randint(0, CLASSES, (net.input_shape[0],), generator=gen)
    fns, tensors = {}, {}
    for attention in ATTENTIONS:
        torch.manual_seed(0)
        model = net.build(attention).train()
        opt = net.optimizer(model.parameters())
        tensors[attention] = sum(1 for _ in model.parameters())

        def forward_backward(model: torch.nn.Module = model) -> None:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), target).backward()  # type: ignore[no-untyped-call]

        forward_backward()  # gradients for the optimizer's step below
        fns[f"{attention} fwd+bwd"] = forward_backward
        fns[f"{attention} optimizer"] = opt.step
    ms = interleaved_ms(fns, torch.device("cpu"), repeats)
    rows = []
    for attention in ATTENTIONS:
        fb, step = ms[f"{attention} fwd+bwd"], ms[f"{attention} optimizer"]
        rows.append({"network": name, "attention": attention, "parameter_tensors": tensors[attention],
                     "fwd_bwd_ms": fb, "optimizer_ms": step, "step_ms": fb + step})  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default="cnn1d", help="comma-separated, from cafusion bench --networks")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--out", default="bench-results", help="folder for step_split.json")
    args = parser.parse_args()
    unknown = [n for n in args.networks.split(",") if n not in NETWORKS]
    if unknown:
        raise SystemExit(f"step_split: --networks must be among {sorted(NETWORKS)}, got {unknown}")
    torch.set_num_threads(2)
    cpu_kernels_ready()
    rows = [row for name in args.networks.split(",") for row in split(name, args.repeats)]
    print(f"{'network':>10} {'attention':>9} {'tensors':>7} {'fwd+bwd ms':>10} {'optimizer ms':>12} {'sum ms':>7}")
    for r in rows:
        print(f"{r['network']:>10} {r['attention']:>9} {r['parameter_tensors']:>7} {r['fwd_bwd_ms']:>10.2f} "
              f"{r['optimizer_ms']:>12.2f} {r['step_ms']:>7.2f}")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_split.json").write_text(json.dumps({"threads": 2, "rows": rows}, indent=1))
    print(f"wrote {out / 'step_split.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
