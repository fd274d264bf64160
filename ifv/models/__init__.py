"""The model zoo (Sec. 3.1)."""

from ifv.models.registry import MODELS, ModelSpec, Recipe, check_layer, get_spec, load

__all__ = ["MODELS", "ModelSpec", "Recipe", "check_layer", "get_spec", "load"]
