"""Without a GPU, run every Triton kernel in Triton's CPU interpreter.

Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when its module is first
imported, which may happen while pytest imports any test module: set it before all of them.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
