"""``AnalysisModule``: the one streaming pass over the analysed tokens that every criterion reads.

``trainer.validate(module)`` runs the frozen model to the hook on each batch of contexts,
encodes the activations with the SAE (and the ``compare_with`` SAE: on the same
activations, or on ``ctx.other_model``'s when it reads another model, together with both
models' MLP neurons), and returns an :class:`AnalysisBatch`, which Lightning hands to every
criterion's ``on_validation_batch_end``. At the end of the epoch, the criteria (Callbacks,
whose epoch-end hooks run before the module's) are complete: the module collects their
results (providers of artefacts first, :func:`order_criteria`) into the
:class:`AnalysisResults`, logs their summaries and writes the scorecard to TensorBoard.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from sae_lightning.analysis.artefacts import Artefact
from sae_lightning.analysis.comparison import neuron_hook
from sae_lightning.analysis.criterion import AnalysisBatch, AnalysisContext, Criterion
from sae_lightning.analysis.ordering import order_criteria
from sae_lightning.analysis.records import value_of
from sae_lightning.analysis.results import AnalysisResults
from sae_lightning.analysis.selection import encode_features
from sae_lightning.hooks import capture_activations
from sae_lightning.models import move_model
from sae_lightning.saes import SAE

log = logging.getLogger(__name__)

KEEP_BYTES = 256 * 2**20
"""Hook activations a first pass may keep for the streaming pass (bytes per analysis): at
``d_in`` 1024 and 128 positions, the 256 contexts of the default ``proxy_contexts``."""


class KeptActivations:
    """Hook activations of leading contexts, computed by a criterion's first pass before the
    streaming pass (:func:`plugins._common.first_pass`), which takes them instead of running
    the frozen model on those contexts again. What does not fit in ``max_bytes`` is not kept
    (the pass recomputes it); each row is handed out once.
    """

    def __init__(self, max_bytes: int = KEEP_BYTES) -> None:
        self.max_bytes, self.used = max_bytes, 0
        self.rows: dict[int, Tensor] = {}  # context index -> [n_ctx, d_in]

    def keep(self, first: int, acts: Float[Tensor, "b n_ctx d_in"]) -> None:
        """Keep ``acts[i]`` as the activations of context ``first + i`` (if it fits)."""
        size = acts.numel() * acts.element_size()
        if self.used + size <= self.max_bytes:
            self.used += size
            self.rows.update((first + i, row) for i, row in enumerate(acts))

    def take(self, rows: list[int], device: torch.device) -> Tensor | None:
        """The kept ``[len(rows), n_ctx, d_in]`` activations of ``rows`` (then forgotten),
        or None unless every row is kept, on ``device``."""
        if not rows or any(r not in self.rows or self.rows[r].device != device for r in rows):
            return None
        return torch.stack([self.rows.pop(r) for r in rows])


KEPT_ACTIVATIONS: Artefact[KeptActivations] = Artefact("_kept_activations", KeptActivations)
"""The first pass's :class:`KeptActivations` (in ``ctx.artefacts``; no criterion reads it)."""


