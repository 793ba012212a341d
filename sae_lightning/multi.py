"""``MultiSAEModule``: several SAEs trained in one process on one activation stream.

Each SAE is an ordinary :class:`~sae_lightning.module.SAEModule` (its own loss, optimizer,
scheduler, metrics and unit-norm projection); the frozen model's forward and the shuffle
buffer are shared. The SAEs never interact: a step's gradient of SAE *i* is the gradient of
its own loss, so every SAE ends with the weights its solo run with the same seed would reach.
Configured by ``saes=`` (:mod:`sae_lightning.multi_config`); metrics are logged as
``<name>/train/...`` and routed by :class:`~sae_lightning.multi_config.SAELoggers` to each
SAE's own TensorBoard run.
"""

from __future__ import annotations

import functools
from typing import Any

import lightning as L
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from sae_lightning.models import move_model
from sae_lightning.module import SAEModule


class MemberMixin:
    """An SAEModule trained inside a :class:`MultiSAEModule`: it logs through it under
    ``"<name>/"`` (the progress bar stays short) and draws its histograms in its own run."""

    def bind(self, parent: L.LightningModule, name: str) -> None:
        # plain attributes: the parent must not become a submodule of its own member
        self.__dict__["_multi_parent"], self.__dict__["member_name"] = parent, name

    def log(self, name: str, value: Any, **kwargs: Any) -> None:
        kwargs["prog_bar"] = False
        self._multi_parent.log(f"{self.member_name}/{name}", value, **kwargs)

    @property
    def logger(self):
        shared = self._multi_parent.logger
        member = getattr(shared, "member", None)
        return member(self.member_name) if member is not None else shared


@functools.cache
def _member_class(cls: type) -> type:
    return type(f"Member{cls.__name__}", (MemberMixin, cls), {})


def member_factory(factory: functools.partial) -> functools.partial:
    """``instantiate(cfg.module, _partial_=True)`` made to build a member of a
    :class:`MultiSAEModule` (the same class, with :class:`MemberMixin` in front)."""
    if not (isinstance(factory.func, type) and issubclass(factory.func, SAEModule)):
        raise ValueError(f"module._target_ must be an SAEModule (subclass), got {factory.func!r}")
    return functools.partial(_member_class(factory.func), *factory.args, **factory.keywords)


