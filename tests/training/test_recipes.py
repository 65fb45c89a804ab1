"""Every recipe under configs/ parses and validates, and none exports over a bundled checkpoint."""
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from training.config import load_config

RECIPES = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))
BUNDLED = {p.resolve() for p in (PROJECT_ROOT / "checkpoints").iterdir() if p.is_dir()}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_does_not_export_over_another_bundled_checkpoint(recipe):
    cfg = load_config(recipe)
    export = (PROJECT_ROOT / cfg.export).resolve()
    if recipe.stem in ("cifar10_cgan", "imagefolder_cgan"):  # the RGB recipes keep out of checkpoints/ entirely
        assert PROJECT_ROOT / "checkpoints" not in export.parents, cfg.export
    # a bundled checkpoint may only be the export of the recipe that made it (retraining is its purpose)
    assert export not in BUNDLED or export.name == recipe.stem, f"{recipe.name} would overwrite {cfg.export}"


def test_rgb_recipes_are_rgb_and_name_their_classifier():
    cifar = load_config(PROJECT_ROOT / "configs" / "cifar10_cgan.yaml")
    assert (cifar.data.name, cifar.data.resolution, cifar.classifier) == ("cifar10", 32, "auto")
    photos = load_config(PROJECT_ROOT / "configs" / "imagefolder_cgan.yaml", ["data.root=elsewhere"])
    assert (photos.data.name, photos.data.resolution, photos.data.root) == ("imagefolder", 64, "elsewhere")
    assert load_config(PROJECT_ROOT / "configs" / "imagefolder_cgan.yaml",
                       ["data.resolution=128"]).data.resolution == 128
    assert Path(photos.export).parts[0] == "runs"
