"""``saes=``: the SAEs of a multi-SAE run, each composed as its solo run would be, and the
loggers that give each its own TensorBoard run.

``saes`` maps a name to a list of command-line overrides. SAE ``name`` is configured as
``python train.py <this run's overrides> <its overrides> saes=null`` would be (so group
options such as ``sae=topk`` select their loss as usual), and may differ from the run only
in what an SAE owns (``sae``, ``loss``, ``module``, ``sparsity_warmup_steps``): the model,
data, trainer and seed are shared, because the SAEs read one activation stream.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SAE_KEYS = ("sae", "loss", "module", "sparsity_warmup_steps")
"""What one SAE of a multi-SAE run may set differently from the others."""
UNSHARED = (*SAE_KEYS, "saes", "paths", "task_name")
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
SAES_DIR = "saes"
"""``<run>/saes/<name>/``: each SAE's export, metrics.json, config.yaml and TensorBoard run."""


def sae_overrides(cfg: DictConfig) -> dict[str, list[str]]:
    """``cfg.saes`` checked: name -> its overrides; {} for a single-SAE run."""
    saes = cfg.get("saes")
    if not saes:
        return {}
    example = "saes={l1_2:['loss.l1_coeff=2'],k16:['sae=topk','sae.k=16']}"
    if not isinstance(saes, DictConfig):
        raise ValueError(f"saes must map SAE names to override lists, e.g. {example}; got {saes}")
    out = {}
    for name, overrides in saes.items():
        if not NAME.fullmatch(str(name)):
            raise ValueError(
                f"saes: {name!r} is not a usable SAE name (a folder name of letters, digits, "
                "'_', '.', '-')"
            )
        if overrides is None:
            overrides = []
        if not isinstance(overrides, ListConfig) or not all(isinstance(o, str) for o in overrides):
            raise ValueError(
                f"saes.{name} must be a list of overrides such as [loss.l1_coeff=2], "
                f"got {overrides}; e.g. {example}"
            )
        out[str(name)] = list(overrides)
    return out


def run_overrides() -> list[str]:
    """The command-line overrides of this run (none outside a Hydra app)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def sae_configs(cfg: DictConfig) -> dict[str, tuple[DictConfig, list[str]]]:
    """Each SAE of ``cfg.saes``: (its config, the overrides of its solo run); {} without
    ``saes``. Its ``paths.output_dir`` is ``<run>/saes/<name>``.

    Raises:
        ValueError: a bad name or override list, or an SAE that changes a shared setting.
    """
    saes = sae_overrides(cfg)
    if saes and cfg.get("model_b") is not None:
        raise ValueError(
            f"saes={sorted(saes)} with model_b set: several SAEs in one process read one "
            "model's stream, and a crosscoder of two models (model_b, experiment="
            "crosscoder_models) is not one of them; sweep crosscoders with -m instead, e.g. "
            "python train.py -m experiment=crosscoder_models loss.l1_coeff=1,2"
        )
    if saes and not HydraConfig.initialized():
        raise ValueError(
            "saes= composes each SAE from this run's overrides: run train.py, or compose "
            "the config with return_hydra_config=True and HydraConfig.instance().set_config"
        )
    configs = {}
    for name, overrides in saes.items():
        solo = [*run_overrides(), *overrides, "saes=null"]
        sub = _compose(solo)
        _check_shared(cfg, sub, name)
        with open_dict(sub):
            sub.paths.output_dir = str(Path(cfg.paths.output_dir) / SAES_DIR / name)
        configs[name] = (sub, solo)
    return configs


def _compose(overrides: list[str]) -> DictConfig:
    name = HydraConfig.get().job.config_name or "train"
    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)


def _check_shared(cfg: DictConfig, sub: DictConfig, name: str) -> None:
    """``sub`` agrees with the run on every setting the SAEs share."""
    for key in sorted(set(cfg) | set(sub)):
        if key in UNSHARED:
            continue
        mine, theirs = (
            OmegaConf.to_container(c, resolve=False) if isinstance(c, DictConfig) else c
            for c in (cfg.get(key), sub.get(key))
        )
        if mine != theirs:
            raise ValueError(
                f"saes.{name} changes {key} ({theirs!r} instead of {mine!r}); the SAEs of one "
                f"run share everything but {', '.join(SAE_KEYS)}: set it for the whole run, "
                "or sweep it with -m"
            )


class SAELoggers(Logger):
    """The run's loggers and each SAE's: a metric ``"<name>/<key>"`` goes to SAE ``name``'s
    loggers as ``"<key>"`` (its own TensorBoard run), any other to the run's.

    Args:
        shared: the run's loggers (learning rates, tokens/s, the run's hyper-parameters).
        members: SAE name -> its loggers.
    """

    def __init__(self, shared: list[Logger], members: dict[str, list[Logger]]) -> None:
        super().__init__()
        self.shared, self.members = shared, members

    @property
    def name(self) -> str:
        return self.shared[0].name if self.shared else SAES_DIR

    @property
    def version(self) -> str | int:
        return self.shared[0].version if self.shared else ""

    @property
    def save_dir(self) -> str | None:
        return self.shared[0].save_dir if self.shared else None

    @property
    def log_dir(self) -> str | None:
        return getattr(self.shared[0], "log_dir", None) if self.shared else None

    @property
    def experiment(self) -> Any:
        return self.shared[0].experiment if self.shared else None

    def member(self, name: str) -> Logger | None:
        """SAE ``name``'s first logger (its histograms go there)."""
        loggers = self.members.get(name) or []
        return loggers[0] if loggers else None

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        routed: dict[str | None, dict[str, float]] = {}
        for key, value in metrics.items():
            head, _, rest = key.partition("/")
            owner = head if rest and head in self.members else None
            routed.setdefault(owner, {})[rest if owner else key] = value
        for owner, values in routed.items():
            for logger in self.shared if owner is None else self.members[owner]:
                logger.log_metrics(values, step)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        for logger in self.shared:
            logger.log_hyperparams(params, *args, **kwargs)

    def _all(self) -> list[Logger]:
        return [*self.shared, *(lg for loggers in self.members.values() for lg in loggers)]

    @rank_zero_only
    def save(self) -> None:
        for logger in self._all():
            logger.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        for logger in self._all():
            logger.finalize(status)


def member_metrics(metrics: dict[str, float], name: str) -> dict[str, float]:
    """SAE ``name``'s ``val/*`` metrics out of the run's ``<name>/val/*``."""
    prefix = f"{name}/"
    return {
        k.removeprefix(prefix): v
        for k, v in metrics.items()
        if k.startswith(prefix) and k.removeprefix(prefix).startswith("val/")
    }
