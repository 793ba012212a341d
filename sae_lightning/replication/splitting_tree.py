"""Feature splitting, the numbers: match features across dictionary sizes, build families.

Given feature activations of dictionaries of growing size on the same tokens,
:class:`SplitAccumulator` keeps bounded running sums (densities, the activation correlation
of every feature of each dictionary with every feature of the next smaller one, and each
feature's activation mass and firings on each concept's tokens). :func:`match_level` then
gives every feature of the larger dictionary its **parent**: the feature of the smaller one
it matches best, by activation correlation (Pearson over the tokens; the signed maximum) or
by decoder cosine (the rows of ``W_dec``), with both numbers kept for each pair. A
**family** is a small feature with its **children**: the features of the next dictionary
whose parent it is with a match of at least ``threshold`` (0.5 by default: above it a child
shares more than a quarter of its variance with its parent, and a random pair of directions
in a few hundred dimensions has a cosine near 0). :func:`family_tree` follows the children
through every size.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_lightning.metrics.correlation import (
    FiringCounts,
    StreamingPearson,
    _pearson_compute,
    proxy_sensitivity,
)
from sae_lightning.metrics.density import FeatureDensity
from sae_lightning.sparse import firing_entries

Measure = Literal["correlation", "cosine"]
MEASURES: tuple[str, ...] = ("correlation", "cosine")
DEFAULT_THRESHOLD = 0.5
ROW_CHUNK = 1024
"""Rows of the ``[d_large, d_small]`` correlation and cosine matrices computed at a time."""


class SplitAccumulator:
    """Running sums over the tokens for dictionaries ``d_0 < d_1 < ...`` (bounded memory).

    Args:
        widths: ``d_sae`` of each dictionary, smallest first.
        concept_of_token: ``[d_vocab]`` long: the concept index of each vocabulary token,
            ``n_concepts`` for a token of no concept.
        n_concepts: Number of concepts (0 allowed).
    """

    def __init__(self, widths: Sequence[int], concept_of_token: Tensor, n_concepts: int) -> None:
        self.widths = list(widths)
        self.concept_of_token = concept_of_token.long()
        self.densities = [FeatureDensity(d) for d in widths]
        # x: the larger dictionary (sparse entries), y: the smaller one (dense)
        self.pearsons = [StreamingPearson(big, small) for small, big in pairwise(widths)]
        self.concepts = [FiringCounts(d, n_concepts + 1) for d in widths]

    def to(self, device: torch.device | str) -> SplitAccumulator:
        for metric in (*self.densities, *self.pearsons, *self.concepts):
            metric.to(device)
        self.concept_of_token = self.concept_of_token.to(device)
        return self

    def update(self, acts: Sequence[Float[Tensor, "n _"]], tokens: Int[Tensor, " n"]) -> None:
        """Add one batch: ``acts[k]`` is dictionary ``k``'s ``[n, d_k]`` activations."""
        if len(acts) != len(self.widths):
            raise ValueError(f"expected {len(self.widths)} activation matrices, got {len(acts)}")
        concept_ids = self.concept_of_token[tokens]  # [n]
        entries = [firing_entries(a, "feature") for a in acts]
        for k, e in enumerate(entries):
            self.densities[k].update(e)
            self.concepts[k].update_entries(e.rows, e.cols, e.values, concept_ids)
        for k, pearson in enumerate(self.pearsons):
            big = entries[k + 1]
            pearson.update_entries(big.rows, big.cols, big.values, acts[k].float())


@dataclass
class LevelMatch:
    """Every feature of dictionary ``k + 1`` matched to dictionary ``k`` (lists by index)."""

    parent: list[int]
    """The best-matching smaller feature, by the chosen measure."""
    match: list[float]
    """The chosen measure at that parent."""
    correlation: list[float]
    """Activation correlation with that parent."""
    cosine: list[float]
    """Decoder cosine with that parent."""
    best_correlation: list[float]
    """The largest correlation with any smaller feature (whatever the measure)."""
    best_cosine: list[float]
    """The largest decoder cosine with any smaller feature."""


