"""Write a frozen model's activations once: ``python cache_activations.py path=<folder>``.

Configuration: conf/cache_activations.yaml (the same ``model``, ``data`` and ``hook_name`` as
conf/train.yaml). Train on the cache with ``python train.py data=cached data.path=<folder>``.
Rerunning the same command after an interruption finishes the cache (complete shards kept).
"""

import hydra
from omegaconf import DictConfig

from sae_lightning.cli import user_errors
from sae_lightning.console import quiet_known_noise
from sae_lightning.data.cache import cache_activations


@hydra.main(version_base="1.3", config_path="conf", config_name="cache_activations")
def main(cfg: DictConfig) -> None:
    quiet_known_noise()
    with user_errors("cache_activations.py"):
        cache_activations(cfg)  # ends with the folder and the train command that uses it


if __name__ == "__main__":
    main()
