"""torch.compile / CUDA-graph capture and generation loops (installed as ``entmaxkv.compiled``)."""
