import os

import torch

# Triton's interpreter must be on before any @triton.jit decorator runs (CPU machines).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile("dev", max_examples=15, deadline=None)
# HYPOTHESIS_PROFILE picks the profile explicitly (.ci/run sets "ci"); without it, the CI
# variable most CI services set still selects "ci", and a plain local run gets "dev".
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))
