"""debug=fast with every data option: the sizes it sets are ones the option's data module
takes (conf/debug_data/fast/<data>.yaml), and a model-free option is not left monitoring
val/loss_recovered, which nothing would log."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from sae_lightning.preflight import check_monitor
from sae_lightning.training import train

CONF = Path(__file__).resolve().parents[1] / "conf"
DATA_OPTIONS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_every_data_option_has_debug_fast_sizes() -> None:
    fast = sorted(p.stem for p in (CONF / "debug_data" / "fast").glob("*.yaml"))
    assert fast == DATA_OPTIONS and len(DATA_OPTIONS) >= 6


@pytest.mark.parametrize("data", DATA_OPTIONS)
def test_debug_fast_sets_only_keys_the_data_module_takes(data: str) -> None:
    cfg = _compose(f"data={data}", "debug=fast")
    plain = _compose(f"data={data}")
    accepted = set(inspect.signature(get_class(cfg.data._target_).__init__).parameters)
    assert set(cfg.data) - {"_target_"} <= accepted  # instantiation would not be refused
    assert cfg.trainer.max_steps == 20 and cfg.sae.d_sae == 256
    assert cfg.data.batch_size == 256 < plain.data.batch_size  # the small sizes did apply
    changed = {k for k in cfg.data if cfg.data.get(k) != plain.data.get(k)}
    assert changed & {"buffer_tokens", "val_samples"}  # and the option's own


def test_a_model_free_run_monitoring_loss_recovered_is_refused_before_training() -> None:
    with pytest.raises(ValueError, match=r"monitor=val/loss_recovered.*validates without a model"):
        check_monitor(_compose("data=synthetic", "debug=fast"))
    cached = _compose("data=cached", "data.path=x", "data.validate_with_model=false")
    with pytest.raises(ValueError, match="experiment=cached_model_free"):
        check_monitor(cached)
    check_monitor(_compose("experiment=synthetic", "debug=fast"))  # monitors val/mmcs
    check_monitor(_compose("experiment=cached_model_free", "data.path=x"))
    check_monitor(_compose("debug=fast"))  # the live stream logs val/loss_recovered


def test_experiment_synthetic_debug_fast_trains(tmp_path: Path) -> None:
    cfg = _compose(
        "experiment=synthetic", "debug=fast", f"paths.output_dir={tmp_path}",
        "+trainer.enable_progress_bar=false",
    )  # fmt: skip
    metrics = train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert saved["val/mmcs"] == pytest.approx(metrics["val/mmcs"]) and 0 < saved["val/mmcs"] <= 1
    assert (tmp_path / "sae" / "cfg.json").is_file()
