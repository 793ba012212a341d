"""Proxies: predicates on tokens that a feature is hypothesised to detect.

A proxy is evaluated once per vocabulary (:meth:`Proxy.vocab_mask`, a ``[vocab]`` bool
tensor); per batch it is then a gather, ``vocab_mask[token_ids]``, so no Python runs per
token. Proxies see the token string only, not its context. Pass decoded token strings
(``" café"``), not raw byte-level BPE symbols (``"Ġcaf"``), or scripts and regexes will
judge the encoding instead of the text.
"""

from __future__ import annotations

import functools
import importlib
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sae_lightning.metrics.sparse import segment_rank

# Unicode script names that are not the first word of their characters' names.
_SCRIPT_ALIASES = {"HAN": "CJK"}


class Proxy(ABC):
    """A predicate on a token string, evaluated once per vocabulary."""

    _cache: tuple[Sequence[str], Tensor] | None = None

    @abstractmethod
    def matches(self, token: str) -> bool:
        """Whether one token string satisfies the proxy."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the report, e.g. ``regex '^\\d+$'``."""

    def vocab_mask(self, str_tokens: Sequence[str]) -> Bool[Tensor, " vocab"]:
        """``[vocab]`` mask: entry ``t`` says whether token id ``t`` satisfies the proxy."""
        cached = self._cache
        if cached is not None and cached[0] is str_tokens:
            return cached[1]
        mask = torch.tensor([self.matches(t) for t in str_tokens], dtype=torch.bool)
        self._cache = (str_tokens, mask)
        return mask

    def mask(self, token_ids: Int[Tensor, " n"], str_tokens: Sequence[str]) -> Bool[Tensor, " n"]:
        """Per-token mask for a batch of ids; the vocabulary mask is cached per ``str_tokens``."""
        vocab = self.vocab_mask(str_tokens).to(token_ids.device)
        if token_ids.numel():
            lo, hi = (int(v) for v in torch.aminmax(token_ids))
            if lo < 0 or hi >= len(str_tokens):
                raise ValueError(
                    f"token ids must lie in [0, {len(str_tokens)}), got range [{lo}, {hi}]"
                )
        return vocab[token_ids]


class TokenSetProxy(Proxy):
    """True on tokens whose string is exactly one of ``tokens``.

    Args:
        tokens: Token strings (with their leading space, if any).
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        if isinstance(tokens, str) or not tokens:
            raise ValueError(f"tokens must be a non-empty list of strings, got {tokens!r}")
        self.tokens = frozenset(tokens)

    @classmethod
    def from_ids(cls, ids: Sequence[int], str_tokens: Sequence[str]) -> TokenSetProxy:
        """The proxy of the tokens with these ids (e.g. the output of :func:`auto_proxy`)."""
        bad = [i for i in ids if not 0 <= i < len(str_tokens)]
        if bad:
            raise ValueError(f"token ids {bad} are outside the vocabulary [0, {len(str_tokens)})")
        return cls([str_tokens[i] for i in ids])

    def matches(self, token: str) -> bool:
        return token in self.tokens

    def describe(self) -> str:
        return "tokens {" + ", ".join(repr(t) for t in sorted(self.tokens)) + "}"


class RegexProxy(Proxy):
    """True on tokens where ``re.search(pattern, token)`` finds a match.

    Args:
        pattern: A Python regular expression (anchor it with ``^``/``$`` for a full match).
    """

    def __init__(self, pattern: str) -> None:
        try:
            self._regex = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"invalid regex {pattern!r}: {err}") from err
        self.pattern = pattern

    def matches(self, token: str) -> bool:
        return self._regex.search(token) is not None

    def describe(self) -> str:
        return f"regex {self.pattern!r}"


@functools.lru_cache(maxsize=1)
def _letter_scripts() -> frozenset[str]:
    """Every first word of a Unicode letter's name (about 170; computed once, ~0.2 s)."""
    return frozenset(
        unicodedata.name(chr(cp), "").split(" ")[0]
        for cp in range(0x110000)
        if chr(cp).isalpha() and unicodedata.name(chr(cp), "")
    )


def _script_of(ch: str) -> str:
    """The first word of a character's Unicode name (``"é"`` -> ``"LATIN"``)."""
    return unicodedata.name(ch, "").split(" ")[0]


class ScriptProxy(Proxy):
    """True on tokens with at least one letter, all of whose letters are in ``script``.

    Python's standard library has no Unicode Script property, so a letter's script is taken
    as the first word of its Unicode name: ``"é"`` is ``LATIN SMALL LETTER E WITH ACUTE``,
    ``"я"`` is ``CYRILLIC SMALL LETTER YA``. ``"Han"`` is an alias for ``CJK`` (``"日"`` is
    ``CJK UNIFIED IDEOGRAPH-65E5``). Non-letters (digits, spaces, punctuation, combining
    marks) are ignored. A few name prefixes are not scripts (``MATHEMATICAL``,
    ``FULLWIDTH``): those letters count under that word, not under ``Latin``.

    Args:
        script: Case-insensitive, e.g. ``"Latin"``, ``"Han"``, ``"Cyrillic"``, ``"Greek"``.
    """

    def __init__(self, script: str) -> None:
        key = _SCRIPT_ALIASES.get(script.upper(), script.upper())
        if key not in _letter_scripts():
            valid = ", ".join(sorted(s.title() for s in _letter_scripts()))
            raise ValueError(f"unknown script {script!r}; valid (case-insensitive): Han, {valid}")
        self.script = script
        self._key = key

    def matches(self, token: str) -> bool:
        letters = [ch for ch in token if ch.isalpha()]
        return bool(letters) and all(_script_of(ch) == self._key for ch in letters)

    def describe(self) -> str:
        return f"script {self.script}"