class AnalysisModule(L.LightningModule):
    """Streams ``ctx.contexts`` through the frozen model and the SAE(s).

    The model reads every position; the batches handed to the criteria hold positions
    ``ctx.start`` onwards only (BOS dropped by default, as in training), so every count,
    denominator and statistic of every criterion is over the positions the SAE trained on.

    Args:
        sae: The SAE under analysis (a submodule: moved to the device with the module).
        model: The frozen transformer; a plain attribute, never a submodule.
        ctx: Everything criteria need that is not per batch; ``ctx.sae`` is ``sae``.
        results: Filled at the end of the pass.
        other_sae: The ``compare_with`` SAE, or None.
        batch_size: Contexts per batch.

    Under DDP each rank streams every ``world_size``-th context (no padding, so no token is
    counted twice); the criteria's metric states are reduced across ranks when computed.
    """

    def __init__(
        self,
        sae: SAE,
        model,
        ctx: AnalysisContext,
        results: AnalysisResults,
        other_sae: SAE | None = None,
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.sae = sae.eval().requires_grad_(False)
        self.other_sae = other_sae.eval().requires_grad_(False) if other_sae is not None else None
        self.__dict__["frozen"] = model  # plain attribute: never a submodule, never checkpointed
        self.ctx, self.results, self.batch_size = ctx, results, batch_size
        self.all_features = ctx.features == list(range(sae.d_sae))
        self.register_buffer("feature_index", torch.tensor(ctx.features), persistent=False)
        self.n_ctx = int(ctx.contexts.shape[1])

    def criteria(self) -> list[Criterion]:
        """The trainer's criteria, in the order they finish (:func:`order_criteria`)."""
        return order_criteria([c for c in self.trainer.callbacks if isinstance(c, Criterion)])

    def val_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        rows = torch.arange(rank, len(self.ctx.contexts), world)  # this rank's contexts
        dataset = TensorDataset(self.ctx.contexts[rows], rows)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False)

    def on_validation_model_eval(self) -> None:
        # the first hook after the strategy moved the module to its device, and before any
        # callback's on_validation_start: the frozen model and the criteria's metrics (moved
        # in Criterion.setup, while the module was still on the CPU) follow it here
        super().on_validation_model_eval()
        for model in [*self.ctx.reader.models, self.ctx.other_model]:
            if model is not None:
                move_model(model, self.device)
        for criterion in self.criteria():
            for metric in criterion.metrics():
                metric.to(self.device)

    def validation_step(
        self, batch: tuple[Int[Tensor, "b n_ctx"], Int[Tensor, " b"]], batch_idx: int
    ) -> AnalysisBatch:
        tokens, context_index = batch
        start = self.ctx.start  # the model reads the whole context; criteria see from start
        acts = self._kept(context_index.tolist(), tokens.device)  # a first pass's, if kept
        if acts is None:
            acts = self.ctx.reader.capture(tokens)  # [b, n_ctx, d_in]
        acts = acts[:, start:].to(self.sae.W_enc.dtype).contiguous()  # [b, pos, d_in]
        index = None if self.all_features else self.feature_index
        feats = encode_features(self.sae, acts, index)  # [b, pos, n_features]
        positions = torch.arange(start, self.n_ctx, device=tokens.device)  # [pos]
        batch = AnalysisBatch(
            tokens=tokens[:, start:],
            token_index=context_index[:, None] * self.n_ctx + positions,  # [b, pos]
            feature_acts=feats,
            neuron_acts=acts,
            start=start,
        )
        if self.other_sae is not None:
            self._compare(batch, tokens)
        return batch

    def _compare(self, batch: AnalysisBatch, tokens: Int[Tensor, "b n_ctx"]) -> None:
        """The ``compare_with`` SAE's features into ``batch``: on the same activations, or
        across models on ``ctx.other_model``'s, with both models' MLP neurons."""
        dtype, ctx = self.other_sae.W_enc.dtype, self.ctx
        if ctx.other_model is None:
            batch.other_acts = self.other_sae.encode(batch.neuron_acts.to(dtype))
            return
        hook_b = ctx.other_hook_name or ctx.hook_name
        theirs = capture_activations(ctx.other_model, tokens, hook_b)[:, ctx.start :]
        batch.other_acts = self.other_sae.encode(theirs.to(dtype).contiguous())  # [b, pos, d_b]
        for model, hook, acts, field in (
            (self.frozen, ctx.hook_name, batch.neuron_acts, "mlp_neurons"),
            (ctx.other_model, hook_b, theirs, "other_mlp_neurons"),
        ):
            neurons = neuron_hook(hook)
            if neurons != hook:
                acts = capture_activations(model, tokens, neurons)[:, ctx.start :]
            setattr(batch, field, acts.float())  # [b, pos, d_mlp]

    def _kept(self, rows: list[int], device: torch.device) -> Tensor | None:
        kept = self.ctx.artefacts.find(KEPT_ACTIVATIONS)
        if kept is None or torch.is_autocast_enabled(device.type):
            return None  # (the first pass ran without autocast: recompute under it)
        return kept.take(rows, device)

    def on_validation_epoch_end(self) -> None:
        kept = self.ctx.artefacts.find(KEPT_ACTIVATIONS)
        if kept is not None:
            kept.rows.clear()  # rows another DDP rank streamed
        for criterion in self.criteria():
            results = criterion.collect(self.ctx)
            summary = criterion.summary(results)
            self.results.add(criterion.name, results, summary, criterion.headline)
            for key, value in summary.items():
                self.log(f"criteria/{criterion.name}/{key}", float(value), sync_dist=False)
        self._log_tensorboard()

    def _log_tensorboard(self) -> None:
        """Histogram of each criterion's headline number over features; the scorecard as text."""
        experiment = getattr(self.logger, "experiment", None)
        if not self.trainer.is_global_zero or experiment is None:
            return
        if hasattr(experiment, "add_histogram"):
            for name in self.results.criteria:
                key = self.results.headline(name)
                values = [
                    value_of(numbers, key)
                    for per_feature in self.results.features.values()
                    if (numbers := per_feature.get(name)) is not None
                ]
                values = [float(v) for v in values if isinstance(v, (int, float))]
                if key and values:
                    experiment.add_histogram(
                        f"criteria/{name}/{key}", torch.tensor(values), self.global_step
                    )
        if hasattr(experiment, "add_text"):
            # four-space indent: TensorBoard renders it as fixed-width code
            text = "\n".join("    " + line for line in self.results.scorecard().splitlines())
            experiment.add_text("criteria/scorecard", text, self.global_step)
