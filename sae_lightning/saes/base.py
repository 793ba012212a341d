"""The dictionary abstraction every SAE architecture implements.

Parameter names and shapes follow SAELens' format, so export is a plain state dict:
``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from sae_lightning.saes.geometric_median import geometric_median
from sae_lightning.sparse import SparseEntries

_ROW_BLOCK = 256  # decoder rows per block of the gradient projection (~1 MiB at d_in 1024)
BDecInit = Literal["geometric_median", "mean", "zeros"]
B_DEC_INITS: tuple[str, ...] = ("geometric_median", "mean", "zeros")


class SAEOutput:
    """What an SAE's forward pass returns.

    On the sparse path the dense ``feature_acts`` are built from ``codes`` only when read
    (a ``[batch, d_sae]`` zero fill and scatter the training step itself does not need:
    its losses and metrics read the entries).
    """

    __slots__ = ("x_hat", "_feature_acts", "pre_acts", "codes", "pre_codes")

    x_hat: Float[Tensor, "*batch d_in"]
    """The reconstruction of the input."""
    pre_acts: Float[Tensor, "*batch d_sae"] | None
    """Pre-activations, for the architectures whose loss needs them (JumpReLU's L0 and
    Gated's gate terms); ``None`` otherwise. Detached when ``codes`` is set."""
    codes: SparseEntries | None
    """The codes as entries when the batch took the sparse path (its losses read these:
    gradients flow through ``codes.values``); ``None`` on the dense path."""
    pre_codes: SparseEntries | None
    """The pre-activation entries the sparse losses need on ``codes``' pattern (JumpReLU's
    L0, Gated's gate); ``None`` otherwise."""

    def __init__(
        self,
        x_hat: Float[Tensor, "*batch d_in"],
        feature_acts: Float[Tensor, "*batch d_sae"] | None = None,
        pre_acts: Float[Tensor, "*batch d_sae"] | None = None,
        codes: SparseEntries | None = None,
        pre_codes: SparseEntries | None = None,
    ) -> None:
        if feature_acts is None and codes is None:
            raise ValueError("SAEOutput needs feature_acts or codes (to build them from)")
        self.x_hat, self._feature_acts, self.pre_acts = x_hat, feature_acts, pre_acts
        self.codes, self.pre_codes = codes, pre_codes

    @property
    def feature_acts(self) -> Float[Tensor, "*batch d_sae"]:
        """The feature (latent) activations, dense (differentiable through ``codes``)."""
        if self._feature_acts is None:
            assert self.codes is not None
            lead = self.x_hat.shape[:-1]  # the input's batch dimensions
            self._feature_acts = self.codes.to_dense().reshape(*lead, self.codes.n_features)
        return self._feature_acts


class SAE(nn.Module, ABC):
    """A sparse autoencoder: ``x_hat = decode(encode(x))`` with ``decode(f) = f @ W_dec + b_dec``.

    Subclasses set ``architecture`` (the name written to ``cfg.json``) and implement
    ``encode``. The decoder, its bias and the geometry helpers used in training live here.

    Args:
        d_in: Width of the activations the SAE reads and reconstructs.
        d_sae: Number of features (dictionary size).
        apply_b_dec_to_input: Subtract ``b_dec`` from the input before encoding.

    Raises:
        ValueError: If ``d_in`` or ``d_sae`` is not a positive integer.
    """

    architecture: ClassVar[str]
    feature_params: ClassVar[dict[str, int]] = {"W_enc": 1, "b_enc": 0, "W_dec": 0}
    """Parameter name -> the dimension indexed by feature (resampling and Adam-state resets)."""

    def __init__(self, d_in: int, d_sae: int, apply_b_dec_to_input: bool = True) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("d_sae", d_sae)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.d_in = d_in
        self.d_sae = d_sae
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        # Random unit-norm decoder rows; the encoder starts as the decoder's transpose.
        w_dec = torch.randn(d_sae, d_in)  # [d_sae, d_in]
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))  # [d_sae]
        self.W_dec = nn.Parameter(w_dec)  # [d_sae, d_in]
        self.b_dec = nn.Parameter(torch.zeros(d_in))  # [d_in]

    @property
    def d_out(self) -> int:
        """Width of the reconstruction: ``d_in`` for an SAE (a transcoder's differs)."""
        return int(self.W_dec.shape[1])

    def split_target(
        self, x: Float[Tensor, "*batch width"]
    ) -> tuple[Float[Tensor, "*batch d_in"], Float[Tensor, "*batch d_out"]]:
        """``(input, target)`` of a training row: an SAE reconstructs its input; a
        transcoder's rows are ``[x_in | x_out]`` (see ``TranscoderSAE``)."""
        return x, x

    def config(self) -> dict[str, Any]:
        """The constructor arguments plus the architecture name (JSON-serialisable)."""
        return {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
        }

    def _check_width(self, x: Tensor, dim: Literal["d_in", "d_sae"], what: str) -> None:
        """Raise a clear ValueError when ``x``'s last dimension is not ``self.<dim>``."""
        expected: int = getattr(self, dim)
        got = x.shape[-1] if x.ndim > 0 else None
        if got != expected:
            raise ValueError(
                f"{what} has width {got} (shape {tuple(x.shape)}), but this "
                f"{type(self).__name__} expects {dim}={expected}"
            )

    def encode_pre(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Pre-activation ``(x - b_dec) @ W_enc + b_enc``, before the nonlinearity.

        Raises:
            ValueError: If ``x``'s last dimension is not ``d_in``.
        """
        self._check_width(x, "d_in", "input")
        return x @ self.W_enc + self.encoder_bias()  # [*batch, d_sae]

    def encoder_bias(self) -> Float[Tensor, " d_sae"]:
        """``b_enc - b_dec @ W_enc`` (or ``b_enc``): the bias of ``x @ W_enc``.

        (x - b_dec) @ W_enc is written this way so that b_dec's gradient is a vector-matrix
        product: through x - b_dec, autograd would spend a full [batch, d_sae] x [d_sae, d_in]
        matmul on the input gradient only to sum it over the batch.
        """
        return self.fold_input_bias(self.b_enc, self.W_enc)

    def fold_input_bias(
        self, b_enc: Float[Tensor, " n"], w_enc: Float[Tensor, "d_in n"]
    ) -> Float[Tensor, " n"]:
        """``b_enc - b_dec @ w_enc`` if ``b_dec`` is subtracted from the input, else ``b_enc``:
        :meth:`encoder_bias` for some of the latents (their columns given)."""
        if self.apply_b_dec_to_input:
            return b_enc - self.b_dec @ w_enc
        return b_enc

    def input_bias(self) -> Float[Tensor, " d_in"] | None:
        """``b_dec`` if it is subtracted from the input before encoding, else ``None``
        (the sparse path's ``gather_pre`` takes it apart from the encoder's own bias)."""
        return self.b_dec if self.apply_b_dec_to_input else None

    @abstractmethod
    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Feature activations of ``x``.

        Raises:
            ValueError: If ``x``'s last dimension is not ``d_in``.
        """

    def encode_selected(
        self, x: Float[Tensor, "rows pos d_in"], index: Int[Tensor, " rows"]
    ) -> Float[Tensor, "rows pos"]:
        """Activation of feature ``index[r]`` on every position of row ``r``.

        The default encodes every feature and picks one per row (right for any
        architecture, including those whose features compete, like TopK); an architecture
        whose features are independent can override it with one dot product per row.
        """
        encoded = self.encode(x)  # [rows, pos, d_sae]
        return encoded.gather(-1, index.view(-1, 1, 1).expand(-1, x.shape[1], 1)).squeeze(-1)

    def decode(self, feature_acts: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_in"]:
        """Reconstruction ``feature_acts @ W_dec + b_dec``.

        Raises:
            ValueError: If ``feature_acts``' last dimension is not ``d_sae``.
        """
        self._check_width(feature_acts, "d_sae", "feature_acts")
        return feature_acts @ self.W_dec + self.b_dec  # [*batch, d_in]

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> SAEOutput:
        """Encode then decode ``x``; ``encode`` validates the width."""
        feature_acts = self.encode(x)  # [*batch, d_sae]
        return SAEOutput(x_hat=self.decode(feature_acts), feature_acts=feature_acts)

    def scale_features(
        self, state: dict[str, Tensor], scale: Float[Tensor, " d_sae"]
    ) -> dict[str, Tensor]:
        """``state`` rewritten so that feature ``i`` is ``scale[i]`` times larger and the
        reconstruction is unchanged (``W_dec_i /= scale_i``).

        The default is right for encoders positively homogeneous per feature (ReLU):
        ``W_enc[:, i]`` and ``b_enc_i`` are multiplied by ``scale_i``. ``scale`` must be > 0.
        """
        state = dict(state)
        state["W_dec"] = state["W_dec"] / scale[:, None]  # [d_sae, d_in]
        state["W_enc"] = state["W_enc"] * scale[None, :]  # [d_in, d_sae]
        state["b_enc"] = state["b_enc"] * scale  # [d_sae]
        return state

    def for_export(self) -> SAE:
        """The SAE to write for inference (BatchTopK exports itself as JumpReLU)."""
        return self

    @torch.no_grad()
    def reinit_features(
        self,
        index: Int[Tensor, " n"],
        directions: Float[Tensor, "n d_in"],
        encoder_norm: float,
    ) -> None:
        """Re-initialise features ``index`` (dead-feature resampling, Anthropic 2023).

        Decoder rows become the unit-norm ``directions``, encoder columns the same directions
        scaled to ``encoder_norm``; every other per-feature parameter is reset to zero
        (subclasses with parameters that must not be zero override this).
        """
        unit = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [n, d_in]
        self.W_dec[index] = unit.to(self.W_dec.dtype)
        self.W_enc[:, index] = (unit * encoder_norm).T.to(self.W_enc.dtype)
        for name, dim in self.feature_params.items():
            if name not in ("W_enc", "W_dec"):
                getattr(self, name).index_fill_(dim, index, 0.0)

    def decoder_norms(self) -> Float[Tensor, " d_sae"]:
        """Euclidean norm of each decoder row (differentiable)."""
        return self.W_dec.norm(dim=-1)

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        """Rescale every decoder row to unit norm (rows of norm zero are left at zero)."""
        norms = self.W_dec.norm(dim=-1, keepdim=True)  # [d_sae, 1]
        self.W_dec.div_(torch.where(norms > 0, norms, torch.ones_like(norms)))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project out of ``W_dec.grad`` each row's component along that decoder row.

        Call after ``backward`` and before the optimiser step, so that with unit-norm
        decoder rows the update changes their direction but (to first order) not their norm.

        Raises:
            RuntimeError: If ``W_dec`` has no gradient (called before ``backward``).
        """
        grad = self.W_dec.grad
        if grad is None:
            raise RuntimeError(
                "W_dec.grad is None: call remove_gradient_parallel_to_decoder_directions "
                "after loss.backward() and before optimizer.step()"
            )
        # g -= (g . w) w / |w|^2 row by row (rows of norm zero unchanged), in blocks of rows
        # that stay in cache: one fused update instead of a unit-row copy and two temporaries
        # the size of the decoder (about half the time on CPU)
        norms = self.W_dec.norm(dim=-1)  # [d_sae]
        inv_sq = torch.where(norms > 0, norms.pow(-2), torch.zeros_like(norms))  # [d_sae]
        for start in range(0, self.d_sae, _ROW_BLOCK):
            g, w = grad[start : start + _ROW_BLOCK], self.W_dec[start : start + _ROW_BLOCK]
            coeff = (g * w).sum(dim=-1) * inv_sq[start : start + _ROW_BLOCK]  # [block]
            g.addcmul_(w, coeff[:, None], value=-1)

    @torch.no_grad()
    def init_b_dec(self, x: Float[Tensor, "n d_in"], method: BDecInit = "geometric_median") -> None:
        """Set ``b_dec`` from a sample of activations.

        Args:
            x: Sample of activations, one row per token.
            method: ``"geometric_median"`` (robust centre), ``"mean"`` or ``"zeros"``.

        Raises:
            ValueError: If ``method`` is unknown, or ``x`` is not ``[n, d_in]`` with n >= 1.
        """
        if method not in B_DEC_INITS:
            raise ValueError(f"unknown b_dec init method {method!r}; valid: {list(B_DEC_INITS)}")
        if method == "zeros":
            self.b_dec.zero_()
            return
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"x must have shape [n, d_in] with n >= 1, got {tuple(x.shape)}")
        self._check_width(x, "d_in", "input")
        x = x.to(self.b_dec.device)
        centre = geometric_median(x) if method == "geometric_median" else x.float().mean(dim=0)
        self.b_dec.copy_(centre.to(self.b_dec.dtype))  # [d_in]


def load_assigned(sae: SAE, state: dict[str, Tensor]) -> SAE:
    """Load ``state`` into an SAE built on the meta device (``assign=True``: the tensors are
    taken, not copied). Buffers outside the state dict (training state such as TopK's
    ``tokens_since_fired``) would stay on the meta device, where ``.to()`` fails: they get
    zeros on the CPU."""
    sae.load_state_dict(state, assign=True)
    for module in sae.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta:
                setattr(module, name, torch.zeros(buffer.shape, dtype=buffer.dtype))
    return sae
