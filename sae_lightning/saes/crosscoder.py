"""Crosscoder (Lindsey et al. 2024, *Sparse Crosscoders for Cross-Layer Features and Model
Diffing*): one dictionary that reads several sources at once.

A source is one hook of one model (two models at the same hook, or several layers of one
model). The input is the concatenation of the sources' activations for the same token,
``x = [x_0 | x_1 | ... ]`` (``d_in = n_sources * d_source``), so the SAELens parameter
names keep their shapes: ``W_enc [d_in, d_sae]`` stacks the per-source encoder blocks along
``d_in``, ``W_dec [d_sae, d_in]`` holds the per-source decoder blocks side by side
(``W_dec[i, s * d_source:(s + 1) * d_source]`` is latent ``i``'s direction in source ``s``).

Per latent, the norms of its decoder blocks say where it lives: ``relative_decoder_norm``
``||d_B|| / (||d_A|| + ||d_B||)`` is about 0.5 for a latent shared by A and B, near 0 for
one of A only, near 1 for one of B only.

**What unit norm means here.** The per-source blocks are never normalised one by one: that
would pin every latent to ``||d_A|| = ||d_B||`` and erase the shared / exclusive signal.
``set_decoder_norm_to_unit_norm`` and ``remove_gradient_parallel_to_decoder_directions``
are the base class's, on the whole (concatenated) row: ``||d_A||^2 + ||d_B||^2 = 1``, the
split between sources stays free. The crosscoder loss (``losses.CrosscoderLoss``) weights
each ``|f_i|`` by ``sum_s ||d_i,s||``, which is invariant to rescaling ``f_i`` up and its
row down, so the constraint only fixes that gauge: training with
``module.unit_norm_decoder=true`` or ``false`` optimises the same objective. Exports fold
the row norms into the encoder (``scale_features``) as for any ReLU SAE, which leaves the
relative norms unchanged.

**Export format** (``formats.save_saelens`` / ``load_saelens``; not a SAELens architecture,
so SAELens itself cannot load it). A folder with ``sae_weights.safetensors``: ``W_enc
[d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` (blocks in
source order, decoder rows of unit concatenated norm), plus a scalar ``threshold`` (on the
score, see below) when ``k`` is set; and ``cfg.json`` in the SAELens 6.x layout with
``"architecture": "crosscoder"``, ``d_in`` (the total width), ``d_sae``, ``n_sources``,
``k`` and ``threshold_momentum`` (when ``k`` is set), and in ``metadata``: ``n_sources``,
``d_source`` and ``sources``, a list of ``{"model_name", "hook_name"}`` in input order
(from the exporter's ``metadata["sources"]``, else the top-level names once per source).
Loading rebuilds the class from those fields and reads the tensors back bit for bit.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_lightning.saes.base import SAE, SAEOutput
from sae_lightning.saes.batchtopk import BatchTopKSAE
from sae_lightning.saes.relu import ReLUSAE
from sae_lightning.saes.sparse_codes import gather_pre, sparse_decode
from sae_lightning.sparse import SparseEntries

SHARED_BAND: tuple[float, float] = (0.3, 0.7)
"""Relative decoder norms strictly inside this band count as shared, at or below its low end
as source A only, at or above its high end as source B only."""
CLASS_NAMES: tuple[str, str, str] = ("A only", "shared", "B only")
"""The labels of :func:`classify_relative_norms` (0, 1, 2)."""


def classify_relative_norms(
    r: Float[Tensor, " n"], band: tuple[float, float] = SHARED_BAND
) -> Int[Tensor, " n"]:
    """0 (A only) where ``r <= band[0]``, 2 (B only) where ``r >= band[1]``, 1 (shared)
    in between; -1 where ``r`` is NaN (a latent whose decoder row is zero).

    Raises:
        ValueError: If ``band`` is not ``0 <= low < high <= 1``.
    """
    low, high = band
    if not 0 <= low < high <= 1:
        raise ValueError(f"band must satisfy 0 <= low < high <= 1, got {band!r}")
    labels = torch.ones_like(r, dtype=torch.long)
    labels[r <= low] = 0
    labels[r >= high] = 2
    labels[r.isnan()] = -1
    return labels


class CrosscoderSAE(ReLUSAE):
    """A crosscoder over ``n_sources`` concatenated sources of equal width: ReLU, or
    BatchTopK when ``k`` is set.

    With ``k=None`` encoding and decoding are the ReLU SAE's on the concatenated vector (the
    encoder sums every source's contribution, ``x @ W_enc = sum_s x_s @ W_enc,s``; the
    decoder writes every source's reconstruction), including its sparse training path.
    Train it with ``loss=crosscoder`` (``conf/sae/crosscoder.yaml`` selects it).

    With ``k`` set, training keeps the ``k * batch`` largest *scores*
    ``relu(pre_i) * sum_s ||d_i,s||`` of the batch (the activation weighted as the crosscoder
    L1 weights it, so selection has no bias towards shared latents and is invariant to
    rescaling a latent against its decoder row), and tracks a running threshold on the
    score (BatchTopK's, ``BatchTopKSAE.select``); in eval mode a latent fires when its score
    exceeds that threshold, so inference does not depend on the batch. The codes are
    ``relu(pre)`` on the kept latents, always on the sparse path. Use ``loss.l1_coeff=0``
    (the sparsity comes from k). The export stays a ``crosscoder`` with ``k`` and the
    ``threshold`` tensor.

    Args:
        d_in: Total input width, ``n_sources * d_source``.
        d_sae: Number of latents.
        n_sources: Number of sources concatenated in the input (>= 2).
        apply_b_dec_to_input: Subtract ``b_dec`` from the input before encoding.
        sparse_threshold: Largest code density at which ``forward`` takes the sparse path
            (ReLU only).
        k: Mean active latents per token (BatchTopK), ``1 <= k <= d_sae``; ``None``: ReLU.
        threshold_momentum: Weight of each batch's threshold in the running average (BatchTopK).

    Raises:
        ValueError: If ``n_sources`` is not an integer >= 2 or does not divide ``d_in``, or
            ``k`` / ``threshold_momentum`` is out of range.

    Example:
        >>> cc = CrosscoderSAE(d_in=8, d_sae=16, n_sources=2)
        >>> tuple(cc.source_decoder_norms().shape), cc.d_source
        ((16, 2), 4)
    """

    architecture: ClassVar[str] = "crosscoder"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        n_sources: int = 2,
        apply_b_dec_to_input: bool = True,
        sparse_threshold: float = 0.05,
        k: int | None = None,
        threshold_momentum: float = 0.01,
    ) -> None:
        if isinstance(n_sources, bool) or not isinstance(n_sources, int) or n_sources < 2:
            raise ValueError(f"n_sources must be an integer >= 2, got {n_sources!r}")
        if isinstance(d_in, int) and not isinstance(d_in, bool) and d_in % n_sources:
            raise ValueError(
                f"d_in={d_in} is not divisible by n_sources={n_sources}: a crosscoder reads "
                f"n_sources concatenated activations of one width (d_in = n_sources * d_source)"
            )
        super().__init__(d_in, d_sae, apply_b_dec_to_input, sparse_threshold)
        self.n_sources = n_sources
        self.d_source = d_in // n_sources
        self.k = k
        if k is None:
            return
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
            raise ValueError(
                f"k must be null (ReLU) or an integer in [1, d_sae={d_sae}], got {k!r}"
            )
        if not 0 < threshold_momentum <= 1:
            raise ValueError(f"threshold_momentum must be in (0, 1], got {threshold_momentum!r}")
        self.threshold_momentum = float(threshold_momentum)
        self.register_buffer("threshold", torch.tensor(0.0))  # on the score; exported
        batches = torch.tensor(0, dtype=torch.long)  # training state (checkpointed, not exported)
        self.register_buffer("threshold_batches", batches, persistent=False)

    # BatchTopK's batch selection and running threshold (they read k, training, threshold,
    # threshold_batches, threshold_momentum, which a crosscoder with k has too)
    _select_batch = BatchTopKSAE.select
    _update_threshold = BatchTopKSAE._update_threshold

    def config(self) -> dict[str, Any]:
        config = {**super().config(), "n_sources": self.n_sources}
        if self.k is None:
            return config
        return {**config, "k": self.k, "threshold_momentum": self.threshold_momentum}

    def encode_codes(self, x: Float[Tensor, "batch d_in"]) -> SparseEntries:
        """BatchTopK codes of a ``[batch, d_in]`` input (values differentiable); ``k`` only."""
        self._check_width(x, "d_in", "input")
        bias = self.encoder_bias()  # [d_sae]
        with torch.no_grad():
            pre = torch.addmm(bias, x, self.W_enc)  # [batch, d_sae]
            weight = self.source_decoder_norms().sum(-1)  # [d_sae]
            rows, cols, crow = self._select_batch(torch.relu(pre) * weight)
        values = gather_pre(x, self.W_enc, self.b_enc, pre, rows, cols, self.input_bias())
        return SparseEntries(rows, cols, torch.relu(values), x.shape[0], self.d_sae, "row", crow)

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> SAEOutput:
        """Encode and decode (ReLU: sparse when the batch's density allows; k: sparse)."""
        if self.k is None:
            return super().forward(x)
        self._check_width(x, "d_in", "input")
        codes = self.encode_codes(x.reshape(-1, self.d_in))
        x_hat = sparse_decode(codes, self.W_dec) + self.b_dec  # [batch, d_in]
        return SAEOutput(x_hat.reshape(x.shape), codes=codes)

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Feature activations (with ``k``: of the batch in training, thresholded in eval).

        Raises:
            ValueError: If ``x``'s last dimension is not ``d_in``.
        """
        if self.k is None:
            return super().encode(x)
        self._check_width(x, "d_in", "input")
        codes = self.encode_codes(x.reshape(-1, self.d_in))
        return codes.to_dense().reshape(*x.shape[:-1], self.d_sae)

    def encode_selected(
        self, x: Float[Tensor, "rows pos d_in"], index: Int[Tensor, " rows"]
    ) -> Float[Tensor, "rows pos"]:
        """One feature per row: ReLU's dot product, or (``k``: latents compete) the whole
        dictionary's codes."""
        if self.k is None:
            return super().encode_selected(x, index)
        return SAE.encode_selected(self, x, index)

    def source_blocks(
        self, w_dec: Tensor | None = None
    ) -> Float[Tensor, "d_sae n_sources d_source"]:
        """``W_dec`` (or ``w_dec`` of the same shape) viewed as one block per source."""
        w = self.W_dec if w_dec is None else w_dec
        return w.reshape(w.shape[0], self.n_sources, self.d_source)

    def source_decoder_norms(self) -> Float[Tensor, "d_sae n_sources"]:
        """``||W_dec[i, block s]||`` for every latent and source (differentiable)."""
        return self.source_blocks().norm(dim=-1)

    def relative_decoder_norm(self, a: int = 0, b: int = 1) -> Float[Tensor, " d_sae"]:
        """``||d_b|| / (||d_a|| + ||d_b||)`` per latent, in [0, 1]: ~0.5 shared by sources
        ``a`` and ``b``, ~0 source ``a`` only, ~1 source ``b`` only; NaN where both blocks are
        zero. Detached.

        Raises:
            ValueError: If ``a`` or ``b`` is not a source index, or ``a == b``.
        """
        for name, value in (("a", a), ("b", b)):
            if not 0 <= value < self.n_sources:
                raise ValueError(f"source {name}={value} is not in [0, {self.n_sources})")
        if a == b:
            raise ValueError(f"a and b must be different sources, got {a} twice")
        norms = self.source_decoder_norms().detach()  # [d_sae, n_sources]
        na, nb = norms[:, a], norms[:, b]
        return nb / (na + nb)  # 0 / 0 = NaN for a zero row

    def export_metadata(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """``n_sources``, ``d_source`` and ``sources`` (one ``{"model_name", "hook_name"}``
        per source, in input order) for ``cfg.json``'s metadata. ``metadata["sources"]`` is
        used when given; otherwise every source repeats the top-level model and hook names.

        Raises:
            ValueError: If ``metadata["sources"]`` is not ``n_sources`` such objects.
        """
        sources = metadata.get("sources")
        if sources is None:
            one = {"model_name": metadata.get("model_name"), "hook_name": metadata.get("hook_name")}
            sources = [dict(one) for _ in range(self.n_sources)]
        ok = isinstance(sources, list) and len(sources) == self.n_sources
        if not ok or not all(
            isinstance(s, dict) and {"model_name", "hook_name"} <= set(s) for s in sources
        ):
            raise ValueError(
                f"metadata sources must be a list of {self.n_sources} objects with model_name "
                f"and hook_name (one per source, in input order), got {sources!r}"
            )
        return {"n_sources": self.n_sources, "d_source": self.d_source, "sources": sources}
