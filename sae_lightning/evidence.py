"""``FeatureEvidence``: the analysis criteria run on held-out contexts every N training steps.

The same criteria ``analyze.py`` runs (``Criterion`` callbacks, built from ``_target_`` nodes:
``conf/callbacks/feature_evidence.yaml`` selects the built-in specificity, sensitivity and
not-a-neuron) are fed by the same streaming pass (:class:`AnalysisModule`'s
``validation_step``) over a small, fixed set of held-out contexts, on a copy of the SAE as it
would be exported (activation scale and decoder norms folded in). Each evaluation logs, at
the training step:

- ``criteria/<name>/<key>``: each criterion's summary (``pass_rate`` by default);
- ``evidence/dead_fraction`` and the histogram ``evidence/log10_feature_density``;
- ``evidence/cpu_seconds``: the process CPU time the evaluation took (its cost, to set
  ``every_n_steps`` by; ``benchmarks/evidence_overhead.py`` measures the whole overhead);
- for each named concept (:func:`~sae_lightning.replication.concepts.select_concept`, as the
  replication chooses it): ``evidence/<concept>/found`` (1 or 0) and, when found, its best
  feature's ``feature``, ``specificity``, ``sensitivity`` and ``neuron_corr``.

Training is not changed: the pass reads a copy of the weights, under ``no_grad``, with the
random number generators restored afterwards (same seed, same final weights with or without
it). Under DDP each rank streams every ``world_size``-th context and the criteria's metric
states are reduced; only rank 0 writes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from jaxtyping import Float, Int
from torch import Tensor
from typing_extensions import override

from sae_lightning.analysis.criterion import AnalysisContext, Criterion
from sae_lightning.analysis.module import KEPT_ACTIVATIONS, AnalysisModule
from sae_lightning.analysis.ordering import checked_criteria
from sae_lightning.analysis.records import (
    NotANeuronResult,
    SensitivityResult,
    SpecificityResult,
    result_of,
)
from sae_lightning.analysis.results import AnalysisResults
from sae_lightning.analysis.run import vocab_strings
from sae_lightning.formats import to_inference_sae
from sae_lightning.metrics.density import FeatureDensity, dead_fraction, log10_density
from sae_lightning.replication.concepts import concept_tokens, select_concept

log = logging.getLogger(__name__)

DEFAULT_CONCEPTS: dict[str, dict[str, list[str]]] = {
    "full_stop": {"tokens": ["."]},
    "import": {"tokens": ["import"]},
    "for": {"tokens": [" for"]},
    "else": {"tokens": [" else"]},
}
"""The replication's concepts (``experiment=replicate_monosemanticity``), by tag-safe name."""
_TAG = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Evidence:
    """One evaluation: the criteria's results and every feature's firing density."""

    step: int
    results: AnalysisResults
    density: Float[Tensor, " d_sae"]
    """Fraction of the held-out analysed tokens on which each feature fired."""


