"""``encode_features``: the analysed features' activations, computed for those features only
where the architecture allows it (ReLU, JumpReLU), the same numbers as a full encode."""

from __future__ import annotations

import pytest
import torch

from sae_lightning.analysis.selection import encode_features
from sae_lightning.saes import JumpReLUSAE, ReLUSAE, TopKSAE

D_IN, D_SAE = 16, 64


def _sae(cls):
    torch.manual_seed(0)
    sae = cls(D_IN, D_SAE) if cls is not TopKSAE else cls(D_IN, D_SAE, k=8)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0.0, 0.3)
    return sae.eval()


@pytest.mark.parametrize("cls", [ReLUSAE, JumpReLUSAE, TopKSAE])
@pytest.mark.parametrize("index", [[5], [3, 40, 7, 63], list(range(0, D_SAE, 2))])
def test_selected_features_match_the_full_encode(cls, index):
    sae = _sae(cls)
    x = torch.randn(3, 11, D_IN)  # [batch, pos, d_in]
    with torch.no_grad():
        full = sae.encode(x)  # [batch, pos, d_sae]
        got = encode_features(sae, x, torch.tensor(index))
    assert got.shape == (3, 11, len(index))
    torch.testing.assert_close(got, full[..., index], rtol=1e-5, atol=1e-6)
    assert (got > 0).any()  # the comparison is not between zeros
    assert torch.equal(encode_features(sae, x, None), full)


@pytest.mark.parametrize("cls", [ReLUSAE, JumpReLUSAE])
def test_independent_features_read_only_their_own_encoder_columns(cls):
    """Unselected encoder columns are never multiplied: NaN there changes nothing."""
    sae, index = _sae(cls), torch.tensor([2, 9, 30])
    x = torch.randn(2, 5, D_IN)
    with torch.no_grad():
        expected = sae.encode(x)[..., index]
        others = torch.ones(D_SAE, dtype=torch.bool)
        others[index] = False
        sae.W_enc[:, others] = float("nan")
        sae.b_enc[others] = float("nan")
        got = encode_features(sae, x, index)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_competing_features_are_encoded_whole():
    """TopK picks among all features: an unselected column changes which ones fire."""
    sae, index = _sae(TopKSAE), torch.tensor([0, 1])
    x = torch.randn(4, 6, D_IN)
    with torch.no_grad():
        before = encode_features(sae, x, index)
        sae.b_enc[2:] += 100.0  # every other feature outranks features 0 and 1
        after = encode_features(sae, x, index)
    assert (before > 0).any()
    assert torch.equal(after, torch.zeros_like(after))


def test_wrong_width_names_the_expected_one():
    with pytest.raises(ValueError, match=f"d_in={D_IN}"):
        encode_features(_sae(ReLUSAE), torch.randn(2, D_IN + 1), torch.tensor([0]))
