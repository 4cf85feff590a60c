"""rnnkit-models: cells and networks of the recurrent-model literature, and the model registry."""

from importlib.metadata import PackageNotFoundError, version

from rnnkit.models.networks import SequenceModel
from rnnkit.models.registry import create_model, get_model_builder, is_model, list_models

try:
    __version__ = version("rnnkit-models")
except PackageNotFoundError:
    __version__ = "0.0.0"

__all__ = [
    "SequenceModel",
    "__version__",
    "create_model",
    "get_model_builder",
    "is_model",
    "list_models",
]
