"""A stand-in for the gelu-1l replication's hub repos, laid out as the hub lays out its cache.

Structurally identical to the real ones, with random contents: the model repo
``NeelNanda/GELU_1L512W_C4_Code`` (gelu-1l's real config: 1 layer, d_model 512, d_mlp 2048,
8 heads of 64, n_ctx 1024, d_vocab 48262; random weights in the legacy TransformerLens
layout), its tokenizer repo ``NeelNanda/gpt-neox-tokenizer-digits`` (the embedded tokenizer
stands in: ids below 4096), the dataset ``NeelNanda/c4-code-tokenized-2b`` (a parquet shard
of pre-tokenized 1024-token rows in a ``tokens`` column) and Neel Nanda's SAE repo
``NeelNanda/sparse_autoencoder`` (``25.pt`` + ``25_cfg.json`` with his config keys; the
dictionary is smaller than his 16384 to keep the files small). With ``HF_HOME`` pointing
here and ``HF_HUB_OFFLINE=1``, ``experiment=gelu1l`` runs as it would after the download.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from hub_cache import fake_snapshot

MODEL_REPO = "NeelNanda/GELU_1L512W_C4_Code"
TOKENIZER_REPO = "NeelNanda/gpt-neox-tokenizer-digits"
DATASET_REPO = "NeelNanda/c4-code-tokenized-2b"
SAE_REPO = "NeelNanda/sparse_autoencoder"
GELU_1L = {  # the fields of the real config.json that the loader reads
    "n_layers": 1, "d_model": 512, "d_mlp": 2048, "d_head": 64, "n_heads": 8, "n_ctx": 1024,
    "d_vocab": 48262, "act_fn": "gelu", "normalization": "LN", "attn_only": False,
    "shortformer_pos": False, "tokenizer_name": TOKENIZER_REPO, "dataset_name": "c4_code",
}  # fmt: skip


def _legacy_weights(cfg: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights in the legacy TransformerLens property layout (W_E, W_Q, W_in, ...)."""
    m, h, d, v, n = cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["d_vocab"], cfg["n_ctx"]

    def rand(*shape: int, scale: float = 0.02) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).half()

    state = {
        "embed.W_E": rand(v, m, scale=0.1), "pos_embed.W_pos": rand(n, m),
        "unembed.W_U": rand(m, v), "unembed.b_U": rand(v, scale=0.0),
        "ln_final.w": torch.ones(m).half(), "ln_final.b": rand(m, scale=0.0),
    }  # fmt: skip
    p = "blocks.0."
    for ln in ("ln1", "ln2"):
        state[f"{p}{ln}.w"], state[f"{p}{ln}.b"] = torch.ones(m).half(), rand(m, scale=0.0)
    for x in "QKV":
        state[f"{p}attn.W_{x}"], state[f"{p}attn.b_{x}"] = rand(h, m, d), rand(h, d, scale=0.0)
    state[f"{p}attn.W_O"], state[f"{p}attn.b_O"] = rand(h, d, m), rand(m, scale=0.0)
    state[f"{p}mlp.W_in"], state[f"{p}mlp.b_in"] = rand(m, cfg["d_mlp"]), rand(cfg["d_mlp"])
    state[f"{p}mlp.W_out"], state[f"{p}mlp.b_out"] = rand(cfg["d_mlp"], m), rand(m, scale=0.0)
    return state


def _tokens_parquet(path: Path, rows: int, gen: torch.Generator) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sae_lightning.models import EMBEDDED_DIR
    from sae_lightning.toy.tokenizer import load_tokenizer

    bos = load_tokenizer(EMBEDDED_DIR / "tokenizer").bos_token_id
    ids = torch.randint(0, 4096, (rows, 1024), generator=gen)
    ids[:, 0] = bos  # rows of the real dataset start with BOS
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"tokens": ids.tolist()}), path)


def _neel_sae(folder: Path, d_mlp: int, dict_mult: int, gen: torch.Generator) -> None:
    d_sae = d_mlp * dict_mult
    w_dec = torch.randn(d_sae, d_mlp, generator=gen)
    state = {
        "W_enc": torch.randn(d_mlp, d_sae, generator=gen) * 0.05,
        "b_enc": torch.zeros(d_sae) - 0.05,
        "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True),
        "b_dec": torch.zeros(d_mlp),
    }
    torch.save(state, folder / "25.pt")
    cfg = {  # the keys of Neel Nanda's default_cfg, as his 25_cfg.json holds them
        "seed": 49, "batch_size": 4096, "buffer_mult": 384, "lr": 1e-4, "num_tokens": 2e9,
        "l1_coeff": 3e-4, "beta1": 0.9, "beta2": 0.99, "dict_mult": dict_mult, "seq_len": 128,
        "d_mlp": d_mlp, "enc_dtype": "fp32", "remove_rare_dir": False, "model_batch_size": 512,
    }  # fmt: skip
    (folder / "25_cfg.json").write_text(json.dumps(cfg))


def build_gelu1l_cache(hf_home: Path, dataset_rows: int = 24, dict_mult: int = 1) -> None:
    """Lay out the four repos under ``hf_home/hub``."""
    from sae_lightning.models import EMBEDDED_DIR

    gen = torch.Generator().manual_seed(0)
    model = fake_snapshot(hf_home, MODEL_REPO)
    (model / "config.json").write_text(json.dumps(GELU_1L))
    torch.save(_legacy_weights(GELU_1L, gen), model / "GELU_1L512W_C4_Code_final.pth")
    tokenizer = fake_snapshot(hf_home, TOKENIZER_REPO)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tokenizer / name).write_bytes((EMBEDDED_DIR / "tokenizer" / name).read_bytes())
    # the repo has no config.json: the hub cache remembers a file it found missing here
    absent = tokenizer.parents[1] / ".no_exist" / tokenizer.name
    absent.mkdir(parents=True)
    (absent / "config.json").touch()
    dataset = fake_snapshot(hf_home, DATASET_REPO, repo_type="dataset")
    _tokens_parquet(dataset / "data" / "train-00000-of-00001.parquet", dataset_rows, gen)
    _neel_sae(fake_snapshot(hf_home, SAE_REPO), GELU_1L["d_mlp"], dict_mult, gen)
