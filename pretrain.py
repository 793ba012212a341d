"""Train the embedded 1-layer model: ``python pretrain.py [overrides]`` (conf/pretrain.yaml)."""

import hydra
from omegaconf import DictConfig

from sae_lightning.toy.pretrain import pretrain


@hydra.main(version_base="1.3", config_path="conf", config_name="pretrain")
def main(cfg: DictConfig) -> None:
    pretrain(cfg)


if __name__ == "__main__":
    main()
