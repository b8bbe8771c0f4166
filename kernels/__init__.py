"""Triton kernels (installed as ``entmaxkv.kernels``): one ``torch.library.triton_op`` per file.

``triton_entmax``: dense α-entmax over the last dim (the original module path). No decode
kernel has landed yet: every decode path runs the pure-torch reference in ``entmaxkv``.
Kernels never import ``entmaxkv.reference``; tests compare them against it.
"""
