"""Two models read at the same hook on the same tokens: what a model-diffing crosscoder reads.

``PairedSpec`` holds one :class:`~sae_lightning.spec.ActivationSpec` per model (``toy-1l``
and ``toy-1l-b``, say: they must share the tokenizer, so that one token id is one text for
both). A captured row is ``[x_A | x_B]``, both models run on the same contexts in one step;
the crosscoder (``sae=crosscoder``) reads it whole. Validation splices each source's part of
the reconstruction back into its own model and measures each model's loss recovered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor

from sae_lightning.analysis.comparison import check_same_tokenizer
from sae_lightning.hooks import capture_side_by_side
from sae_lightning.spec import ActivationSpec


@dataclass
class PairedSpec:
    """Model A and model B at ``hook_name``, read together (see the module doc).

    Args:
        model: Model A (the data module's; its tokenizer makes the contexts).
        model_b: Model B, with A's tokenizer.
        hook_name: The hook read in both.
        drop_bos / n_ctx: As for ``ActivationSpec`` (``n_ctx`` must fit both models).
        names: The two models' names, for messages and the export's ``sources``.
    """

    model: Any = field(repr=False)
    model_b: Any = field(repr=False)
    hook_name: str
    drop_bos: bool = True
    n_ctx: int = 0
    names: tuple[str, str] = ("model", "model_b")
    sources: list[ActivationSpec] = field(init=False, repr=False)
    d_in: int = field(init=False)
    d_out: None = field(init=False, default=None)

    def __post_init__(self) -> None:
        check_same_tokenizer(
            self.model, self.names[0], self.model_b, self.names[1],
            what="a crosscoder of two models", option="model_b",
        )  # fmt: skip
        a = ActivationSpec(self.model, self.hook_name, self.drop_bos, self.n_ctx)
        b = ActivationSpec(self.model_b, self.hook_name, self.drop_bos, a.n_ctx)
        self.sources, self.n_ctx, self.d_in = [a, b], a.n_ctx, a.d_in + b.d_in

    @property
    def start(self) -> int:
        return int(self.drop_bos)

    @property
    def hook_names(self) -> tuple[str, ...]:
        return (self.hook_name,)

    @property
    def models(self) -> tuple[Any, ...]:
        """The frozen models read, A then B."""
        return (self.model, self.model_b)

    @property
    def widths(self) -> list[int]:
        """Each source's width, in row order."""
        return [s.d_in for s in self.sources]

    @property
    def source_names(self) -> list[dict[str, str]]:
        """The export's ``metadata["sources"]``: model and hook of each part, in order."""
        return [{"model_name": n, "hook_name": self.hook_name} for n in self.names]

    def capture(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_in"]:
        """``[x_A | x_B]``, float32, on ``tokens``' device, every position."""
        return capture_side_by_side(((s.model, s.hook_name) for s in self.sources), tokens)

    def trained(self, acts: Float[Tensor, "batch pos d"]) -> Float[Tensor, "n d"]:
        return self.sources[0].trained(acts)

    def split(self, rows: Float[Tensor, "*n d_in"]) -> list[Tensor]:
        """``rows`` cut into the sources' parts."""
        return list(rows.split(self.widths, dim=-1))
