"""Triton's interpreter without its redundant re-patching of ``triton.language``.

A kernel launch in the interpreter (``GridExecutor``) patches ``triton.language``'s builtins
with interpreted ones for the launch (``_patch_lang``: an ``inspect.getmembers`` walk over
``tl``, ``tl.tensor``, ``tl.math``, ``tl.core``…) and restores them when the grid has run. Every
call of a ``@triton.jit`` helper inside the kernel (``InterpretedFunction.__call__``) runs the same
walk again, though the launch's patch is still in place; it patches nothing new (a patched
member is no longer a builtin) and drops its scope unrestored. Kernels that call helpers in
their loops (the threshold searches, the list builders) spend ~40% of their interpreted time in
it. ``install()`` makes a nested call skip the walk when the launch in progress has patched
every language module the helper's globals name (``tl``, ``tl.core``: a helper of
``tl.standard`` such as ``tl.sum`` names ``core``, patched by the first such call of the
launch). It is a no-op on an interpreter without these internals or of another Triton minor
version than the 3.7 it was read against (its tests then run at the old speed, the same tests).
"""

from __future__ import annotations


def install() -> bool:
    """Wrap the interpreter's launch (``GridExecutor.__call__``) and ``_patch_lang``; True if
    they were wrapped."""
    try:
        import triton
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    if not triton.__version__.startswith("3.7."):  # read against 3.7.1's interpreter (requirements-ci.txt)
        return False
    patch_lang = getattr(interpreter, "_patch_lang", None)
    scope_type = getattr(interpreter, "_LangPatchScope", None)
    executor = getattr(interpreter, "GridExecutor", None)
    if (patch_lang is None or scope_type is None or executor is None
            or getattr(patch_lang, "_reuses_the_launch_patch", False)):
        return False
    languages = (tl, tl.core)
    launches: list[frozenset[int] | None] = []  # per launch in progress: the modules it patched
    launch = executor.__call__

    def modules_of(fn) -> frozenset[int]:
        return frozenset(id(v) for v in fn.__globals__.values() if any(v is m for m in languages))

    def reuse_the_launch_patch(fn):
        named = modules_of(fn)  # none named: the interpreter's own assertion must still fire
        if named and launches and launches[-1] is not None and named <= launches[-1]:
            return scope_type()  # an empty scope: nothing patched, nothing to restore
        scope = patch_lang(fn)
        if launches:  # the launch's own patch, or a helper's, dropped unrestored until the launch ends
            launches[-1] = (launches[-1] or frozenset()) | named
        return scope

    def tracked_launch(self, *args, **kwargs):
        launches.append(None)
        try:
            return launch(self, *args, **kwargs)
        finally:
            launches.pop()

    reuse_the_launch_patch._reuses_the_launch_patch = True
    interpreter._patch_lang = reuse_the_launch_patch
    executor.__call__ = tracked_launch
    return True
