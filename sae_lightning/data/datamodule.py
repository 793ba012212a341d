"""``ActivationDataModule``: training batches of live activations, validation token contexts."""

from __future__ import annotations

import logging

import lightning as L
import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from sae_lightning.data.activations import ActivationStream
from sae_lightning.data.readers import ArrayContexts, StreamedContexts
from sae_lightning.hooks import model_device
from sae_lightning.models import move_model
from sae_lightning.paired import PairedSpec
from sae_lightning.spec import ActivationSpec

log = logging.getLogger(__name__)


class ActivationDataModule(L.LightningDataModule):
    """Streams activations of the frozen model at ``hook_name`` from a token source.

    Training batches are ``[batch_size, d_in]`` activations computed on the training device
    (so ``num_workers`` stays 0); validation batches are token contexts ``[b, n_ctx]``,
    because validation splices the SAE back into the model. The frozen model is handed over
    with :meth:`set_model` (``train.py`` does it) and is never checkpointed.

    Args:
        source: a token source (``sae_lightning.data.sources``).
        hook_name: TransformerLens hook whose activations the SAE reads.
        batch_size: activations per training batch.
        buffer_tokens: shuffle buffer capacity, in activations.
        refill_fraction: share of the buffer emitted between refills.
        contexts_per_forward: contexts per frozen forward pass.
        drop_bos: skip the BOS position of every context.
        n_ctx: context length; None uses the model's n_ctx.
        val_contexts: held-out contexts scored at each validation.
        val_batch_size: contexts per validation batch.
        seed: seeds context order and buffer shuffles.
        hook_name_out: a transcoder's target hook: batches are then ``[x_in | x_out]``
            (``d_in + d_out`` wide), both hooks read in one forward. None: an SAE.
    """

    model_free = False
    """Activations come from a frozen model (``train`` loads it and calls :meth:`set_model`)."""

    def __init__(
        self,
        source,
        hook_name: str = "blocks.0.mlp.hook_post",
        batch_size: int = 4096,
        buffer_tokens: int = 65536,
        refill_fraction: float = 0.5,
        contexts_per_forward: int = 32,
        drop_bos: bool = True,
        n_ctx: int | None = None,
        val_contexts: int = 64,
        val_batch_size: int = 16,
        seed: int = 0,
        hook_name_out: str | None = None,
    ) -> None:
        super().__init__()
        self.hook_name_out = hook_name_out
        self.source, self.hook_name, self.batch_size = source, hook_name, batch_size
        self.buffer_tokens, self.refill_fraction = buffer_tokens, refill_fraction
        self.contexts_per_forward, self.drop_bos, self.n_ctx = contexts_per_forward, drop_bos, n_ctx
        self.val_contexts, self.val_batch_size, self.seed = val_contexts, val_batch_size, seed
        self.model = None
        self.spec: ActivationSpec | None = None  # built by set_model, handed to the module
        self.train_ctx: Tensor | ArrayContexts | StreamedContexts | None = None
        self.val_ctx: Tensor | None = None
        self.stream: ActivationStream | None = None
        self._resume: dict | None = None

    def set_model(
        self, model, model_b=None, names: tuple[str, str] | None = None
    ) -> ActivationSpec | PairedSpec:
        """Attach the frozen model; returns the :class:`ActivationSpec` (hook checked, width
        probed) that the module must read the same way. With ``model_b`` (a crosscoder of two
        models, ``names`` theirs): a :class:`PairedSpec`, rows ``[x_A | x_B]``."""
        if model_b is not None:
            if self.hook_name_out is not None:
                raise ValueError(
                    f"model_b and hook_name_out={self.hook_name_out!r} together are not "
                    "supported: a crosscoder of two models reads one hook of each"
                )
            self.spec = PairedSpec(
                model, model_b, self.hook_name, self.drop_bos, self.n_ctx or 0,
                names or ("model", "model_b"),
            )  # fmt: skip
        else:
            self.spec = ActivationSpec(
                model, self.hook_name, self.drop_bos, self.n_ctx or 0, self.hook_name_out
            )
        self.model, self.n_ctx = model, self.spec.n_ctx
        return self.spec

    def _require_model(self):
        if self.model is None:
            raise RuntimeError("ActivationDataModule has no model: call set_model(model) first")
        return self.model

    def prepare_contexts(self) -> None:
        """Open the source once: training contexts (in memory, memory-mapped or streamed, see
        :mod:`sae_lightning.data.readers`) and the first ``val_contexts`` validation ones."""
        if self.train_ctx is None:
            model = self._require_model()
            tokenizer, d_vocab = model.tokenizer, int(model.cfg.d_vocab)
            self.train_ctx = self.source.reader("train", tokenizer, self.n_ctx, d_vocab)
            val = self.source.reader("val", tokenizer, self.n_ctx, d_vocab)
            self.val_ctx = val[: self.val_contexts]
            log.info(
                "%s training and %d validation contexts of %d tokens",
                "streamed" if self.train_ctx.shape[0] is None else len(self.train_ctx),
                len(self.val_ctx),
                self.n_ctx,
            )

    @property
    def device(self) -> torch.device:
        return (
            self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        )

    def setup(self, stage: str | None = None) -> None:
        self._require_model()
        for model in self.spec.models:
            move_model(model, self.device)
        self.prepare_contexts()

    def d_in(self) -> int:
        """Width of the hooked activation (per-head hooks flattened)."""
        self._require_model()
        return self.spec.d_in

    def sample_activations(self, n: int) -> Float[Tensor, "n d_in"]:
        """``n`` activations from the first training contexts (for data-dependent init), on
        the model's device (before ``setup`` that need not be the trainer's)."""
        self.prepare_contexts()
        per_ctx = self.n_ctx - int(self.drop_bos)
        rows = self.train_ctx[: max(1, -(-n // per_ctx))].to(model_device(self._require_model()))
        with torch.inference_mode():
            acts = self.spec.trained(self.spec.capture(rows))[:n]
        return acts.clone()  # outside inference mode: a normal tensor, usable in autograd

    def make_stream(
        self, rank: int = 0, world_size: int = 1, epochs: int | None = None
    ) -> ActivationStream:
        self.prepare_contexts()
        return ActivationStream(
            self._require_model(),
            self.train_ctx,
            self.hook_name,
            self.batch_size,
            self.buffer_tokens,
            self.refill_fraction,
            self.contexts_per_forward,
            self.drop_bos,
            self.seed,
            rank,
            world_size,
            epochs,
            self.device,
            capture=self.spec.capture,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self.stream = self.make_stream(rank, world)
        if self._resume is not None:
            self.stream.load_state(self._resume)
            self._resume = None
        return DataLoader(self.stream, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        self.prepare_contexts()
        return DataLoader(TensorDataset(self.val_ctx), batch_size=self.val_batch_size)

    def state_dict(self) -> dict:
        if self.stream is None or self.trainer is None:
            return {}
        batches = self.trainer.global_step * self.trainer.accumulate_grad_batches
        return {"stream": self.stream.state_after(batches)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = state_dict.get("stream")
