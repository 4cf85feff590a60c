"""rnnkit-models' plugin module: registers its networks (and, later, its cells)."""

from __future__ import annotations

from rnnkit.core.hookspecs import RegisterModel, hookimpl
from rnnkit.models import networks


@hookimpl
def rnnkit_register_models(register: RegisterModel) -> None:
    register("sequence_tagger", networks.sequence_tagger)
    register("sequence_classifier", networks.sequence_classifier)
    register("char_lm", networks.char_lm)
