"""Does a Matryoshka SAE's first prefix reconstruct better than a BatchTopK SAE of that width
trained alone on the same tokens?

    python benchmarks/matryoshka_prefix.py [--d-sae 1024] [--groups 64,64,128,256,512]
                                           [--k 16] [--small-k K] [--steps 400] [--batch 512]
                                           [--no-full-baseline] [--no-l0-match]

Activations of the embedded model (``train.py``'s default data and hook) are read once; every
SAE then trains on the same batches in the same order, with SAEModule's recipe (b_dec at the
geometric median of the first 4096 tokens, unit-norm decoder rows with the parallel gradient
projected out, Adam at lr 1e-3 with conf/train.yaml's betas, 50 warm-up steps, the losses of
conf/loss):

- ``matryoshka``: ``MatryoshkaSAE`` of width ``--d-sae`` with ``--groups`` (the first prefix
  is the first group), mean L0 ``--k`` over the whole dictionary, ``MatryoshkaLoss``;
- ``batchtopk alone``: ``BatchTopKSAE`` of the first prefix's width, mean L0 ``--small-k``
  (default ``--k``), ``TopKLoss``;
- ``batchtopk full``: ``BatchTopKSAE`` of width ``--d-sae``, mean L0 ``--k``: what the nested
  losses cost the whole dictionary (``--no-full-baseline`` skips it).
- ``batchtopk alone`` at the prefix's sparsity: trained after the others with ``k`` the
  Matryoshka prefix's held-out L0, rounded (``--no-l0-match`` skips it).

Scored on held-out activations (the validation contexts), each SAE in eval mode (the
running-threshold JumpReLU it exports as): L0, MSE (squared error summed over d_in, mean over
tokens) and FVU (squared error over the activations' total variance); the Matryoshka SAE both
through its first prefix alone (``decode_prefix``) and whole. Then the ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sae_lightning.losses import MatryoshkaLoss, TopKLoss
from sae_lightning.models import load_embedded
from sae_lightning.saes import SAE, BatchTopKSAE, MatryoshkaSAE
from sae_lightning.schedules import warmup_decay

CONF = Path(__file__).resolve().parents[1] / "conf"
B_DEC_TOKENS, WARMUP, LR = 4096, 50, 1e-3


def activations(n_train: int, val_contexts: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_train`` shuffled training activations and the validation contexts' ones."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.val_contexts={val_contexts}", f"seed={seed}"])
    datamodule = instantiate(cfg.data)
    spec = datamodule.set_model(load_embedded())
    datamodule.prepare_contexts()
    per_ctx = datamodule.n_ctx - int(datamodule.drop_bos)
    rows = datamodule.train_ctx[: -(-n_train // per_ctx)]
    with torch.inference_mode():
        train = torch.cat([spec.trained(spec.capture(c)) for c in rows.split(32)])[:n_train]
        held = spec.trained(spec.capture(datamodule.val_ctx))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train[order].clone(), held.clone()


def fit(sae: SAE, loss_fn, x: torch.Tensor, batch: int, steps: int) -> SAE:
    """SAEModule's training recipe, without Lightning, over ``x`` in order."""
    sae.init_b_dec(x[:B_DEC_TOKENS], "geometric_median")
    sae.set_decoder_norm_to_unit_norm()
    opt = torch.optim.Adam(sae.parameters(), lr=LR, betas=(0.9, 0.999))
    sched = warmup_decay(opt, total_steps=steps, warmup_steps=WARMUP)
    for step in range(steps):
        xb = x[step * batch : (step + 1) * batch]
        loss_fn(xb, sae(xb), sae, step).loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        sae.set_decoder_norm_to_unit_norm()
    return sae.eval()


def scores(x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor) -> dict[str, float]:
    err = (x_hat - x).pow(2).sum(-1)  # [n]
    total = (x - x.mean(0)).pow(2).sum(-1)  # [n]
    return {
        "L0": float((codes > 0).sum(-1).float().mean()),
        "MSE": float(err.mean()),
        "FVU": float(err.sum() / total.sum()),
    }


