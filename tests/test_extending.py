"""The worked example of docs/extending.md: a family in one module, one registry line and one
experiment, trained through the public entry point."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from conftest import EXPERIMENTS, REPO, make_test_config
from genlab.families import contractive_ae


def _tiny_config(data_dir, **overrides):
  config = make_test_config(data_dir, family="contractive_autoencoder", **overrides)
  config.contractive = contractive_ae.options()
  return config


@pytest.mark.slow
def test_contraction_is_the_squared_frobenius_norm_of_the_encoders_jacobian(data_dir):
  from genlab.run import setup

  s = setup(_tiny_config(data_dir))
  family, params = s.family, s.initial_state.params["model"]
  x = jax.random.uniform(jax.random.key(3), (5, 8, 8, 1))

  def encode_one(image):
    return family.model.apply({"params": params}, image[None], method="encode")[0]

  jacobians = jax.vmap(jax.jacrev(encode_one))(x)  # (5, K, 8, 8, 1), one example at a time.
  expected = np.sum(np.square(np.asarray(jacobians)), axis=(1, 2, 3, 4))
  np.testing.assert_allclose(jax.jit(family.contraction)(params, x), expected, rtol=1e-5)


@pytest.mark.slow
def test_the_penalty_contracts_the_code_through_the_public_entry_point(data_dir, tmp_path):
  from genlab.run import evaluate_workdir, train_and_evaluate

  reports = {}
  for weight in (0.0, 1.0):
    config = _tiny_config(data_dir, num_steps=60, eval_every=60, image_every=60)
    config.contractive.weight = weight
    train_and_evaluate(config, tmp_path / str(weight))
    reports[weight] = evaluate_workdir(tmp_path / str(weight))
  plain, contractive = reports[0.0]["metrics"], reports[1.0]["metrics"]
  assert contractive["contraction"] < 0.5 * plain["contraction"], (plain, contractive)
  np.testing.assert_allclose(contractive["loss"], contractive["mse"] + contractive["contraction"])
  assert reports[1.0]["protocol"] == {"weight": 1.0, "code_units": 8}
  assert set(reports[1.0]["definitions"]) == {"loss", "mse", "contraction"}
  assert (tmp_path / "1.0" / "images" / "reconstruction_step_000060.png").is_file()


def test_the_family_touches_only_its_module_its_experiment_and_one_registry_line():
  mentions = {
    str(path.relative_to(REPO))
    for path in (REPO / "genlab").rglob("*.py")
    if re.search(r"contractive", path.read_text(), re.IGNORECASE)
  }
  assert mentions == {"genlab/families/contractive_ae.py", "genlab/families/__init__.py"}
  registry = (REPO / "genlab" / "families" / "__init__.py").read_text()
  line = '"contractive_autoencoder": "genlab.families.contractive_ae:ContractiveAutoencoder",'
  assert registry.count(line) == 1
  assert (EXPERIMENTS / "contractive_ae_digits.py").is_file()


def test_the_docs_show_the_module_as_it_is():
  doc = (REPO / "docs" / "extending.md").read_text()
  module = (REPO / "genlab" / "families" / "contractive_ae.py").read_text()
  registry = (REPO / "genlab" / "families" / "__init__.py").read_text()
  nnx_model = (REPO / "tests" / "nnx_models.py").read_text()  # "Your model in NNX".
  blocks = re.findall(r"```python\n(.*?)```", doc, re.DOTALL)
  assert len(blocks) >= 6
  # The outside package's files are run as they are by tests/test_outside_package.py.
  outside = ("# mylab/", "# experiments/free_bits_digits.py")
  for block in blocks:
    if block.startswith(outside):
      continue
    assert block in module or block in registry or block in nnx_model, block[:200]


def test_the_experiment_sets_the_family_and_its_options():
  from genlab import config as config_lib

  config = config_lib.load_experiment(EXPERIMENTS / "contractive_ae_digits.py")
  assert config.family == "contractive_autoencoder" and config.contractive.weight == 0.1
  config_lib.validate(config)
