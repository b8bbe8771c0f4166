"""torch.compile / CUDA-graph capture and generation loops (installed as ``entmaxkv.compiled``).

No attention math of its own: everything here wraps ``entmaxkv.decode_step``. ``llama`` holds a
functional Llama-family model step (the model math, not the attention), ``generate`` the loop,
``kernel_cache_sizes`` counts the Triton kernels' compiled variants (to check none appear mid-run).
"""

from entmaxkv.compiled.generate import GraphedLoop, Sampling, generate, sample, token_step
from entmaxkv.compiled.kernel_cache import kernel_cache_sizes
from entmaxkv.compiled.llama import LlamaSpec, forward_token, llama_step, params_from_hf, random_params
from entmaxkv.compiled.step import GraphedDecodeStep, compile_decode_step

__all__ = ["compile_decode_step", "GraphedDecodeStep", "generate", "sample", "Sampling", "GraphedLoop",
           "token_step", "kernel_cache_sizes", "LlamaSpec", "llama_step", "forward_token", "params_from_hf",
           "random_params"]
