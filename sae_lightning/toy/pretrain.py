"""The recipe that trains the embedded model: Lightning + a Hydra config (conf/pretrain.yaml).

``python pretrain.py`` trains the tokenizer (or reuses the folder ``tokenizer=`` names, byte
for byte) and the model on the training split of the corpus, then exports a model folder
(safetensors weights, config, tokenizer, model card) into the run directory, and also into
``export_dir`` when given (``export_dir=sae_lightning/assets/toy-1l`` rebuilds the shipped
model; conf/pretrain.yaml shows the command that builds ``toy-1l-b``).
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from sae_lightning.cpu_bf16 import warn_emulated_bf16
from sae_lightning.data.corpus import load_documents, split_documents
from sae_lightning.data.tokens import encode_documents, make_contexts
from sae_lightning.toy.lm import LMConfig, TinyLM
from sae_lightning.toy.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


class LMDataModule(L.LightningDataModule):
    """Fixed-length BOS-prefixed contexts of the corpus' train and validation splits."""

    def __init__(
        self,
        tokenizer_dir: str,
        corpus: str = "stdlib",
        val_fraction: float = 0.05,
        n_ctx: int = 128,
        batch_size: int = 32,
        val_contexts: int = 128,
    ) -> None:
        super().__init__()
        self.tokenizer_dir, self.corpus, self.val_fraction = tokenizer_dir, corpus, val_fraction
        self.n_ctx, self.batch_size, self.val_contexts = n_ctx, batch_size, val_contexts
        self.train_ctx: torch.Tensor | None = None
        self.val_ctx: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_ctx is not None:
            return
        tokenizer = load_tokenizer(self.tokenizer_dir)
        docs = load_documents(self.corpus)
        contexts = {}
        for split in ("train", "val"):
            stream = encode_documents(split_documents(docs, split, self.val_fraction), tokenizer)
            contexts[split] = make_contexts(stream, self.n_ctx, tokenizer.bos_token_id)
        self.train_ctx, self.val_ctx = contexts["train"], contexts["val"][: self.val_contexts]
        log.info("pretraining on %d contexts of %d tokens", len(self.train_ctx), self.n_ctx)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            TensorDataset(self.train_ctx), self.batch_size, shuffle=True, drop_last=True
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.val_ctx), self.batch_size)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LMModule(L.LightningModule):
    """Next-token prediction for :class:`TinyLM`; AdamW with warm-up and cosine decay."""

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: Any,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.model = TinyLM(LMConfig(**model))
        self.optimizer_factory = optimizer
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio

    def _loss(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.model(tokens)  # [batch, pos, d_vocab]
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch[0])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch[0]), prog_bar=True)

    def configure_optimizers(self) -> dict:
        # weight decay on matrices only; biases, LayerNorm and embeddings are not decayed
        decay = [p for n, p in self.model.named_parameters() if p.ndim == 2 and "embed." not in n]
        rest = [p for n, p in self.model.named_parameters() if p.ndim != 2 or "embed." in n]
        opt = self.optimizer_factory([{"params": decay}, {"params": rest, "weight_decay": 0.0}])
        total = self.trainer.max_steps
        schedule = partial(
            warmup_cosine,
            warmup_steps=self.warmup_steps,
            total_steps=total,
            min_ratio=self.min_lr_ratio,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def pretrain(cfg: DictConfig) -> dict[str, float]:
    """Train (or reuse) the tokenizer, train the model, export the model folder; returns the
    measured numbers."""
    from sae_lightning.toy.export import copy_tokenizer, export_model, train_and_save_tokenizer

    out = Path(cfg.paths.output_dir)
    warn_emulated_bf16(cfg)  # the recipe trains in bf16-mixed
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg.num_threads)
    start = time.time()
    if cfg.get("tokenizer"):
        tokenizer_dir = copy_tokenizer(cfg.tokenizer, cfg.vocab_size, out)
    else:
        tokenizer_dir = train_and_save_tokenizer(cfg.corpus, cfg.val_fraction, cfg.vocab_size, out)
    datamodule = instantiate(cfg.data, tokenizer_dir=str(tokenizer_dir))
    module = instantiate(cfg.module, model=OmegaConf.to_container(cfg.model, resolve=True))
    trainer = instantiate(cfg.trainer, default_root_dir=str(out))
    trainer.fit(module, datamodule=datamodule)
    if trainer.global_step < trainer.max_steps:  # SIGTERM or Ctrl-C: fit returns early
        raise RuntimeError(
            f"pretraining stopped at step {trainer.global_step} of {trainer.max_steps}: "
            f"nothing was exported (a half-trained model would have replaced "
            f"{cfg.get('export_dir') or out / 'model'}); run the command again"
        )
    train_seconds = time.time() - start
    return export_model(module.model, tokenizer_dir, cfg, out, train_seconds)
