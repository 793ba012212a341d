"""The warning for final metrics that come from a validation before the last step."""

import logging

import pytest
from omegaconf import OmegaConf
from test_multi_sae import run
from test_train import small_corpus  # noqa: F401

from sae_lightning.preflight import warn_stale_final_validation


def _cfg(max_steps, every):
    return OmegaConf.create({"trainer": {"max_steps": max_steps, "val_check_interval": every}})


def test_steps_not_a_multiple_of_the_interval_are_warned_with_both_fixes(caplog):
    with caplog.at_level(logging.WARNING, logger="sae_lightning.preflight"):
        message = warn_stale_final_validation(_cfg(1600, 1200))
    assert message is not None and message in caplog.text
    assert "trainer.max_steps=1600" in message and "trainer.val_check_interval=1200" in message
    assert "last validation runs at step 1200" in message and "400 steps old" in message
    assert "trainer.max_steps=2400 or trainer.val_check_interval=800" in message


@pytest.mark.parametrize(
    ("max_steps", "every"),
    [(8000, 2000), (1600, 400), (100, 400), (-1, 400), (1600, 0.5), (1600, None)],
)
def test_a_last_validation_at_the_last_step_or_none_at_all_is_not_warned(max_steps, every):
    # equal steps, or fewer than one interval (the end-of-run warning says validation never
    # ran), or an interval that is not a step count
    assert warn_stale_final_validation(_cfg(max_steps, every)) is None


def test_a_multi_run_warns_once_not_once_per_sae(tmp_path, small_corpus, caplog):  # noqa: F811
    saes = "saes={l1_1:['loss.l1_coeff=1'],l1_2:['loss.l1_coeff=2']}"
    stale = ["trainer.max_steps=15", "trainer.val_check_interval=10"]  # debug=fast: 10
    with caplog.at_level(logging.WARNING, logger="sae_lightning.preflight"):
        run(tmp_path, small_corpus, saes, *stale)
    warned = [r for r in caplog.records if "last validation runs at step 10" in r.getMessage()]
    assert len(warned) == 1
    assert "trainer.max_steps=20 or trainer.val_check_interval=5" in warned[0].getMessage()