def _unit_rows(w: Float[Tensor, "d d_in"]) -> Float[Tensor, "d d_in"]:
    return w.float() / w.float().norm(dim=1, keepdim=True).clamp(min=1e-12)


def match_level(
    pearson: StreamingPearson,
    w_dec_small: Float[Tensor, "d_small d_in"],
    w_dec_large: Float[Tensor, "d_large d_in"],
    measure: Measure = "correlation",
) -> LevelMatch:
    """Parents of the larger dictionary's features (rows of ``pearson``: large x small).

    The correlation matrix is computed ``ROW_CHUNK`` rows at a time from the metric's
    states, so a 16,384 x 4,096 level never holds more than a few chunks in memory.
    """
    if measure not in MEASURES:
        raise ValueError(f"match={measure!r} is not a measure; valid: {list(MEASURES)}")
    small, large = _unit_rows(w_dec_small.detach()), _unit_rows(w_dec_large.detach())
    small = small.to(pearson.sum_xy.device)
    out: dict[str, list[Tensor]] = {k: [] for k in LevelMatch.__dataclass_fields__}
    for first in range(0, pearson.n_x, ROW_CHUNK):
        rows = slice(first, first + ROW_CHUNK)
        corr = _pearson_compute(
            pearson.sum_x[rows],
            pearson.sum_y,
            pearson.sum_xx[rows],
            pearson.sum_yy,
            pearson.sum_xy[rows],
            pearson.n,
        ).float()  # [r, d_small]  (y_shift is 0: sum_xy is the raw cross sum)
        cos = large[rows].to(small.device) @ small.T  # [r, d_small]
        chosen = corr if measure == "correlation" else cos
        best, parent = chosen.max(dim=1)
        out["parent"].append(parent)
        out["match"].append(best)
        out["correlation"].append(corr.gather(1, parent[:, None])[:, 0])
        out["cosine"].append(cos.gather(1, parent[:, None])[:, 0])
        out["best_correlation"].append(corr.max(dim=1).values)
        out["best_cosine"].append(cos.max(dim=1).values)
    return LevelMatch(**{k: torch.cat(v).cpu().tolist() for k, v in out.items()})


def children_of(level: LevelMatch, threshold: float) -> dict[int, list[int]]:
    """Smaller feature -> its children (match >= ``threshold``), best match first."""
    kids: dict[int, list[int]] = {}
    for child, (parent, m) in enumerate(zip(level.parent, level.match, strict=True)):
        if m >= threshold:
            kids.setdefault(parent, []).append(child)
    for parent in kids:
        kids[parent].sort(key=lambda c: (-level.match[c], c))
    return kids


@dataclass
class Node:
    """One feature of a family tree."""

    level: int
    index: int
    density: float
    correlation: float | None = None
    """Activation correlation with the parent (None at the root)."""
    cosine: float | None = None
    """Decoder cosine with the parent (None at the root)."""
    n_children: int = 0
    """Children with match >= threshold (``children`` may show fewer)."""
    top_tokens: list[dict] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    def walk(self) -> list[Node]:
        """This node and every descendant, depth first."""
        return [self, *(n for c in self.children for n in c.walk())]

    def to_dict(self) -> dict:
        return asdict(self)


def family_tree(
    root: int,
    levels: Sequence[LevelMatch],
    densities: Sequence[Sequence[float]],
    threshold: float = DEFAULT_THRESHOLD,
    max_children: int | None = None,
) -> Node:
    """The family of feature ``root`` of the smallest dictionary through every larger one;
    each node keeps at most ``max_children`` children (the best matches; None: all)."""
    kids = [children_of(level, threshold) for level in levels]

    def grow(node: Node) -> Node:
        if node.level < len(levels):
            level, found = levels[node.level], kids[node.level].get(node.index, [])
            node.n_children = len(found)
            for c in found[:max_children]:
                child = Node(
                    node.level + 1, c, float(densities[node.level + 1][c]),
                    correlation=level.correlation[c], cosine=level.cosine[c],
                )  # fmt: skip
                node.children.append(grow(child))
        return node

    return grow(Node(0, root, float(densities[0][root])))


