"""Shared fixtures: the shipped model is loaded once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

torch.set_num_threads(2)

# one token cache per test session (sae_lightning.data.token_cache), shared by the tests and
# the runs they start as subprocesses, apart from the user's own cache
os.environ["SAE_LIGHTNING_CACHE"] = tempfile.mkdtemp(prefix="sae-lightning-test-cache-")
atexit.register(shutil.rmtree, os.environ["SAE_LIGHTNING_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def embedded_model():
    from sae_lightning.models import load_embedded

    return load_embedded()


@pytest.fixture(scope="session")
def stdlib_docs():
    from sae_lightning.data.corpus import stdlib_documents

    return stdlib_documents()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict:
    """Folders of tiny random GPT-2, GPT-NeoX (Pythia) and Llama models (tests/tiny_models.py)."""
    from tiny_models import FAMILIES, save_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {family: save_tiny_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dirs) -> dict:
    """The tiny models loaded through TransformerBridge (``load_hf``), frozen."""
    from sae_lightning.models import load_hf

    return {family: load_hf(str(folder)) for family, folder in tiny_model_dirs.items()}
