"""The settings table: validation and the order in which defaults, recipes and flags apply."""

from pathlib import Path

import pytest

from lstmcli.config import Config, differences, merge, read_recipe
from lstmcli.errors import UserError


def test_defaults_are_valid_and_bounds_are_checked():
    Config().validate()
    for bad, message in [(dict(layers=0), "--layers 0 is too small"), (dict(dropout=1.5), "--dropout 1.5"),
                         (dict(pooling="sum"), "--pooling 'sum' is not one of"),
                         (dict(device="tpu"), "--device 'tpu'")]:
        with pytest.raises(UserError, match=message):
            Config(**bad).validate()


def test_recipe_values_are_overridden_by_the_command_line(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('hidden-size = 64\nbidirectional = true\nlr = 1\ndataset = "x"\n')
    values = read_recipe(recipe)
    assert values == dict(hidden_size=64, bidirectional=True, lr=1.0, dataset="x")
    config = merge(values, dict(hidden_size=32))
    assert (config.hidden_size, config.bidirectional, config.lr, config.layers) == (32, True, 1.0, 1)


@pytest.mark.parametrize("text,message", [
    ("hiden_size = 3\n", "unknown setting 'hiden_size'"),
    ("layers = 'two'\n", "should be int"),
    ("layers = \n", "not valid TOML"),
    ("weight_drop = 0.3\n", "'weight_drop' = 0.3 is no longer supported"),
])
def test_bad_recipes_are_explained(tmp_path, text, message):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    with pytest.raises(UserError, match=message):
        read_recipe(recipe)


def test_a_run_written_by_an_earlier_version_still_loads(tiny_run, tmp_path):
    """Settings since retired (weight_drop, init_lr_scale) at the value that did nothing are skipped."""
    import json
    import shutil

    from lstmcli.checkpoint import load_run

    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    record = json.loads((old / "config.json").read_text())
    record["settings"].update(weight_drop=0.0, init_lr_scale=1.0)
    (old / "config.json").write_text(json.dumps(record))
    assert load_run(old).config == load_run(tiny_run).config


def test_resume_differences_ignore_resumable_settings():
    saved = Config()
    assert differences(saved, Config(epochs=20, device="cpu", patience=9)) == []
    assert differences(saved, Config(hidden_size=64, dataset="other")) == [
        "--dataset: 'data/sample' -> 'other'", "--hidden-size: 128 -> 64"]


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "recipes").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_recipes_are_valid_and_name_a_shared_set(recipe):
    config = merge(read_recipe(recipe), {})
    assert config.dataset.startswith("../shared/datasets/"), "recipes are run from the checkout"
    assert config.dataset != Config().dataset
