"""Feature splitting across dictionary sizes: matching, family trees, the command line."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import torch

from sae_lightning.formats import save_saelens
from sae_lightning.replication.splitting import (
    check_dictionaries,
    compose_config,
    concept_table,
    main,
    split_features,
)
from sae_lightning.replication.splitting_report import family_svg
from sae_lightning.replication.splitting_tree import (
    SplitAccumulator,
    best_feature,
    children_of,
    concept_families,
    concept_scores,
    family_tree,
    match_level,
)
from sae_lightning.saes import ReLUSAE

HOOK = "blocks.0.mlp.hook_post"
META = {"model_name": "toy-1l", "hook_name": HOOK, "context_size": 32, "prepend_bos": True}
CORPUS_FILES = ("textwrap.py", "shlex.py", "fnmatch.py", "heapq.py")


def sparse_columns(n: int, d: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """``[n, d]`` independent features: each fires with probability ``p``, Exp(1) size."""
    fires = torch.rand(n, d, generator=gen) < p
    return torch.where(fires, torch.empty(n, d).exponential_(1.0, generator=gen), 0.0)


def group_sums(acts: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    return torch.stack([acts[:, g].sum(dim=1) for g in groups], dim=1)


def unit_rows(d: int, d_in: int, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(d, d_in, generator=gen)
    return w / w.norm(dim=1, keepdim=True)


def accumulate(acts: list[torch.Tensor], tokens: torch.Tensor, of_token, n_concepts, batch=500):
    acc = SplitAccumulator([a.shape[1] for a in acts], of_token, n_concepts)
    for first in range(0, len(tokens), batch):  # streamed in batches, as the pass does
        acc.update([a[first : first + batch] for a in acts], tokens[first : first + batch])
    return acc


def test_planted_children_are_found_with_their_parent_by_both_measures():
    gen = torch.Generator().manual_seed(0)
    n, d_in = 6000, 512
    large = sparse_columns(n, 12, 0.1, gen)  # [n, 12]
    groups = [[7, 0, 4], [1, 10, 5], [11, 2, 8], [3, 9, 6]]  # small feature i = sum of groups[i]
    small = group_sums(large, groups)  # [n, 4]
    w_large = unit_rows(12, d_in, gen)
    w_small = torch.stack([w_large[g].sum(0) for g in groups])  # not unit: cosine normalises
    tokens = torch.zeros(n, dtype=torch.long)
    acc = accumulate([small, large], tokens, torch.zeros(1, dtype=torch.long), 0)
    planted = {c: i for i, g in enumerate(groups) for c in g}
    expected_corr = torch.corrcoef(torch.cat([large, small], dim=1).T)[:12, 12:]  # [12, 4]
    for measure in ("correlation", "cosine"):
        level = match_level(acc.pearsons[0], w_small, w_large, measure)
        assert level.parent == [planted[c] for c in range(12)]
        # the streamed correlation is Pearson's, to float precision
        want = [float(expected_corr[c, planted[c]]) for c in range(12)]
        assert level.correlation == pytest.approx(want, abs=1e-5)
        # one of three independent, equal children: corr ~ 1/sqrt(3); cosine of a unit row
        # with the sum of three nearly orthogonal ones ~ 1/sqrt(3) too
        assert all(0.5 < c < 0.66 for c in level.correlation)
        assert all(0.5 < c < 0.7 for c in level.cosine)
        unit = w_small / w_small.norm(dim=1, keepdim=True)
        exact = [float(w_large[c] @ unit[planted[c]]) for c in range(12)]
        assert level.cosine == pytest.approx(exact, abs=1e-6)
        kids = children_of(level, 0.5)
        assert {p: sorted(k) for p, k in kids.items()} == {
            i: sorted(g) for i, g in enumerate(groups)
        }
        assert children_of(level, 0.7) == {}  # no match reaches 0.7
    density = acc.densities[1].compute()
    assert density.tolist() == pytest.approx((large > 0).double().mean(0).tolist())


def planted_concept(n: int = 8000, q: float = 0.2, p: float = 0.1):
    """Three dictionaries of 2, 4 and 8 features; features 0 and 1 of the largest fire only
    on the concept's token (id 5), the others only elsewhere, all at the same overall rate.
    The middle one sums pairs of the largest, the smallest pairs of the middle."""
    gen = torch.Generator().manual_seed(1)
    tokens = torch.where(
        torch.rand(n, generator=gen) < q, 5, torch.randint(0, 5, (n,), generator=gen)
    )
    on = (tokens == 5)[:, None]
    base = sparse_columns(n, 8, 1.0, gen)  # magnitudes; firing decided below
    rate = torch.where(torch.arange(8) < 2, p / q, p / (1 - q))  # [8]
    fires = (torch.rand(n, 8, generator=gen) < rate) & (on == (torch.arange(8) < 2))
    largest = torch.where(fires, base, 0.0)
    middle_groups = [[6, 7], [0, 1], [4, 5], [2, 3]]  # middle 1 = the concept's pair
    small_groups = [[0, 2], [1, 3]]  # of the middle: small 1 = middle 1 + middle 3 = 0,1,2,3
    middle = group_sums(largest, middle_groups)
    smallest = group_sums(middle, small_groups)
    w8 = unit_rows(8, 32, gen)
    w4 = torch.stack([w8[g].sum(0) for g in middle_groups])
    w2 = torch.stack([w4[g].sum(0) for g in small_groups])
    return [smallest, middle, largest], [w2, w4, w8], tokens


@pytest.mark.parametrize("measure", ["correlation", "cosine"])
def test_family_tree_follows_a_planted_concept_through_three_sizes(measure):
    acts, weights, tokens = planted_concept()
    of_token = torch.tensor([1, 1, 1, 1, 1, 0])  # token 5 -> concept 0; the rest: none (1)
    acc = accumulate(acts, tokens, of_token, 1)
    picks = [best_feature(concept_scores(counts, 0)) for counts in acc.concepts]
    # smallest: feature 1 holds half its mass on the concept, feature 0 none of it
    assert picks[0]["feature"] == 1 and picks[0]["precision"] == pytest.approx(0.5, abs=0.03)
    assert picks[1]["feature"] == 1 and picks[1]["precision"] == pytest.approx(1.0)
    assert picks[2]["feature"] in (0, 1) and picks[2]["precision"] == pytest.approx(1.0)
    on = tokens == 5
    sens = float(((acts[1][:, 1] > 0) & on).sum() / on.sum())  # its share of concept tokens
    assert picks[1]["sensitivity"] == pytest.approx(sens)
    levels = [match_level(acc.pearsons[k], weights[k], weights[k + 1], measure) for k in (0, 1)]
    densities = [d.compute().tolist() for d in acc.densities]
    tree = family_tree(picks[0]["feature"], levels, densities, threshold=0.5)
    assert (tree.level, tree.index, tree.correlation) == (0, 1, None)
    assert sorted(c.index for c in tree.children) == [1, 3]  # middle features 1 and 3
    grand = {c.index: sorted(g.index for g in c.children) for c in tree.children}
    assert grand == {1: [0, 1], 3: [2, 3]}  # the concept's pair under middle feature 1
    for node in tree.walk()[1:]:
        assert node.correlation > 0.5 and node.cosine > 0.5
        assert node.density == pytest.approx(densities[node.level][node.index])
    capped = family_tree(picks[0]["feature"], levels, densities, 0.5, max_children=1)
    assert [len(c.children) for c in capped.walk()] == [1, 1, 0] and capped.n_children == 2
    families = concept_families(acc.concepts, {"planted": ["x"]}, levels, densities, 0.5)
    family = families["planted"]
    assert family["tree"] == tree and [p["feature"] for p in family["picks"]] == [
        p["feature"] for p in picks
    ]
    # each dictionary's best feature hangs under the previous one's (the concept's lineage)
    assert (family["picks"][1]["parent"], family["picks"][2]["parent"]) == (1, 1)
    assert family["picks"][2]["parent_correlation"] > 0.5


# ---------------------------------------------------------------- with the model


def saved_pair(root: Path, hook: str = HOOK) -> tuple[Path, Path]:
    """A 4-feature and an 8-feature SAE: small feature i reads exactly as large feature 2i,
    and large feature 2i+1 is twice large 2i (a planted split, correlation 1)."""
    torch.manual_seed(0)
    large, small = ReLUSAE(1024, 8), ReLUSAE(1024, 4)
    with torch.no_grad():
        large.W_enc.normal_(0, 0.1)
        large.b_enc.normal_(0, 0.05)
        large.W_enc[:, 1::2] = 2 * large.W_enc[:, 0::2]
        large.b_enc[1::2] = 2 * large.b_enc[0::2]
        large.b_dec.zero_()
        small.b_dec.zero_()
        small.W_enc.copy_(large.W_enc[:, 0::2])
        small.b_enc.copy_(large.b_enc[0::2])
        small.W_dec.copy_(large.W_dec[0::2])
    paths = root / "small", root / "large"
    save_saelens(small.eval(), paths[0], {**META, "hook_name": hook})
    save_saelens(large.eval(), paths[1], META)
    return paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for i, name in enumerate(CORPUS_FILES):
        (folder / f"{i:02d}_{name}").write_text((stdlib / name).read_text())
    return folder


def overrides(corpus: Path, out: Path) -> list[str]:
    return [f"out={out}", "tokens=320", f"data.source.corpus={corpus}", "data.split=train"]


def test_planted_split_of_two_saes_on_the_model(tmp_path, corpus, embedded_model):
    small, large = saved_pair(tmp_path)
    cfg = compose_config([str(small), str(large), *overrides(corpus, tmp_path / "out")])
    report = split_features(cfg, model=embedded_model)
    result = json.loads((tmp_path / "out" / "splitting.json").read_text())
    assert report.read_text().startswith("# Feature splitting")
    assert result["n_tokens"] == 10 * 31  # ceil(320 / 32) contexts, BOS left out
    level, live = result["levels"][0], [d > 0 for d in result["densities"][1]]
    assert sum(live) >= 4
    for j in range(8):
        if live[j]:  # a live large feature's parent is the small one that reads as it does
            assert level["parent"][j] == j // 2
            assert level["correlation"][j] == pytest.approx(1.0, abs=1e-5)
    assert [level["cosine"][j] for j in (0, 2, 4, 6)] == pytest.approx([1.0] * 4, abs=1e-6)
    # large 2i and 2i+1 fire on the same tokens: equal densities
    assert result["densities"][1][0::2] == result["densities"][1][1::2]
    families = [f for f in result["families"].values() if f["tree"] is not None]
    assert families, "no concept's tokens made any feature fire"
    tree = families[0]["tree"]
    assert tree["index"] == families[0]["picks"][0]["feature"]
    kids = sorted(c["index"] for c in tree["children"])
    assert kids == [2 * tree["index"], 2 * tree["index"] + 1]
    top = tree["top_tokens"]  # from the second pass: shares of the root's firings
    assert top and all(t["fires"] > 0 for t in top) and sum(t["share"] for t in top) <= 1 + 1e-9
    assert tree["children"][0]["top_tokens"] == top  # same firings as its parent
    page = (tmp_path / "out" / "splitting.html").read_text()
    assert page.count("<svg") == len(families) and page.count("<rect") >= 3 * len(families)


def test_html_tree_escapes_token_strings():
    leaf = {"level": 1, "index": 7, "density": 0.01, "correlation": 0.9, "cosine": 0.8}
    leaf |= {"n_children": 0, "children": [], "top_tokens": [{"token": "</svg><script>"}]}
    root = {**leaf, "level": 0, "index": 2, "correlation": None, "cosine": None}
    root |= {"n_children": 1, "children": [leaf], "top_tokens": [{"token": "a&b"}]}
    svg = family_svg(root, [4, 8])
    assert "<script>" not in svg and "&lt;/svg&gt;&lt;script&gt;" in svg and "a&amp;b" in svg
    assert svg.count("<rect") == 2 and svg.count("<line") == 1 and "r 0.90 c 0.80" in svg


def test_mismatched_or_shrinking_dictionaries_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "threshold: 0.5" in capsys.readouterr().out
    small, large = saved_pair(tmp_path / "hooks", hook="blocks.0.hook_mlp_out")
    with pytest.raises(
        SystemExit,
        match=r"large has hook_name='blocks.0.mlp.hook_post' but .*small has "
        r"'blocks.0.hook_mlp_out'.*same model and hook",
    ):
        main([str(small), str(large), f"out={tmp_path / 'o'}"])
    small, large = saved_pair(tmp_path / "order")
    with pytest.raises(SystemExit, match=r"smallest dictionary first.*\[8, 4\]"):
        main([str(large), str(small), f"out={tmp_path / 'o'}"])
    with pytest.raises(SystemExit, match=r"match='overlap' is not a measure"):
        main([str(small), str(large), "match=overlap"])
    with pytest.raises(SystemExit, match=r"ValueError: Could not override 'treshold'"):
        main([str(small), str(large), "treshold=0.3"])
    with pytest.raises(ValueError, match="two or more SAEs"):
        check_dictionaries([])
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_command_line_on_two_tiny_saes(tmp_path, corpus):
    small, large = saved_pair(tmp_path)
    options = [
        "model=embedded", f"hook_name={HOOK}", "drop_bos=false", "batch_size=3",
        "threshold=0.9", "max_children=1", "top_tokens=2", "~concepts",
        "+concepts={dot: {tokens: [.]}}",
    ]  # fmt: skip
    report = main([str(small), str(large), *overrides(corpus, tmp_path / "out"), *options])
    result = json.loads((tmp_path / "out" / "splitting.json").read_text())
    assert report == tmp_path / "out" / "splitting.md"
    assert result["n_tokens"] == 10 * 32  # drop_bos=false: BOS counted
    assert result["command"].startswith("python -m sae_lightning.replication.splitting")
    assert list(result["families"]) == ["dot"] and result["threshold"] == 0.9
    tree = result["families"]["dot"]["tree"]
    assert tree["n_children"] == 2 and len(tree["children"]) == 1  # correlation 1 twice
    assert all(len(n["top_tokens"]) <= 2 for n in (tree, tree["children"][0]))
    text = report.read_text()
    assert "| 4 → 8 |" in text and '### dot (`"."`)' in text and "1 more children" in text
    cosine = main([str(small), str(large), *overrides(corpus, tmp_path / "cos"), "match=cosine"])
    assert json.loads(cosine.with_suffix(".json").read_text())["levels"][0]["parent"][0::2] == [
        0,
        1,
        2,
        3,
    ]  # fmt: skip  (cosine 1 with its copy)


def test_concepts_map_token_strings_to_ids(caplog):
    strings = [".", " for", "import", " for", " else"]  # two ids decode to " for"
    named, of_token = concept_table(
        {"dot": {"tokens": ["."]}, "for": {"tokens": [" for"]}}, strings
    )
    assert named == {"dot": ["."], "for": [" for"]} and of_token.tolist() == [0, 1, 2, 1, 2]
    _, of_token = concept_table({"while": {"tokens": [" while"]}}, strings)
    assert of_token.tolist() == [1] * 5 and "' while' is not a token" in caplog.text
    with pytest.raises(ValueError, match="token ' for' is in two concepts"):
        concept_table({"a": {"tokens": [" for"]}, "b": {"tokens": [" for", "."]}}, strings)
    with pytest.raises(ValueError, match="needs tokens"):
        concept_table({"a": {"tokens": " for"}}, strings)
