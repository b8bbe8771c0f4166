"""Count the compiled specialisations Triton holds for every kernel of ``entmaxkv.kernels``.

A decode loop should compile its kernels during warm-up and never again. A kernel that
specialises on something that changes from step to step (a length passed as ``tl.constexpr``,
an integer argument that is sometimes 1 or a multiple of 16, a pointer's alignment) compiles
a new variant mid-run: a stall of seconds eagerly, a failure inside CUDA-graph capture. Take
``kernel_cache_sizes()`` after warm-up and again after a long run: the two must be equal.

Where Triton keeps the cache (the in-memory one, per ``@triton.jit`` function and device):
- Triton 3.x: ``JITFunction.device_caches[device]`` is a tuple whose first item is the dict of
  compiled kernels (``(cache, target, backend, binder)`` in early 3.x, ``(cache, key_cache,
  target, backend, binder)`` in 3.5-3.7, a lock appended in later versions);
- Triton 2.x: ``JITFunction.cache[device]`` is that dict.
Any other layout raises ``TypeError`` rather than reading as an empty cache. Triton's
interpreter (``TRITON_INTERPRET=1``) compiles nothing: its kernels have no cache (``None``).

Only launches from Python use these caches: Inductor compiles the kernels of a compiled step
into code of its own, and a CUDA-graph replay runs no Python at all.
"""

from __future__ import annotations

import importlib
import pkgutil

__all__ = ["triton_kernels", "cache_entries", "kernel_cache_sizes"]


def triton_kernels(package: str = "entmaxkv.kernels") -> dict[str, object]:
    """Every ``@triton.jit`` function defined in ``package``'s modules, by ``module.name``
    (autotuner and heuristics wrappers are unwrapped to the function they compile)."""
    from triton.runtime.jit import KernelInterface

    root = importlib.import_module(package)
    modules = [root] + [importlib.import_module(f"{package}.{info.name}")
                        for info in pkgutil.iter_modules(root.__path__)]
    found: dict[str, object] = {}
    for module in modules:
        for obj in vars(module).values():
            while isinstance(getattr(obj, "fn", None), KernelInterface):  # Autotuner / Heuristics
                obj = obj.fn
            fn = getattr(obj, "fn", None)
            if isinstance(obj, KernelInterface) and getattr(fn, "__module__", None) == module.__name__:
                found[f"{module.__name__}.{fn.__name__}"] = obj  # defined here, not imported
    return found


def cache_entries(kernel: object) -> int | None:
    """Compiled variants of one ``@triton.jit`` function, summed over devices; ``None`` when
    it has no compile cache (Triton's interpreter)."""
    caches = getattr(kernel, "device_caches", None)
    if caches is None:
        caches = getattr(kernel, "cache", None)  # Triton 2.x
        if caches is None:
            return None
    total = 0
    for per_device in dict(caches).values():  # a copy: never create entries in a defaultdict
        if isinstance(per_device, tuple) and per_device and isinstance(per_device[0], dict):
            total += len(per_device[0])
        elif isinstance(per_device, dict):
            total += len(per_device)
        else:
            raise TypeError(f"unknown Triton compile-cache layout on {kernel!r}: {type(per_device).__name__}")
    return total


def kernel_cache_sizes(package: str = "entmaxkv.kernels") -> dict[str, int | None]:
    """``{"module.kernel": compiled variants}`` for every kernel of ``package``.

    Example (on a GPU)::

        before = kernel_cache_sizes()     # after warm-up
        ...                               # thousands of decode steps
        assert kernel_cache_sizes() == before
    """
    return {name: cache_entries(kernel) for name, kernel in triton_kernels(package).items()}