@torch.no_grad()
def evaluate(sae: SAE, x: torch.Tensor, prefix: int | None = None) -> dict[str, float]:
    """``sae``'s scores on ``x``: the whole dictionary, or (Matryoshka) its first ``prefix``."""
    f = torch.cat([sae.encode(chunk) for chunk in x.split(4096)])  # [n, d_sae]
    if prefix is None:
        return scores(x, sae.decode(f), f)
    assert isinstance(sae, MatryoshkaSAE)
    return scores(x, sae.decode_prefix(f, prefix), f[:, :prefix])


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--groups", default="64,64,128,256,512")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--small-k", type=int, default=None, help="default: --k")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--val-contexts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-full-baseline", action="store_true")
    parser.add_argument("--no-l0-match", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = parse()
    groups = [int(g) for g in args.groups.split(",")]
    small_k = args.small_k or args.k
    start = time.perf_counter()
    x, held = activations(args.steps * args.batch, args.val_contexts, args.seed)
    print(f"{len(x)} training and {len(held)} held-out activations "
          f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    d_in = x.shape[1]
    runs = {
        "matryoshka": (lambda: MatryoshkaSAE(d_in, args.d_sae, args.k, groups), MatryoshkaLoss()),
        "alone": (lambda: BatchTopKSAE(d_in, groups[0], small_k), TopKLoss()),
    }
    if not args.no_full_baseline:
        runs["full"] = (lambda: BatchTopKSAE(d_in, args.d_sae, args.k), TopKLoss())
    trained: dict[str, SAE] = {}
    for name, (make, loss_fn) in runs.items():
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        trained[name] = fit(make(), loss_fn, x, args.batch, args.steps)
        print(f"{name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
    prefix_scores = evaluate(trained["matryoshka"], held, groups[0])
    rows = {
        f"matryoshka first prefix ({groups[0]})": prefix_scores,
        f"batchtopk alone ({groups[0]}, k {small_k})": evaluate(trained["alone"], held),
        f"matryoshka full ({args.d_sae}, k {args.k})": evaluate(trained["matryoshka"], held),
    }
    if "full" in trained:
        rows[f"batchtopk full ({args.d_sae}, k {args.k})"] = evaluate(trained["full"], held)
    if not args.no_l0_match:  # the same sparsity as the prefix: k = its held-out L0
        k0 = max(1, round(prefix_scores["L0"]))
        torch.manual_seed(args.seed)
        matched = fit(BatchTopKSAE(d_in, groups[0], k0), TopKLoss(), x, args.batch, args.steps)
        rows[f"batchtopk alone ({groups[0]}, k {k0})"] = evaluate(matched, held)
    print(f"\n{args.steps} steps of {args.batch} tokens; groups {groups}")
    print(f"{'':36s} {'L0':>7s} {'MSE':>9s} {'FVU':>7s}")
    for label, s in rows.items():
        print(f"{label:36s} {s['L0']:7.2f} {s['MSE']:9.3f} {s['FVU']:7.4f}")
    labels = list(rows)
    for label in labels[1:]:
        if label.startswith("batchtopk alone"):
            ratio = prefix_scores["FVU"] / rows[label]["FVU"]
            print(f"\nfirst prefix FVU / {label} FVU: {ratio:.3f} (the prefix reconstructs "
                  f"{'better' if ratio < 1 else 'worse'})", end="")  # fmt: skip
    full = rows[labels[2]]
    if "full" in trained:
        base = rows[f"batchtopk full ({args.d_sae}, k {args.k})"]
        print(f"\nmatryoshka full FVU / batchtopk full FVU: {full['FVU'] / base['FVU']:.3f}")
    print()


if __name__ == "__main__":
    main()
