"""The networks and their data (Sec. 3.1): architectures, the registry of zoo models, the
data sets they train on, and their training."""

from ifv.zoo.registry import MODELS, ModelSpec, Recipe, check_layer, get_spec, load

__all__ = ["MODELS", "ModelSpec", "Recipe", "check_layer", "get_spec", "load"]
