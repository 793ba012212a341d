"""Write a pretrained model folder: weights, config, tokenizer, measured numbers, model card."""

from __future__ import annotations

import json
import logging
import platform
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from sae_lightning.data.corpus import load_documents, split_documents
from sae_lightning.models import (
    CONFIG_FILE,
    EMBEDDED_NAME,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    load_embedded,
)
from sae_lightning.toy.evaluate import heldout_loss
from sae_lightning.toy.lm import LMConfig, TinyLM
from sae_lightning.toy.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

log = logging.getLogger(__name__)
CARD_FILE = "MODEL_CARD.md"


def train_and_save_tokenizer(corpus: str, val_fraction: float, vocab_size: int, out: Path) -> Path:
    """Train the BPE tokenizer on the training split only and save it under ``out``."""
    docs = split_documents(load_documents(corpus), "train", val_fraction)
    return save_tokenizer(train_tokenizer(docs, vocab_size), out / TOKENIZER_DIR)


def copy_tokenizer(source: str | Path, vocab_size: int, out: Path) -> Path:
    """Reuse an existing tokenizer folder: copied byte for byte to ``out``, so that a second
    model shares every token id with the model that tokenizer came from."""
    source = Path(source)
    tokenizer = load_tokenizer(source)  # raises, naming the folder, when it is not one
    if len(tokenizer) != vocab_size:
        raise ValueError(
            f"tokenizer {str(source)!r} has {len(tokenizer)} tokens but vocab_size is "
            f"{vocab_size}; set vocab_size={len(tokenizer)} or tokenizer=null to train one"
        )
    return Path(shutil.copytree(source, out / TOKENIZER_DIR, dirs_exist_ok=True))


