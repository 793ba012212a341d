"""What *Towards Monosemanticity* (Bricken et al., 2023) reports for its run A/1, and where
this replication necessarily differs.

Each number is quoted with what it measured, because several of ours measure something close
to, but not the same as, the paper's.
"""

from __future__ import annotations

import shlex
from typing import Any

PAPER = {
    "loss_recovered": 0.79,  # "79% of the log-likelihood loss reduction ... is recovered"
    "dead": 168,  # of 4,096: "active on none of the 100 million dataset examples"
    "ultralow": 292,  # "active on less than 1 in a million dataset examples"
    "ultralow_threshold": 1e-6,  # the density below which a feature is "ultralow"
    "feature_universality": 0.72,  # median best-match corr, A/1 vs B/1 (different transformers)
    "neuron_universality": 0.46,  # median best-match corr, neurons of transformer A vs B
}
WELL_BELOW = 0.1
"""The replication's target: features at least the paper's 0.72 across transformers, and the
neurons' median at least this far below the features' (the paper's gap is 0.26)."""
PAPER_RECIPE_OVERRIDES = (
    "sae=relu",
    "~sae.k",
    "~loss.auxk_coeff",
    "sae.d_sae=4096",
    "trainer.max_steps=1600",
    "trainer.val_check_interval=400",  # the last validation at the last step
    "module.optimizer.lr=0.001",
    "module.scheduler.decay=none",
)
"""Overrides of ``experiment=replicate_monosemanticity`` that train the paper's ReLU-L1
(``l1_coeff`` 2, 4,096 features, 1,600 x 1,024 activations, lr 1e-3 without decay,
validation every 400 steps)."""
DIFFERENCES = [
    "- **Two small transformers.** As in the paper, B is an SAE on a *second transformer* "
    "(`toy-1l-b`: `toy-1l`'s recipe, tokenizer and data with another seed), and the neuron "
    "baseline matches each MLP neuron of transformer A to its best-correlated neuron of "
    "transformer B on the same tokens. The paper's transformers have 512 MLP neurons, ours "
    "1,024. A' (the same recipe on transformer A, another SAE seed) is an easier test the "
    "paper does not report, kept for contrast.",
    "- **Scale.** The paper trained on 8 billion activations of a model trained on the Pile; "
    "these SAEs see a few million activations of a model trained on the Python standard "
    "library's source and docs. Dead features are counted over the held-out split, whose size "
    "sets the smallest density it can resolve (1 / tokens): the paper's ultralow threshold "
    "(1e-6 on 100M tokens) is below it, so the table gives the count below 1e-5 instead.",
    "- **Proxies.** The paper wrote a proxy per feature by hand; here every proxy is automatic "
    "(the tokens carrying the feature's top activation mass, refined by the next token). A "
    "concept's feature is the one whose automatic proxy contains the concept's token with the "
    "largest specificity × sensitivity (`sae_lightning/replication/concepts.py`).",
    "- **Populations.** The universality table's medians leave out dead and ultralow-density "
    "features, as the paper does (the threshold is stated under it); the pass rates and the "
    "per-group medians of the Population section are over every feature that fired (and so "
    "could be judged) on the held-out tokens.",
    "- **Loss recovered** is measured on the validation contexts of training "
    "(`data.val_contexts`), against zero-ablating the MLP, as in the paper.",
]


def recipe_label(run: dict[str, Any]) -> str:
    """A run's SAE recipe in a few words: ``topk, k 16``, ``relu, L1 2.0``, with the learning
    rate when it is not the default 1e-3 or decays (``topk, k 16, lr 0.003 linear decay``)
    and ``no AuxK`` when a TopK recipe turns AuxK off."""
    arch = run.get("architecture") or "?"
    if run.get("k") is not None:
        label = f"{arch}, k {run['k']}" + (", no AuxK" if run.get("auxk_coeff") == 0 else "")
    else:
        label = f"{arch}, L1 {run['l1_coeff']}" if run.get("l1_coeff") is not None else arch
    lr, decay = run.get("lr"), run.get("lr_decay")
    decays = decay not in (None, "none")
    if lr is not None and (lr != 1e-3 or decays):
        label += f", lr {lr:g}"
    return label + (f" {decay} decay" if decays else "")


def recipe_note(run: dict[str, Any]) -> list[str]:
    """The difference from the paper's SAEs, when the recipe is not its ReLU-L1."""
    if run.get("architecture") in (None, "relu"):
        return []
    return [
        f"- **The SAEs.** The paper trained ReLU SAEs with an L1 penalty; these are "
        f"{recipe_label(run)}, the recipe a sweep found most universal across the two "
        "transformers at loss recovered >= 0.85 (`docs/recipe_sweep/README.md`; the "
        f"overrides `{shlex.join(PAPER_RECIPE_OVERRIDES)}` train the paper's ReLU-L1)."
    ]
