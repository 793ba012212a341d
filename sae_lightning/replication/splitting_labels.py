"""The top tokens of the features in the concepts' family trees (feature splitting's second
pass over the tokens): each tree node is labelled with the tokens its feature fires on most.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sae_lightning.analysis.selection import encode_features
from sae_lightning.metrics.correlation import FiringCounts
from sae_lightning.replication.splitting_tree import Node
from sae_lightning.saes import SAE


def _top_tokens(fires: Tensor, mass: Tensor, strings: Sequence[str], n: int) -> list[dict]:
    """The ``n`` tokens a feature fired on most often (ties: more activation mass)."""
    total = int(fires.sum())
    by_mass = torch.argsort(mass, descending=True, stable=True)
    order = by_mass[torch.argsort(fires[by_mass], descending=True, stable=True)][:n].tolist()
    return [
        {"token": strings[t], "fires": int(fires[t]), "share": int(fires[t]) / total}
        for t in order
        if fires[t] > 0
    ]


@torch.no_grad()
def node_tokens(
    saes: Sequence[SAE], wanted: dict[int, list[int]], batches, strings: list[str], n: int
) -> dict[tuple[int, int], list[dict]]:
    """Top tokens of the features ``wanted[level]`` of each dictionary (a second pass)."""
    counts = {k: FiringCounts(len(f), len(strings)) for k, f in wanted.items() if f}
    index = {k: torch.tensor(f) for k, f in wanted.items() if f}
    for x, tokens in batches:
        for k, metric in counts.items():
            sae = saes[k]
            feats = encode_features(sae, x.to(sae.W_enc.dtype), index[k].to(x.device))
            metric.to(x.device).update(feats, tokens)
    out = {}
    for k, metric in counts.items():
        mass, fires, _ = metric.compute()
        for row, feature in enumerate(wanted[k]):
            out[(k, feature)] = _top_tokens(fires[row].cpu(), mass[row].cpu(), strings, n)
    return out


def label_nodes(
    trees: Sequence[Node], saes: Sequence[SAE], batches, strings: list[str], n: int
) -> None:
    """Set every tree node's ``top_tokens`` (one pass over ``batches`` for all of them)."""
    wanted = {
        k: sorted({node.index for t in trees for node in t.walk() if node.level == k})
        for k in range(len(saes))
    }
    tokens_of = node_tokens(saes, wanted, batches, strings, n)
    for tree in trees:
        for node in tree.walk():
            node.top_tokens = tokens_of.get((node.level, node.index), [])