def _import_target(target: str) -> Callable[[str], object]:
    """Resolve ``"package.module:attr.path"`` to a callable, or raise naming ``target``."""
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"callable proxy target {target!r} must look like 'module:function'")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} of proxy {target!r}") from err
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ValueError(f"proxy target {target!r}: {obj!r} has no attribute {attr!r}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ValueError(f"proxy target {target!r} is not callable: {obj!r}")
    return obj


class CallableProxy(Proxy):
    """True on tokens where an importable function returns a truthy value.

    Args:
        target: ``"module:function"``; the part after ``:`` may be dotted, so
            ``"builtins:str.isdigit"`` works. The function takes one token string.
    """

    def __init__(self, target: str) -> None:
        self._fn = _import_target(target)
        self.target = target

    def matches(self, token: str) -> bool:
        return bool(self._fn(token))

    def describe(self) -> str:
        return f"callable {self.target}"


def auto_proxy(
    mass: Float[Tensor, " vocab"], coverage: float = 0.5, max_tokens: int = 8
) -> list[int]:
    """Token ids carrying a feature's activation mass: the automatic proxy.

    The smallest set of tokens, taken by descending mass, whose mass reaches ``coverage`` of
    the feature's total, truncated to ``max_tokens`` when more would be needed. Ties keep
    the lower id first. Negative mass counts as zero; a feature with no positive mass
    gets ``[]``.

    Args:
        mass: Activation mass per vocabulary token (a row of :class:`FiringCounts` ``mass``).
        coverage: Fraction of the total mass to cover, in ``(0, 1]``.
        max_tokens: Upper bound on the size of the set (``>= 1``).

    Returns:
        Token ids, heaviest first.
    """
    if mass.ndim != 1:
        raise ValueError(f"mass must be 1-D [vocab], got {list(mass.shape)}")
    return auto_proxies(mass.unsqueeze(0), coverage, max_tokens)[0]


def auto_proxies(
    mass: Float[Tensor, "f vocab"], coverage: float = 0.5, max_tokens: int = 8
) -> list[list[int]]:
    """:func:`auto_proxy` of every row of ``mass`` at once (no per-row sort of the vocab).

    Only a row's ``max_tokens`` heaviest tokens can enter, so the running sum needs just
    their values (``topk``) and the row total; ties at the cut are ordered by id exactly as
    the one-row definition says.
    """
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if mass.ndim != 2:
        raise ValueError(f"mass must be 2-D [f, vocab], got {list(mass.shape)}")
    mass = mass.double().clamp(min=0)
    k = min(max_tokens, mass.shape[1])
    top = mass.topk(k, dim=1).values  # [f, k], descending
    total = mass.sum(dim=1)  # [f]
    # first position where the running sum reaches the target, capped at max_tokens; the
    # top-k's running sum reaches the full total (not a fresh sum) only when all mass is in it
    cumulative = torch.minimum(top.cumsum(dim=1), total[:, None])
    needed = ((cumulative < coverage * total[:, None]).sum(dim=1) + 1).clamp(max=k)  # [f]
    needed = torch.where(total > 0, needed, 0)
    # candidates: tokens at least as heavy as the k-th (ties included), ordered by
    # (row, mass descending, id ascending); nonzero() yields them by (row, id)
    rows, ids = ((mass >= top[:, -1:]) & (mass > 0)).nonzero(as_tuple=True)
    order = torch.sort(mass[rows, ids], descending=True, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]
    rows, ids = rows[order], ids[order]
    keep = segment_rank(rows, mass.shape[0]) < needed[rows]
    per_row: list[list[int]] = [[] for _ in range(mass.shape[0])]
    for row, token in zip(rows[keep].tolist(), ids[keep].tolist(), strict=True):
        per_row[row].append(token)
    return per_row


def _is_punctuation(text: str) -> bool:
    return bool(text) and all(unicodedata.category(ch).startswith("P") for ch in text)


def _punctuation_families(str_tokens: Sequence[str]) -> dict[int, list[int]]:
    """For each single-punctuation-character token id: the ids of the tokens that are
    punctuation only (whitespace around allowed) and end with that character, once."""
    singles = {s: i for i, s in enumerate(str_tokens) if len(s) == 1 and _is_punctuation(s)}
    families: dict[int, list[int]] = {i: [] for i in singles.values()}
    for i, s in enumerate(str_tokens):
        core = s.strip()
        if _is_punctuation(core) and core[-1] in singles and core.count(core[-1]) == 1:
            families[singles[core[-1]]].append(i)
    return families


def punctuation_closure(rows: list[list[int]], str_tokens: Sequence[str]) -> list[list[int]]:
    """Each row of token ids plus, for each single punctuation character in it, every token
    that is the same mark glued by BPE to other punctuation or whitespace (``.`` → ``).``,
    ``".``, `` .``; not ``...``, where the mark repeats). A full-stop feature fires on the
    full stop of ``(see below).`` too: a token-set proxy should not count that as a miss."""
    families = _punctuation_families(str_tokens)
    out = []
    for ids in rows:
        row = list(ids)
        for i in ids:
            row += [j for j in families.get(i, []) if j not in row]
        out.append(row)
    return out