class MultiSAEModule(L.LightningModule):
    """Trains the SAEs of ``members`` side by side on the same batches.

    Manual optimisation: one backward of the summed losses (each SAE's parameters get
    exactly the gradient of its own loss), then each SAE's projection, optimizer step,
    renormalisation and scheduler step, as its solo run does them. Validation runs the
    clean model and the zero-ablated baseline once per batch and splices each SAE in.

    Args:
        members: name -> SAEModule built by :func:`member_factory`, all reading the same
            activations (the same :class:`~sae_lightning.spec.ActivationSpec`, or none).
    """

    def __init__(self, members: dict[str, SAEModule]) -> None:
        super().__init__()
        if not members:
            raise ValueError("MultiSAEModule needs at least one SAE, got none")
        specs = {id(m.spec) for m in members.values()}
        if len(specs) != 1:
            raise ValueError(f"the SAEs {sorted(members)} must read the same ActivationSpec")
        for name, member in members.items():
            if not isinstance(member, MemberMixin):
                raise ValueError(f"SAE {name!r} was not built by member_factory")
            member.bind(self, name)
        self.automatic_optimization = False
        self.saes = nn.ModuleDict(members)
        self.__dict__["spec"] = next(iter(members.values())).spec
        self._schedulers: dict[int, list[Any]] | None = None

    @property
    def sae(self):
        raise ValueError(
            f"this run trains {len(self.saes)} SAEs ({', '.join(self.saes)}): a callback "
            "that reads pl_module.sae (callbacks=resample, data=synthetic's dictionary "
            "recovery) needs a single-SAE run (saes=null)"
        )

    @property
    def trainer(self) -> L.Trainer:
        return L.LightningModule.trainer.fget(self)

    @trainer.setter
    def trainer(self, trainer: L.Trainer | None) -> None:
        L.LightningModule.trainer.fset(self, trainer)
        for member in self.saes.values():  # global_step, device, datamodule for each SAE
            member.trainer = trainer

    def on_fit_start(self) -> None:
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError(
                f"trainer.precision={self.trainer.precision} scales the loss per optimizer "
                "step; several SAEs step outside it: use bf16-mixed or 32-true"
            )
        if self.spec is not None:
            move_model(self.spec.model, self.device)
        for member in self.saes.values():
            member.on_fit_start()

    def training_step(
        self, batch: Float[Tensor, "batch d_in"], batch_idx: int
    ) -> dict[str, Tensor]:
        """Every SAE's step on ``batch``; ``"loss"``: their losses [n_saes]."""
        members = list(self.saes.values())
        losses = torch.stack([m.training_step(batch, batch_idx)["loss"] for m in members])
        # Lightning runs the whole manual step under the precision's autocast; a solo run
        # projects and steps outside it (bf16-mixed would otherwise cast the projection)
        with torch.autocast(self.device.type, enabled=False):
            self._step(members, losses)
        return {"loss": losses.detach()}

    def _step(self, members: list[SAEModule], losses: Float[Tensor, " n_saes"]) -> None:
        # one backward (DDP expects one per forward): d(sum)/d(loss_i) = 1 exactly
        self.manual_backward(losses.sum())
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for i, (member, opt) in enumerate(zip(members, optimizers, strict=True)):
            member.on_after_backward()  # the decoder-gradient projection
            # Lightning counts one global step per LightningOptimizer.step: the last SAE's
            # step is the batch's, the others step their optimizer directly
            if i == len(members) - 1:
                opt.step()
            else:
                opt.optimizer.step()
            opt.zero_grad()
            if member.unit_norm_decoder:
                member.sae.set_decoder_norm_to_unit_norm()
            for scheduler in self._schedulers_of(opt.optimizer):
                scheduler.step()

    def _schedulers_of(self, optimizer: torch.optim.Optimizer) -> list[Any]:
        if self._schedulers is None:
            self._schedulers = {}
            for config in self.trainer.lr_scheduler_configs:
                key = id(config.scheduler.optimizer)
                self._schedulers.setdefault(key, []).append(config.scheduler)
        return self._schedulers.get(id(optimizer), [])

    def validation_step(
        self, batch: list[Int[Tensor, "b n_ctx"]] | Float[Tensor, "b d_in"], batch_idx: int
    ) -> None:
        members = list(self.saes.values())
        if self.spec is None:  # model-free: activation batches, nothing to splice
            for member in members:
                member.validation_step(batch, batch_idx)
            return
        with torch.autocast(self.device.type, enabled=False):  # float32, as SAEModule does
            self._validate_spliced(members, batch[0])

    def _validate_spliced(self, members: list[SAEModule], tokens: Int[Tensor, "b n_ctx"]) -> None:
        logits_clean, acts = self.spec.logits_and_capture(tokens)  # one clean forward
        ce_zero = members[0].zero_ablation_ce(tokens, logits_clean, acts)
        for member in members:
            member.validate_spliced(tokens, logits_clean, acts, ce_zero)

    def on_validation_epoch_end(self) -> None:
        for member in self.saes.values():
            member.on_validation_epoch_end()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["saes"] = {}
        for name, member in self.saes.items():
            member.on_save_checkpoint(checkpoint["saes"].setdefault(name, {}))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("saes") or {}
        for name, member in self.saes.items():
            member.on_load_checkpoint(saved.get(name, {}))

    def configure_optimizers(self) -> list[dict]:
        """One optimizer (and scheduler) per SAE, in the order of ``saes``."""
        self._schedulers = None
        return [member.configure_optimizers() for member in self.saes.values()]
