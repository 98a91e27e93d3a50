"""Model sets: recipes, architectures, the vectorised trainer and the zoo store."""

from paramsim.weights.arch import ArchSpec
from paramsim.zoo.build import build_zoo
from paramsim.zoo.recipes import RECIPES, Recipe, load_recipe
from paramsim.zoo.store import ModelRecord, Zoo, open_zoo
from paramsim.zoo.trainer import ModelPlan, train_one, train_stacked

__all__ = [
    "RECIPES",
    "ArchSpec",
    "ModelPlan",
    "ModelRecord",
    "Recipe",
    "Zoo",
    "build_zoo",
    "load_recipe",
    "open_zoo",
    "train_one",
    "train_stacked",
]
