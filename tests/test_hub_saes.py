"""Published SAEs by name (``sae_path=hf://...``), read from hand-laid hub caches offline."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_cache import COMMIT, fake_snapshot, offline_env, run_isolated
from safetensors.torch import load_file, save_file
from test_analysis_core import HOOK, META, random_sae

from sae_lightning.analysis.hub_sae import HubSAE, parse_hf_uri
from sae_lightning.analysis.loading import load_sae
from sae_lightning.data.sources import CorpusSource
from sae_lightning.formats import save_saelens
from sae_lightning.hooks import capture_activations

ROOT = Path(__file__).resolve().parents[1]
NEEL_REPO = "NeelNanda/sparse_autoencoder"
NEEL_URI = f"hf://{NEEL_REPO}/25.pt"
# the keys of NeelNanda/sparse_autoencoder's 25_cfg.json (1L-Sparse-Autoencoder's default_cfg
# plus the three it derives); only the sizes differ: his is d_mlp 2048 x dict_mult 8
NEEL_CFG = {
    "seed": 49,
    "batch_size": 4096,
    "buffer_mult": 384,
    "lr": 1e-4,
    "num_tokens": 2_000_000_000,
    "l1_coeff": 3e-4,
    "beta1": 0.9,
    "beta2": 0.99,
    "dict_mult": 2,
    "seq_len": 128,
    "d_mlp": 1024,
    "enc_dtype": "fp32",
    "remove_rare_dir": False,
    "model_batch_size": 512,
    "buffer_size": 1_572_864,
    "buffer_batches": 12_288,
}


def _write_neel(folder: Path, cfg: dict) -> None:
    """A Neel-format SAE (``25.pt`` + ``25_cfg.json``) of d_in 1024, d_sae 2048."""
    folder.mkdir(parents=True, exist_ok=True)
    sae = random_sae(1024, 2048, seed=3)
    torch.save({k: v.detach().clone() for k, v in sae.state_dict().items()}, folder / "25.pt")
    (folder / "25_cfg.json").write_text(json.dumps(cfg))


def _publish(local: Path, snapshot: Path, prefix: str = "") -> None:
    """Put every file of ``local`` in ``snapshot/prefix`` as the hub does: blob + symlink."""
    blobs = snapshot.parents[1] / "blobs"
    blobs.mkdir(exist_ok=True)
    for src in sorted(p for p in local.iterdir() if p.is_file()):
        data = src.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / prefix / src.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (2 + len(Path(prefix).parts)), "blobs", blob.name))


def _encode_offline(uri: str, hf_home: Path, x_file: Path, out: Path) -> dict:
    """``load_sae(uri)`` in an offline process: its codes of ``x_file``'s x, and its metadata."""
    script = f"""
        import json, torch
        from safetensors.torch import load_file, save_file
        from sae_lightning.analysis.loading import load_sae
        sae, meta = load_sae({uri!r})
        with torch.no_grad():
            save_file({{"f": sae.encode(load_file({str(x_file)!r})["x"])}}, {str(out)!r})
        print("META", json.dumps({{k: v for k, v in meta.items() if k != "neel_cfg"}}))
    """
    result = run_isolated(script, hf_home)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(m for m in result.stdout.splitlines() if m.startswith("META "))
    return json.loads(line[len("META ") :])


@pytest.fixture
def x_file(tmp_path: Path) -> Path:
    path = tmp_path / "x.safetensors"
    save_file({"x": torch.randn(16, 1024, generator=torch.Generator().manual_seed(5))}, path)
    return path


