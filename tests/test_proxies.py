"""Proxies: token sets, regexes, scripts, callables, and the automatic proxy of a feature."""

from __future__ import annotations

import pytest
import torch

from sae_lightning.analysis.proxies import (
    CallableProxy,
    RegexProxy,
    ScriptProxy,
    TokenSetProxy,
    auto_proxies,
    auto_proxy,
)


def is_digit(token: str) -> bool:
    """Proxy predicate used through ``CallableProxy``."""
    return token.strip().isdigit()


def test_token_set_and_regex_proxies():
    vocab = ["the", " the", " 42", "7", "x7"]
    assert TokenSetProxy([" the"]).vocab_mask(vocab).tolist() == [False, True, False, False, False]
    assert TokenSetProxy.from_ids([0], vocab).describe() == "tokens {'the'}"
    digits = RegexProxy(r"^\s?\d+$")
    assert digits.vocab_mask(vocab).tolist() == [False, False, True, True, False]
    assert digits.mask(torch.tensor([3, 3, 0, 2]), vocab).tolist() == [True, True, False, True]
    assert digits.vocab_mask(vocab) is digits.vocab_mask(vocab)  # computed once per vocab
    with pytest.raises(ValueError, match=r"\[0, 5\), got range \[5, 5\]"):
        digits.mask(torch.tensor([5]), vocab)
    with pytest.raises(ValueError, match="invalid regex '\\('"):
        RegexProxy("(")


def test_script_proxy():
    vocab = ["é", " café", "日", "я", "α", "aя", "123", " ", "日本"]
    assert ScriptProxy("Latin").vocab_mask(vocab).tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert ScriptProxy("han").vocab_mask(vocab).tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert ScriptProxy("Cyrillic").vocab_mask(vocab).tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert ScriptProxy("Greek").describe() == "script Greek"
    with pytest.raises(ValueError, match="unknown script 'Chinese'.*Cyrillic"):
        ScriptProxy("Chinese")


def test_callable_proxy():
    vocab = ["12", " 3", "a1"]
    own = CallableProxy(f"{is_digit.__module__}:is_digit")  # however pytest named this module
    assert own.vocab_mask(vocab).tolist() == [True, True, False]
    assert CallableProxy("builtins:str.isdigit").vocab_mask(vocab).tolist() == [1, 0, 0]
    assert own.describe().startswith("callable ")
    with pytest.raises(ValueError, match="no_such_module_xyz:f"):
        CallableProxy("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="'builtins:str.nope'.*'nope'"):
        CallableProxy("builtins:str.nope")
    with pytest.raises(ValueError, match="'builtins' must look like 'module:function'"):
        CallableProxy("builtins")


def test_auto_proxy_minimal_covering_set():
    mass = torch.tensor([0.1, 5.0, 0.0, 3.0, 2.0])  # total 10.1
    assert auto_proxy(mass, coverage=0.4) == [1]  # 5.0 >= 4.04
    assert auto_proxy(mass, coverage=0.5) == [1, 3]  # 5.0 < 5.05 <= 8.0
    assert auto_proxy(mass, coverage=1.0) == [1, 3, 4, 0]
    assert auto_proxy(mass, coverage=1.0, max_tokens=2) == [1, 3]
    assert auto_proxy(torch.zeros(4)) == []
    with pytest.raises(ValueError, match="coverage must be in \\(0, 1\\], got 1.5"):
        auto_proxy(mass, coverage=1.5)


def _one_row_auto_proxy(mass: torch.Tensor, coverage: float, max_tokens: int) -> list[int]:
    """The definition, one row: a full stable sort by descending mass (ties: lower id first)."""
    ordered = sorted(range(len(mass)), key=lambda i: (-float(mass[i]), i))
    total = float(mass.clamp(min=0).sum())
    taken, running = [], 0.0
    for i in ordered:
        if total <= 0 or float(mass[i]) <= 0 or running >= coverage * total:
            break
        taken.append(i)
        running += float(mass[i])
    return taken[:max_tokens]


@pytest.mark.parametrize("coverage,max_tokens", [(0.5, 8), (0.9, 3), (1.0, 20)])
def test_auto_proxies_all_rows_equal_the_one_row_definition(coverage, max_tokens):
    gen = torch.Generator().manual_seed(0)
    mass = torch.randint(0, 4, (40, 12), generator=gen).double()  # integer mass: many ties
    mass[::7] = 0.0  # some features never fired
    got = auto_proxies(mass, coverage, max_tokens)
    assert got == [_one_row_auto_proxy(row, coverage, max_tokens) for row in mass]
    assert got[0] == [] and any(len(r) > 1 for r in got)
