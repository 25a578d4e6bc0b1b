"""Model registry: ``build_model(name)`` for every architecture of the paper (spec §6).

Importing the package registers all models; see :mod:`src.models.registry` for the API.
"""

from . import convnets, efficientnet, mlp, resnet  # noqa: F401  (register the models)
from .registry import MODELS, ModelInfo, build_model, model_info, register_model

__all__ = ["MODELS", "ModelInfo", "build_model", "model_info", "register_model"]
