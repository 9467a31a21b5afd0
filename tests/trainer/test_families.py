"""The model-family table (trainer.models.families): the config's choices and defaults come from it, lazily."""

import subprocess
import sys

import pytest

from trainer.config import TrainConfig
from trainer.models.families import FAMILIES


@pytest.mark.parametrize("name", list(FAMILIES))
def test_config_defaults_come_from_the_family_row(name):
    spec = FAMILIES[name]
    config = TrainConfig(model=name, model_path="/unused" if spec.needs_model_path else None)
    assert config.effective_lora_rank == spec.lora_rank and config.effective_lora_alpha == 2.0 * spec.lora_rank
    assert config.effective_eval_guidance_scale == spec.eval_guidance
    assert TrainConfig.model_fields["model"].annotation.__args__ == tuple(FAMILIES)


def test_validating_a_config_imports_no_diffusers():
    # The API validates configs: the family table names its loaders as strings, imported when a model is built.
    code = "import sys, trainer.config; sys.exit('diffusers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