def export_model(
    model: TinyLM, tokenizer_dir: Path, cfg: DictConfig, out: Path, train_seconds: float
) -> dict[str, float]:
    """Export ``model`` to ``out/model`` (and ``cfg.export_dir``), evaluated through the bridge."""
    folder = out / "model"
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    if (folder / TOKENIZER_DIR).resolve() != tokenizer_dir.resolve():
        shutil.copytree(tokenizer_dir, folder / TOKENIZER_DIR, dirs_exist_ok=True)
    recipe = {
        "corpus": cfg.corpus,
        "val_fraction": cfg.val_fraction,
        "vocab_size": cfg.vocab_size,
        "seed": cfg.seed,
        "tokenizer": cfg.get("tokenizer"),
        "max_steps": cfg.trainer.max_steps,
        "batch_size": cfg.data.batch_size,
        "optimizer": OmegaConf.to_container(cfg.module.optimizer, resolve=True),
        "warmup_steps": cfg.module.warmup_steps,
        "min_lr_ratio": cfg.module.min_lr_ratio,
        "precision": cfg.trainer.precision,
    }
    config = {
        "name": cfg.get("model_name") or EMBEDDED_NAME,
        "bridge_config": LMConfig(**cfg.model).bridge_config(),
        "recipe": recipe,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    loss, n_tokens = heldout_loss(load_embedded(folder), cfg.corpus, cfg.val_fraction)
    metrics = {
        "heldout_loss": round(loss, 4),
        "heldout_tokens": n_tokens,
        "train_seconds": round(train_seconds, 1),
        "python": platform.python_version(),
    }
    config["metrics"] = metrics
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (folder / CARD_FILE).write_text(model_card(config))
    log.info("held-out loss %.4f nats/token over %d tokens", loss, n_tokens)
    if cfg.get("export_dir"):
        shutil.copytree(folder, Path(cfg.export_dir), dirs_exist_ok=True)
        log.info("exported the model to %s", cfg.export_dir)
    return metrics


def model_card(config: dict) -> str:
    """The model card: what the model is, its data, its recipe, its numbers, how to rebuild."""
    bc, recipe, metrics = config["bridge_config"], config["recipe"], config["metrics"]
    n_params = bc["d_vocab"] * bc["d_model"] * 2 + bc["n_ctx"] * bc["d_model"]
    n_params += 4 * bc["d_model"] ** 2 + 2 * bc["d_model"] * bc["d_mlp"]
    title, intro, tokenizer_note, rebuild = _card_parts(config)
    return f"""# {title}

{intro}

| | |
|---|---|
| layers | 1 (attention + MLP, pre-LayerNorm) |
| d_model / heads x d_head | {bc["d_model"]} / {bc["n_heads"]} x {bc["d_head"]} |
| d_mlp (neurons) | {bc["d_mlp"]}, activation `{bc["act_fn"]}` |
| context / positions | {bc["n_ctx"]}, learned |
| vocabulary | {bc["d_vocab"]}, byte-level BPE, `<|endoftext|>` = BOS and document separator |
| parameters | about {n_params / 1e6:.2f} M (weights in float32 safetensors) |

## Data
Python {metrics["python"]}'s standard library: every `.py` module except `site-packages` and
test code, plus the English documentation in `pydoc_data.topics`. Documents are split by a
hash of their path; {recipe["val_fraction"]:.0%} are held out for validation (the tokenizer
never sees them either). Another Python version has a slightly different standard library,
so its numbers differ slightly.{tokenizer_note}

## Recipe
`conf/pretrain.yaml`: seed {recipe["seed"]}, {recipe["max_steps"]} steps of
{recipe["batch_size"]} contexts x {bc["n_ctx"]} tokens, AdamW
(lr {recipe["optimizer"]["lr"]}, betas {recipe["optimizer"]["betas"]}, weight decay
{recipe["optimizer"]["weight_decay"]} on matrices), {recipe["warmup_steps"]} warm-up steps,
cosine decay to {recipe["min_lr_ratio"]} of the peak, `{recipe["precision"]}` precision.
Training took {metrics["train_seconds"] / 60:.1f} minutes on this machine.

## Numbers
Held-out loss: **{metrics["heldout_loss"]:.4f} nats/token** over {metrics["heldout_tokens"]}
predicted tokens (BOS-prefixed contexts of {bc["n_ctx"]}), measured through the
TransformerLens bridge by `python -m sae_lightning.toy.evaluate`.

## Rebuild
{rebuild}
"""


def _card_parts(config: dict) -> tuple[str, str, str, str]:
    """The parts of the card that differ between the first model and one that reuses its
    tokenizer with another seed: title, introduction, tokenizer note, rebuild command."""
    name, recipe = config["name"], config["recipe"]
    if not recipe.get("tokenizer"):
        intro = (
            "A one-layer transformer in TransformerLens' native architecture, trained by this "
            "project's\nown recipe so that sae-lightning works with no network. It plays the "
            "role of `gelu-1l`\n(1 layer, GELU MLP, English text plus Python code) at a size "
            "that trains on 2 CPU cores."
        )
        rebuild = (
            f"`python pretrain.py export_dir=sae_lightning/assets/{name}` retrains the "
            "tokenizer and the\nmodel and overwrites this folder; `python pretrain.py` alone "
            "writes to `outputs/pretrain/`."
        )
        return f"{name}: the embedded 1-layer model", intro, "", rebuild
    source, seed, tokenizer = (
        Path(recipe["tokenizer"]).parent.name,
        recipe["seed"],
        recipe["tokenizer"],
    )
    intro = (
        f"A second one-layer model shipped with sae-lightning: the recipe, tokenizer and data "
        f"of\n`{source}` with another seed ({seed}), so that features can be compared across "
        f"two\nindependently trained models (universality) with no network. Load it with "
        f"`model={name}`\nor by its name, `{name}`, in an SAE's `metadata.model_name`."
    )
    note = (
        f"\nThe tokenizer is `{source}`'s, reused byte for byte (`tokenizer={tokenizer}`),\n"
        "so both models share every token id; the held-out documents are the same too."
    )
    rebuild = (
        f"`python pretrain.py seed={seed} tokenizer={tokenizer} model_name={name}\n"
        f"export_dir=sae_lightning/assets/{name}` retrains the model (not the tokenizer) and "
        "overwrites\nthis folder."
    )
    return f"{name}: a second embedded 1-layer model", intro, note, rebuild