def test_neel_sae_by_name_encodes_exactly_like_its_local_files(tmp_path, x_file):
    _write_neel(tmp_path / "local", NEEL_CFG)
    _publish(tmp_path / "local", fake_snapshot(tmp_path / "hf", NEEL_REPO))
    meta = _encode_offline(NEEL_URI, tmp_path / "hf", x_file, tmp_path / "f.safetensors")
    local, local_meta = load_sae(tmp_path / "local" / "25.pt")
    with torch.no_grad():
        expected = local.encode(load_file(x_file)["x"])
    got = load_file(tmp_path / "f.safetensors")["f"]
    assert got.shape == (16, 2048) and (got > 0).any()
    assert torch.equal(got, expected)
    assert meta["source"] == NEEL_URI and meta["hub_commit"] == COMMIT
    # his cfg names no model or hook: gelu-1l's blocks.0.mlp.hook_post; seq_len is the context
    assert meta["model_name"] == "gelu-1l" and meta["hook_name"] == HOOK
    assert meta["context_size"] == 128
    assert {k: v for k, v in local_meta.items() if k not in ("source", "neel_cfg")} == {
        k: v for k, v in meta.items() if k not in ("source", "hub_commit")
    }


def test_saelens_folder_in_a_repo_encodes_exactly_like_the_folder(tmp_path, x_file):
    sae = random_sae(1024, 512, seed=4)
    save_saelens(sae, tmp_path / "local", {**META, "context_size": 64})
    snapshot = fake_snapshot(tmp_path / "hf", "someone/saes")
    _publish(tmp_path / "local", snapshot, "layer0/relu")
    uri = "hf://someone/saes/layer0/relu"
    meta = _encode_offline(uri, tmp_path / "hf", x_file, tmp_path / "f.safetensors")
    local, _ = load_sae(tmp_path / "local")
    with torch.no_grad():
        expected = local.encode(load_file(x_file)["x"])
    assert torch.equal(load_file(tmp_path / "f.safetensors")["f"], expected)
    assert meta["source"] == uri and meta["hub_commit"] == COMMIT
    assert (meta["hook_name"], meta["model_name"], meta["context_size"]) == (HOOK, "toy-1l", 64)


def test_offline_failures_are_one_line_naming_the_repo_file_and_ways_out(tmp_path):
    _write_neel(tmp_path / "local", NEEL_CFG)
    _publish(tmp_path / "local", fake_snapshot(tmp_path / "hf", "someone/cached"))
    script = """
        from sae_lightning.analysis.loading import load_sae
        for uri in ("hf://NeelNanda/sparse_autoencoder/25.pt", "hf://someone/cached/47.pt",
                    "hf://someone/cached@v2/25.pt"):
            try:
                load_sae(uri)
            except Exception as err:
                assert err.__cause__ is None and err.__suppress_context__, uri
                assert "\\n" not in str(err), uri
                print("ERROR", type(err).__name__, str(err))
            else:
                raise SystemExit(f"{uri} loaded offline")
    """
    result = run_isolated(script, tmp_path / "hf")
    assert result.returncode == 0, result.stderr[-3000:]
    errors = [m for m in result.stdout.splitlines() if m.startswith("ERROR ")]
    assert len(errors) == 3, result.stdout  # one line each
    uncached, missing, no_revision = errors
    assert uncached.startswith(
        "ERROR HubUnavailableError cannot load SAE file '25.pt' of repo "
        "'NeelNanda/sparse_autoencoder': HF_HUB_OFFLINE is set and it is not cached"
    )
    assert "Either use sae_path=PATH or compare_with=PATH on a local copy" in uncached
    assert "populate the Hugging Face cache with 'NeelNanda/sparse_autoencoder'" in uncached
    assert "(`hf download NeelNanda/sparse_autoencoder 25.pt 25_cfg.json`)" in uncached
    assert uncached.endswith("run with HF_HUB_OFFLINE=1.")
    # the repo is cached, the file is not: the message names both and what the cache holds
    assert missing.startswith(
        "ERROR FileNotFoundError hf://someone/cached/47.pt: file '47.pt' is not in the cached "
        "snapshot of repo 'someone/cached' (it holds ['25.pt', '25_cfg.json'])"
    )
    assert "`hf download someone/cached 47.pt 47_cfg.json`" in missing
    assert no_revision.startswith(
        "ERROR HubUnavailableError cannot load SAE file '25.pt' (revision 'v2') of repo "
        "'someone/cached'"
    )
    assert "--revision v2" in no_revision


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://NeelNanda/sparse_autoencoder/47.pt", HubSAE(NEEL_REPO, None, "47.pt")),
        ("hf://o/r@v1.0/a/b/25.pt", HubSAE("o/r", "v1.0", "a/b/25.pt")),
        ("hf://o/r/some/folder/", HubSAE("o/r", None, "some/folder")),
        ("hf://o/r", HubSAE("o/r", None, "")),
    ],
)
def test_uri_parts_and_the_files_they_fetch(uri, expected):
    ref = parse_hf_uri(uri)
    assert ref == expected
    files = {
        "47.pt": ("47.pt", "47_cfg.json"),
        "a/b/25.pt": ("a/b/25.pt", "a/b/25_cfg.json"),
        "some/folder": ("some/folder/cfg.json", "some/folder/sae_weights.safetensors"),
        "": ("cfg.json", "sae_weights.safetensors"),
    }
    assert ref.files == files[ref.path]