def concept_scores(counts: FiringCounts, concept: int) -> dict[str, Float[Tensor, " d"]]:
    """Per feature: ``precision`` (share of its activation mass on the concept's tokens),
    ``sensitivity`` (share of the concept's token occurrences it fires on) and their product
    ``score`` (the same product of a specificity and a sensitivity that
    :mod:`.concepts` ranks by, here from the counts of the pass)."""
    mass, fires, token_counts = counts.compute()  # [d, C+1], [d, C+1], [C+1]
    mask = torch.zeros(token_counts.shape[0], dtype=torch.bool, device=fires.device)
    mask[concept] = True
    total = mass.sum(dim=1)
    precision = torch.where(total > 0, mass[:, concept] / total.clamp(min=1e-30), 0.0)
    sensitivity = proxy_sensitivity(fires, token_counts, mask).nan_to_num(0.0)
    return {"precision": precision, "sensitivity": sensitivity, "score": precision * sensitivity}


def best_feature(scores: dict[str, Tensor]) -> dict | None:
    """The feature of largest ``score`` (ties: the smaller index), with its numbers and the
    runner-up; None when no feature scores above 0."""
    score = scores["score"]
    if score.numel() == 0 or float(score.max()) <= 0:
        return None
    order = sorted(range(score.numel()), key=lambda i: (-float(score[i]), i))[:2]
    pick = {k: float(v[order[0]]) for k, v in scores.items()}
    runner = order[1] if len(order) > 1 and float(score[order[1]]) > 0 else None
    return {"feature": order[0], **pick, "runner_up": runner}


def concept_families(
    counts: Sequence[FiringCounts],
    concepts: dict[str, list[str]],
    levels: Sequence[LevelMatch],
    densities: Sequence[Sequence[float]],
    threshold: float = DEFAULT_THRESHOLD,
    max_children: int | None = None,
) -> dict[str, dict]:
    """Per concept (``counts[k]``'s columns, in ``concepts``' order): its tokens, the best
    feature of each dictionary (``picks``; from the second on with its parent and their
    correlation and cosine, so a best feature outside the tree shows where it hangs) and
    the family tree rooted at the smallest dictionary's pick (None when nothing fires on it).
    """
    families = {}
    for c, (name, tokens) in enumerate(concepts.items()):
        picks = [best_feature(concept_scores(per_sae, c)) for per_sae in counts]
        for k, pick in enumerate(picks[1:]):
            if pick is not None:
                f, level = pick["feature"], levels[k]
                pick |= {"parent": level.parent[f], "parent_correlation": level.correlation[f]}
                pick["parent_cosine"] = level.cosine[f]
        tree = None
        if picks[0] is not None:
            tree = family_tree(picks[0]["feature"], levels, densities, threshold, max_children)
        families[name] = {"tokens": tokens, "picks": picks, "tree": tree}
    return families


def level_summary(level: LevelMatch, density_large: Sequence[float], threshold: float) -> dict:
    """Population figures of one level: live features, median best matches, families."""
    live = [i for i, d in enumerate(density_large) if d > 0]
    kids = children_of(level, threshold)
    sizes = [len(c) for c in kids.values()]

    def median(values: list[float]) -> float | None:
        return float(statistics.median(values)) if values else None

    return {
        "n_large": len(level.parent),
        "n_live_large": len(live),
        "median_best_correlation": median([level.best_correlation[i] for i in live]),
        "median_best_cosine": median([level.best_cosine[i] for i in live]),
        "fraction_matched": (
            sum(level.match[i] >= threshold for i in live) / len(live) if live else None
        ),
        "parents_with_children": len(kids),
        "parents_split": sum(s >= 2 for s in sizes),
        "largest_family": max(sizes, default=0),
    }
