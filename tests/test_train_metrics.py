"""The training metrics are computed only on the steps the logger records, and what it
records is what computing them on every step would record."""

# ruff: noqa: F811  (the small_corpus fixture is imported from test_train, then requested)

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import make_cfg, small_corpus  # noqa: F401

from sae_lightning.training import train

TAGS = ("train/mse", "train/l1", "train/l0", "train/explained_variance")


def _scalars(run) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in TAGS}


@pytest.mark.slow  # two 12-step runs, ~45 s
def test_metrics_of_the_logged_steps_equal_those_of_every_step(tmp_path, small_corpus) -> None:
    every = tmp_path / "every"
    train(make_cfg(every, small_corpus, "trainer.max_steps=12", "trainer.log_every_n_steps=1"))
    sparse = tmp_path / "sparse"
    train(make_cfg(sparse, small_corpus, "trainer.max_steps=12", "trainer.log_every_n_steps=4"))
    dense_logs, sparse_logs = _scalars(every), _scalars(sparse)
    for tag in TAGS:
        assert sorted(dense_logs[tag]) == list(range(12)), tag  # every step computed
        assert sorted(sparse_logs[tag]) == [3, 7, 11], tag  # steps 4, 8 and 12
        for step, value in sparse_logs[tag].items():
            assert value == dense_logs[tag][step], (tag, step)
    assert len(set(dense_logs["train/explained_variance"].values())) > 3  # values move