@pytest.mark.parametrize(
    "uri",
    ["hf://justone", "hf://", "hf://a//b", "hf://o/r@/x.pt", "hf:/o/r/25.pt", "hf://o/r/../x"],
)
def test_malformed_uri_names_the_form_expected(uri):
    form = "expected hf://<owner>/<repo>[@<revision>]/<path-in-repo>"
    with pytest.raises(ValueError, match=re.escape(f"malformed SAE URI {uri!r}: {form}")):
        load_sae(uri)


def test_uri_naming_one_file_of_an_sae_is_refused():
    with pytest.raises(
        ValueError, match=r"names one file of an SAE, not a \.pt or folder: hf://<owner>"
    ):
        load_sae("hf://o/r/layer0/sae_weights.safetensors")


def _analyze(hf_home: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "analyze.py"),
            f"sae_path={NEEL_URI}",
            *options,
            f"hydra.run.dir={out / 'hydra'}",
        ],
        cwd=ROOT,
        env=offline_env(hf_home),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_analyze_cli_reads_a_published_sae_and_fails_offline_in_one_line(tmp_path, embedded_model):
    cfg = {**NEEL_CFG, "model_name": "toy-1l"}  # the embedded model; d_mlp 1024 fits it
    _write_neel(tmp_path / "local", cfg)
    _publish(tmp_path / "local", fake_snapshot(tmp_path / "hf", NEEL_REPO))
    options = ("tokens=2048", "dashboards=false", "criteria=[top_activations]")
    out = tmp_path / "out"
    result = _analyze(
        tmp_path / "hf", tmp_path, *options, "features=[0,1,2,3]", f"report_dir={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report" / "criteria.json").read_text())
    meta = report["metadata"]
    assert (meta["source"], meta["hub_commit"], meta["hook_name"]) == (NEEL_URI, COMMIT, HOOK)
    # the cfg's seq_len is the context length: 2048 tokens are 16 contexts of 128
    assert (meta["n_ctx"], meta["n_contexts"], meta["d_sae"]) == (128, 16, 2048)
    # the numbers are the local SAE's on the same 16 held-out contexts
    contexts = CorpusSource().contexts("val", embedded_model.tokenizer, 128)[:16]
    local, _ = load_sae(tmp_path / "local" / "25.pt")
    assert meta["drop_bos"] is True  # a Neel-format cfg does not say: BOS left out
    with torch.no_grad():
        acts = local.encode(capture_activations(embedded_model, contexts, HOOK))[:, 1:]
    for i in range(4):
        got = report["features"][str(i)]["top_activations"]
        assert got["max_activation"] == pytest.approx(acts[..., i].max().item(), rel=1e-5)
        assert got["density"] == pytest.approx((acts[..., i] > 0).float().mean().item(), abs=1e-3)

    result = _analyze(tmp_path / "empty", tmp_path, *options)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if NEEL_REPO in line]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(
        "analyze.py: HubUnavailableError: cannot load SAE file '25.pt' of repo "
        f"'{NEEL_REPO}': HF_HUB_OFFLINE is set and it is not cached"
    )
    assert "sae_path=PATH" in lines[0] and lines[0].endswith("run with HF_HUB_OFFLINE=1.")
