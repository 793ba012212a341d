"""Shared fixtures: the shipped model is loaded once per session."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def embedded_model():
    from sae_lightning.models import load_embedded

    return load_embedded()


@pytest.fixture(scope="session")
def stdlib_docs():
    from sae_lightning.toy.corpus import stdlib_documents

    return stdlib_documents()
