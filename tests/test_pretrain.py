"""pretrain.py's options for a second model: tokenizer= reuses a tokenizer folder byte for byte
(so two models share token ids), model_name= names the exported model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from test_train import ROOT, small_corpus  # noqa: F401

from sae_lightning.models import TOKENIZER_DIR, embedded_dir

SHIPPED_TOKENIZER = embedded_dir("toy-1l") / TOKENIZER_DIR
TINY_LM = (
    "model.d_model=32",
    "model.n_heads=2",
    "model.d_head=16",
    "model.d_mlp=64",
    "model.n_ctx=32",
    "trainer.max_steps=3",
    "trainer.logger=null",
    "data.batch_size=4",
    "data.val_contexts=4",
)


def _pretrain_cfg(out: Path, corpus: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "pretrain",
            overrides=[
                f"corpus={corpus}",
                "val_fraction=0.3",
                f"paths.output_dir={out}",
                *TINY_LM,
                *overrides,
            ],
        )


@pytest.mark.slow  # about 10 s of CPU: tokenizes a dozen modules, trains and evaluates
def test_pretrain_reuses_a_tokenizer_byte_for_byte_and_names_the_model(
    tmp_path,
    small_corpus,  # noqa: F811
):
    from sae_lightning.models import load_embedded
    from sae_lightning.toy.export import CARD_FILE
    from sae_lightning.toy.pretrain import pretrain

    cfg = _pretrain_cfg(
        tmp_path / "run",
        small_corpus,
        "seed=1",
        f"tokenizer={SHIPPED_TOKENIZER}",
        "model_name=toy-1l-x",
        f"export_dir={tmp_path / 'export'}",
    )
    metrics = pretrain(cfg)
    folder = tmp_path / "export"
    for path in SHIPPED_TOKENIZER.iterdir():
        assert (folder / TOKENIZER_DIR / path.name).read_bytes() == path.read_bytes(), path.name
    config = json.loads((folder / "config.json").read_text())
    assert config["name"] == "toy-1l-x"
    assert (config["recipe"]["seed"], config["recipe"]["tokenizer"]) == (1, str(SHIPPED_TOKENIZER))
    assert config["metrics"]["heldout_loss"] == metrics["heldout_loss"] > 0
    card = (folder / CARD_FILE).read_text()
    assert card.startswith("# toy-1l-x: a second embedded 1-layer model")
    assert f"tokenizer={SHIPPED_TOKENIZER} model_name=toy-1l-x" in card
    model = load_embedded(folder)
    assert model.cfg.model_name == "toy-1l-x" and model.cfg.d_model == 32


def test_pretrain_refuses_a_tokenizer_of_another_vocabulary_size(tmp_path, small_corpus):  # noqa: F811
    from sae_lightning.toy.pretrain import pretrain

    cfg = _pretrain_cfg(
        tmp_path / "run", small_corpus, f"tokenizer={SHIPPED_TOKENIZER}", "vocab_size=1000"
    )
    with pytest.raises(ValueError, match="has 4096 tokens but vocab_size is 1000"):
        pretrain(cfg)
    cfg = _pretrain_cfg(tmp_path / "run", small_corpus, f"tokenizer={tmp_path}")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json in tokenizer folder"):
        pretrain(cfg)


@pytest.mark.slow  # about 10 s of CPU, like the test above
def test_a_stopped_pretraining_exports_nothing(
    tmp_path,
    monkeypatch,
    small_corpus,  # noqa: F811
):
    import lightning as L

    from sae_lightning.toy import pretrain as pretrain_module

    class StopAtOne(L.Callback):  # what Lightning does on SIGTERM: should_stop, fit returns
        def on_train_batch_end(self, trainer, *args) -> None:
            trainer.should_stop = True

    original = pretrain_module.instantiate

    def with_stop(node, **kwargs):
        obj = original(node, **kwargs)
        if isinstance(obj, L.Trainer):
            obj.callbacks.append(StopAtOne())
        return obj

    monkeypatch.setattr(pretrain_module, "instantiate", with_stop)
    cfg = _pretrain_cfg(tmp_path / "run", small_corpus, f"export_dir={tmp_path / 'export'}")
    with pytest.raises(RuntimeError, match="stopped at step 1 of 3: nothing was exported"):
        pretrain_module.pretrain(cfg)
    assert not (tmp_path / "export").exists()
    assert not (tmp_path / "run" / "model").exists()
