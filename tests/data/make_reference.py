"""Regenerate reference_logits.safetensors from the shipped model (after rebuilding it):
``python tests/data/make_reference.py``. The test compares the loaded model against it."""

from pathlib import Path

import torch
from safetensors.torch import save_file

from sae_lightning.models import load_embedded

PROMPT = (
    "import os\nimport sys\n\nfor name in os.listdir('.'):\n"
    "    if name.endswith('.py'):\n        print(name)\n    else:\n        continue\n"
)


def main() -> None:
    model = load_embedded()
    tokens = model.to_tokens(PROMPT)
    with torch.inference_mode():
        logits = model(tokens)
    out = Path(__file__).parent / "reference_logits.safetensors"
    save_file({"tokens": tokens.contiguous(), "logits": logits.contiguous()}, str(out))
    print(f"wrote {out}: {tuple(tokens.shape)} tokens, logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
