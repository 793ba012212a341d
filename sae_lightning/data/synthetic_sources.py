"""Planted ground truth for crosscoders: several synthetic "models" that share some features.

Each of ``n_sources`` sources has its own ``d_source``-wide activation space. A true feature
is a sparse code (as in :class:`~sae_lightning.data.synthetic.SyntheticDictionary`) that
writes a unit direction into every source it belongs to: a *shared* feature's one code
drives a direction in every source (a different direction in each), an *exclusive* feature
writes into one source only. The sources' activations for one sample are concatenated,
``x = [x_0 | x_1 | ...]``: the input a crosscoder reads. With two sources and
``shared_fraction=0.5``: half the features shared, a quarter A-only, a quarter B-only.

A crosscoder that recovers a true feature should give it a decoder row along the feature's
concatenated direction and a relative decoder norm (B / (A + B)) near 0.5 (shared), 0 (A)
or 1 (B); :func:`sharing_recovery` scores that, :class:`SharingRecovery` logs it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from typing_extensions import override

from sae_lightning.data.synthetic import SyntheticDictionary
from sae_lightning.saes.crosscoder import SHARED_BAND, CrosscoderSAE, classify_relative_norms


class SharedSourcesDictionary(SyntheticDictionary):
    """True features over ``n_sources`` concatenated sources, a fraction of them shared.

    The first ``round(shared_fraction * n_features)`` features are shared by every source;
    the rest are split as evenly as possible among the sources (source 0 first), each
    exclusive to one. ``directions`` is ``[n_features, n_sources * d_source]``, a unit
    block per source the feature belongs to and zeros elsewhere (row norm ``sqrt(#sources)``).

    Args:
        d_source: Width of one source's activations.
        n_sources: Number of sources (>= 2).
        n_features: Number of true features (codes).
        shared_fraction: Fraction of the features shared by every source, in [0, 1].
        p_active: Probability that a feature is active on a sample.
        max_magnitude: Active magnitudes are uniform on ``(0, max_magnitude]``.
        noise_std: Standard deviation of isotropic Gaussian noise added to ``x``.
        seed: Seeds the directions.

    Raises:
        ValueError: For a bad size, probability or fraction (the message names it).

    Example:
        >>> d = SharedSourcesDictionary(d_source=8, n_features=16)
        >>> tuple(d.directions.shape), d.membership.sum(0).tolist()
        ((16, 16), [12, 12])
    """

    def __init__(
        self,
        d_source: int = 32,
        n_sources: int = 2,
        n_features: int = 128,
        shared_fraction: float = 0.5,
        p_active: float = 0.02,
        max_magnitude: float = 1.0,
        noise_std: float = 0.0,
        seed: int = 0,
    ) -> None:
        if isinstance(n_sources, bool) or not isinstance(n_sources, int) or n_sources < 2:
            raise ValueError(f"n_sources must be an integer >= 2, got {n_sources!r}")
        if not 0 <= shared_fraction <= 1:
            raise ValueError(f"shared_fraction must be in [0, 1], got {shared_fraction!r}")
        if d_source < 1:
            raise ValueError(f"d_source must be a positive int, got {d_source!r}")
        super().__init__(
            d_in=n_sources * d_source,
            n_features=n_features,
            p_active=p_active,
            max_magnitude=max_magnitude,
            noise_std=noise_std,
            seed=seed,
        )
        self.d_source, self.n_sources, self.shared_fraction = d_source, n_sources, shared_fraction
        n_shared = round(shared_fraction * n_features)
        membership = torch.zeros(n_features, n_sources, dtype=torch.bool)
        membership[:n_shared] = True
        exclusive_source = (
            torch.arange(n_features - n_shared) * n_sources // max(1, n_features - n_shared)
        )  # 0..0, 1..1, ...: contiguous, as even as possible
        membership[torch.arange(n_shared, n_features), exclusive_source] = True
        self.membership: Bool[Tensor, "n_features n_sources"] = membership
        gen = torch.Generator().manual_seed(seed)
        blocks = torch.randn(n_features, n_sources, d_source, generator=gen)
        blocks = blocks / blocks.norm(dim=-1, keepdim=True) * membership[..., None]
        self.directions = blocks.reshape(n_features, n_sources * d_source)  # [n, d_in]

    def true_classes(self) -> Int[Tensor, " n_features"]:
        """0 (source A only), 1 (shared), 2 (source B only): :func:`classify_relative_norms`
        of the true directions' relative norms (two sources only).

        Raises:
            ValueError: If there are more than two sources.
        """
        if self.n_sources != 2:
            raise ValueError(
                f"shared / A-only / B-only classes need n_sources=2, got {self.n_sources}"
            )
        norms = self.directions.view(self.n_features, 2, self.d_source).norm(dim=-1)
        return classify_relative_norms(norms[:, 1] / (norms[:, 0] + norms[:, 1]))


def best_matches(
    true: Float[Tensor, "n d"], learned: Float[Tensor, "m d"]
) -> tuple[Float[Tensor, " n"], Int[Tensor, " n"]]:
    """For each true direction, its best cosine with a learned row and that row's index."""
    t = true.double() / true.double().norm(dim=1, keepdim=True).clamp(min=1e-12)
    w = learned.double() / learned.double().norm(dim=1, keepdim=True).clamp(min=1e-12)
    best = (t @ w.T).max(dim=1)  # over learned rows
    return best.values, best.indices


def sharing_recovery(
    dictionary: SharedSourcesDictionary,
    sae: CrosscoderSAE,
    threshold: float = 0.9,
    band: tuple[float, float] = SHARED_BAND,
) -> dict[str, Any]:
    """How well ``sae`` recovers the true features and which sources they belong to.

    A true feature is *recovered* when a decoder row has cosine above ``threshold`` with its
    concatenated direction; it is *classified correctly* when that row's relative decoder
    norm falls in the true class (shared inside ``band``, A-only at or below ``band[0]``,
    B-only at or above ``band[1]``).

    Returns:
        ``recovered`` (fraction of true features), ``accuracy`` (fraction of the recovered
        ones classified correctly; NaN when none is recovered), ``recovered_and_correct``
        (fraction of all true features), and ``confusion`` (3x3 counts over the recovered
        features, rows true class, columns predicted; -1 predictions dropped).

    Raises:
        ValueError: If the SAE's width differs from the dictionary's, or ``threshold`` is
            not in (0, 1].
    """
    if sae.d_in != dictionary.d_in or sae.n_sources != dictionary.n_sources:
        raise ValueError(
            f"the crosscoder reads d_in={sae.d_in} from {sae.n_sources} sources, the dictionary "
            f"writes d_in={dictionary.d_in} from {dictionary.n_sources}"
        )
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    w_dec = sae.W_dec.detach().cpu()
    cosines, index = best_matches(dictionary.directions, w_dec)
    recovered = cosines > threshold  # [n_features]
    predicted = classify_relative_norms(sae.relative_decoder_norm().cpu(), band)[index]
    truth = dictionary.true_classes()
    correct = recovered & (predicted == truth)
    confusion = torch.zeros(3, 3, dtype=torch.long)
    keep = recovered & (predicted >= 0)
    confusion.index_put_((truth[keep], predicted[keep]), torch.ones(()).long(), accumulate=True)
    n_recovered = int(recovered.sum())
    return {
        "recovered": n_recovered / dictionary.n_features,
        "accuracy": int(correct.sum()) / n_recovered if n_recovered else float("nan"),
        "recovered_and_correct": int(correct.sum()) / dictionary.n_features,
        "confusion": confusion.tolist(),
    }


class SharingRecovery(L.Callback):
    """Logs ``val/sharing_accuracy`` (recovered true features classified correctly as shared,
    A-only or B-only by the relative decoder norm) and ``val/sharing_recovered_and_correct``
    (the same over all true features) when training a crosscoder on a
    :class:`SharedSourcesDictionary` (``experiment=crosscoder_planted``).

    Args:
        threshold: Cosine above which a true feature counts as recovered.
        band: Relative decoder norms inside ``(low, high)`` count as shared.
    """

    def __init__(self, threshold: float = 0.9, band: tuple[float, float] = SHARED_BAND) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        classify_relative_norms(torch.zeros(1), tuple(band))  # validates the band
        self.threshold, self.band = threshold, (float(band[0]), float(band[1]))

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dictionary = getattr(trainer.datamodule, "dictionary", None)
        sae = getattr(pl_module, "sae", None)
        if not isinstance(dictionary, SharedSourcesDictionary) or not isinstance(
            sae, CrosscoderSAE
        ):
            raise ValueError(
                "SharingRecovery needs a crosscoder (sae=crosscoder) trained on a "
                "SharedSourcesDictionary (data=synthetic_sources), got "
                f"{type(sae).__name__} on {type(dictionary).__name__}"
            )
        scores = sharing_recovery(dictionary, sae, self.threshold, self.band)
        pl_module.log("val/sharing_accuracy", float(scores["accuracy"]))
        pl_module.log("val/sharing_recovered_and_correct", scores["recovered_and_correct"])