class FeatureEvidence(L.Callback):
    """Runs ``criteria`` on ``contexts`` held-out contexts every ``every_n_steps`` steps.

    Args:
        criteria: Named criteria (``{name: Criterion}``; Hydra builds them from ``_target_``
            nodes). Their metric states are made anew for every evaluation.
        every_n_steps: Optimiser steps between evaluations (at steps N, 2N, ...).
        contexts: Held-out contexts (the data source's ``val`` split, from its start) of the
            training context length; the pass reads exactly these every time.
        batch_size: Contexts per batch of the pass.
        concepts: ``{name: {tokens: [...]}}``: features followed by concept (None: the four of
            :data:`DEFAULT_CONCEPTS`; ``{}``: none). Needs specificity and sensitivity.

    Example:
        >>> FeatureEvidence({}, every_n_steps=100, concepts={}).every_n_steps
        100
    """

    def __init__(
        self,
        criteria: Mapping[str, Criterion],
        every_n_steps: int = 200,
        contexts: int = 16,
        batch_size: int = 16,
        concepts: Mapping[str, Any] | None = None,
    ) -> None:
        for name, value in (("every_n_steps", every_n_steps), ("contexts", contexts),
                            ("batch_size", batch_size)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.criteria = _checked_criteria(criteria)
        self.every_n_steps, self.n_contexts, self.batch_size = every_n_steps, contexts, batch_size
        self.concepts = _checked_concepts(
            DEFAULT_CONCEPTS if concepts is None else concepts, [c.name for c in self.criteria]
        )
        self.contexts: Int[Tensor, "n n_ctx"] | None = None
        self.str_tokens: list[str] = []
        self.latest: Evidence | None = None
        """The last evaluation's results (every rank)."""
        self.cpu_seconds = 0.0
        """Process CPU time spent in evaluations so far (for overhead measurements)."""
        self._last_step = -1

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        spec = getattr(pl_module, "spec", None)
        if spec is None or not hasattr(pl_module, "sae"):
            raise ValueError(
                "callbacks=feature_evidence needs one SAE trained on live activations of a "
                f"frozen model (data=corpus, saes=null); got {type(pl_module).__name__} "
                f"with {type(trainer.datamodule).__name__}"
            )
        source = getattr(trainer.datamodule, "source", None)
        if not hasattr(source, "reader"):
            raise ValueError(
                "callbacks=feature_evidence reads held-out contexts from the data source's "
                f"'val' split; {type(trainer.datamodule).__name__} has no token source"
            )
        model = spec.model
        with torch.random.fork_rng(devices=[]):  # reading a source never moves training's RNG
            val = source.reader("val", model.tokenizer, spec.n_ctx, int(model.cfg.d_vocab))
            self.contexts = torch.as_tensor(val[: self.n_contexts]).long()
        if len(self.contexts) == 0:
            raise ValueError("callbacks=feature_evidence: the data source's 'val' split is empty")
        if len(self.contexts) < self.n_contexts:
            log.warning("feature_evidence: only %d held-out contexts (asked for %d)",
                        len(self.contexts), self.n_contexts)  # fmt: skip
        self.str_tokens = vocab_strings(model)

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return  # (gradient accumulation: several batches end at one step)
        self._last_step = step
        start = time.process_time()
        device = pl_module.device
        with ExitStack() as stack:
            devices = [device] if device.type == "cuda" else []
            stack.enter_context(torch.random.fork_rng(devices=devices))
            stack.enter_context(torch.no_grad())
            stack.enter_context(torch.autocast(device.type, enabled=False))
            self.latest = self.evaluate(pl_module, step, trainer.global_rank, trainer.world_size)
        seconds = time.process_time() - start
        self.cpu_seconds += seconds
        if trainer.is_global_zero:
            self._log(trainer, self.latest, seconds)

    def evaluate(
        self, pl_module: Any, step: int = 0, rank: int = 0, world_size: int = 1
    ) -> Evidence:
        """One pass of the criteria over this rank's share of the held-out contexts."""
        if self.contexts is None:
            raise RuntimeError("FeatureEvidence.evaluate before on_fit_start read the contexts")
        device, spec = pl_module.device, pl_module.spec
        sae = to_inference_sae(pl_module.sae, float(pl_module.act_scale)).to(device)
        ctx = AnalysisContext(
            sae=sae,
            model=spec.model,
            hook_name=spec.hook_name,
            features=list(range(sae.d_sae)),
            str_tokens=self.str_tokens,
            contexts=self.contexts,
            drop_bos=spec.drop_bos,
        )
        n_tokens = len(self.contexts) * (self.contexts.shape[1] - ctx.start)
        results = AnalysisResults(ctx.features, {"n_analysed_tokens": n_tokens})
        module = AnalysisModule(sae, spec.model, ctx, results, batch_size=self.batch_size)
        module.to(device)
        for criterion in self.criteria:
            criterion.setup_metrics(len(ctx.features), ctx)  # fresh states (and first pass)
            for metric in criterion.metrics():
                metric.to(device)
        density = FeatureDensity(sae.d_sae).to(device)
        rows = torch.arange(rank, len(self.contexts), world_size)  # this rank's contexts
        for i, first in enumerate(range(0, len(rows), self.batch_size)):
            index = rows[first : first + self.batch_size]
            tokens = self.contexts[index].to(device)  # [b, n_ctx]
            batch = module.validation_step((tokens, index.to(device)), i)
            density.update(batch.feature_acts.flatten(0, 1))  # [b * pos, d_sae]
            for criterion in self.criteria:
                criterion.update(batch, ctx)
        kept = ctx.artefacts.find(KEPT_ACTIVATIONS)  # a first pass's activations not taken
        if kept is not None:
            kept.rows.clear()
        for criterion in self.criteria:  # already in finishing order
            found = criterion.collect(ctx)
            results.add(criterion.name, found, criterion.summary(found), criterion.headline)
        return Evidence(step, results, density.compute().cpu())

    def scalars(self, evidence: Evidence) -> dict[str, float]:
        """What one evaluation logs, by tag (the density histogram aside)."""
        results = evidence.results
        out = {
            f"criteria/{name}/{key}": float(value)
            for name, summary in results.summaries.items()
            for key, value in summary.items()
            if isinstance(value, (int, float))
        }
        out["evidence/dead_fraction"] = float(dead_fraction(evidence.density))
        features = {str(f): entry for f, entry in results.features.items()}
        for name, tokens in self.concepts.items():
            pick = select_concept(features, tokens)
            out[f"evidence/{name}/found"] = float(pick is not None)
            if pick is None:
                continue
            entry = features[str(pick.feature)]
            spec = result_of(entry, SpecificityResult, nested=False)
            sens = result_of(entry, SensitivityResult, nested=False)
            neuron = result_of(entry, NotANeuronResult, nested=False)
            out[f"evidence/{name}/feature"] = float(pick.feature)
            out[f"evidence/{name}/specificity"] = float(spec.specificity)  # type: ignore[union-attr]
            out[f"evidence/{name}/sensitivity"] = float(sens.sensitivity)  # type: ignore[union-attr]
            if neuron is not None and neuron.max_neuron_corr is not None:
                out[f"evidence/{name}/neuron_corr"] = float(neuron.max_neuron_corr)
        return out

    def _log(self, trainer: L.Trainer, evidence: Evidence, cpu_seconds: float) -> None:
        step = evidence.step
        scalars = {**self.scalars(evidence), "evidence/cpu_seconds": cpu_seconds}
        histogram = log10_density(evidence.density)  # [d_sae]
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_histogram"):
                experiment.add_histogram("evidence/log10_feature_density", histogram, step)


def _checked_criteria(criteria: Mapping[str, Criterion]) -> list[Criterion]:
    """The criteria in finishing order (:func:`order_criteria`), checked."""
    if not isinstance(criteria, Mapping):
        raise ValueError(f"criteria must be a mapping of name -> criterion, got {criteria!r}")
    return checked_criteria(list(criteria.values()))


def _checked_concepts(concepts: Mapping[str, Any], selected: list[str]) -> dict[str, list[str]]:
    """``{name: tokens}``; the names must be TensorBoard-tag-safe."""
    if not isinstance(concepts, Mapping):
        raise ValueError(
            f"concepts must be a mapping of name -> {{tokens: [...]}}, got {concepts!r}"
        )
    out = {}
    for name, spec in concepts.items():
        if not _TAG.match(str(name)):
            raise ValueError(
                f"concept name {name!r} must be letters, digits, '_', '.' or '-' (it is a tag)"
            )
        out[str(name)] = concept_tokens(spec)
    needed = [c for c in (SpecificityResult.criterion, SensitivityResult.criterion)
              if c not in selected]  # fmt: skip
    if out and needed:
        raise ValueError(
            f"concepts {sorted(out)} are judged by specificity and sensitivity, but the "
            f"criteria {selected} lack {needed}: add them, or set concepts={{}}"
        )
    return out
