"""Experiment configs: `--config.` overrides, validation, JSON round trip, experiment files."""

from __future__ import annotations

import json
import pathlib

import ml_collections
import pytest

from genlab import config as config_lib
from genlab.errors import ConfigError

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def _get(config: ml_collections.ConfigDict, dotted: str):
  node = config
  for name in dotted.split("."):
    node = node[name]
  return node


@pytest.mark.parametrize(
  ("override", "field", "expected", "expected_type"),
  [
    ("--config.batch_size=32", "batch_size", 32, int),
    ("--config.model.latent_dim=4", "model.latent_dim", 4, int),
    ("--config.optimizer.learning_rate=3e-4", "optimizer.learning_rate", 3e-4, float),
    # An int literal on a float field is the float.
    ("--config.optimizer.learning_rate=1", "optimizer.learning_rate", 1.0, float),
    # A list literal on a tuple field becomes a tuple; so does a single value.
    ("--config.model.features=[4,8,16]", "model.features", (4, 8, 16), tuple),
    ("--config.model.features=16", "model.features", (16,), tuple),
    ("--config.data.range=[-1.0,1.0]", "data.range", (-1.0, 1.0), tuple),
    ("--config.dataset=mnist", "dataset", "mnist", str),
    ("--config.dataset=/tmp/data/mnist.npz", "dataset", "/tmp/data/mnist.npz", str),
    # Text that parses as another literal is still the string on a string field.
    ("--config.dataset=123", "dataset", "123", str),
    ("--config.dataset=True", "dataset", "True", str),
    ("--config.model.activation=gelu", "model.activation", "gelu", str),
  ],
)
def test_override_sets_field_with_its_type(test_config, override, field, expected, expected_type):
  config = test_config()
  before = config.to_dict()

  config_lib.apply_overrides(config, [override])

  value = _get(config, field)
  assert value == expected
  assert type(value) is expected_type
  # Nothing else changed.
  after = config.to_dict()
  top = field.split(".")[0]
  assert {k: v for k, v in after.items() if k != top} == {
    k: v for k, v in before.items() if k != top
  }


@pytest.mark.parametrize(
  ("override", "field", "expected", "expected_type"),
  [
    ("--config.data.data_dir=/tmp/tfds", "data.data_dir", "/tmp/tfds", str),
    ("--config.data.target_key=segmentation", "data.target_key", "segmentation", str),
    ("--config.eval_batch_size=32", "eval_batch_size", 32, int),
    ("--config.eval_batch_size=None", "eval_batch_size", None, type(None)),
  ],
)
def test_override_sets_placeholder_field(override, field, expected, expected_type):
  # Placeholder fields are None in the base config until an experiment or override sets them.
  config = config_lib.base_config()
  assert _get(config, field) is None

  config_lib.apply_overrides(config, [override])

  value = _get(config, field)
  assert value == expected
  assert type(value) is expected_type


@pytest.mark.parametrize("field", ["data.data_dir", "data.target_key"])
def test_override_of_string_placeholder_keeps_numeric_text_as_string(field):
  # A placeholder(str) field is a string field: a directory or feature named "2024" is the
  # string "2024", as `--config.dataset=123` means "123" on a field that holds a string.
  config = config_lib.base_config()

  config_lib.apply_overrides(config, [f"--config.{field}=2024"])

  assert _get(config, field) == "2024"


@pytest.mark.parametrize("text", ["abc", "1.5"])
def test_wrong_type_on_int_placeholder_raises(text):
  config = config_lib.base_config()

  with pytest.raises(ConfigError, match="eval_batch_size"):
    config_lib.apply_overrides(config, [f"--config.eval_batch_size={text}"])

  assert config.eval_batch_size is None


def test_override_bool_field(test_config):
  config = test_config()
  config.use_ema = False  # No bool field in the base config: add one as an experiment would.

  config_lib.apply_overrides(config, ["--config.use_ema=True"])
  assert config.use_ema is True
  config_lib.apply_overrides(config, ["--config.use_ema=False"])
  assert config.use_ema is False
  config_lib.apply_overrides(config, ["--config.use_ema=true"])  # JSON's spelling.
  assert config.use_ema is True
  with pytest.raises(ConfigError, match="use_ema expects True or False"):
    config_lib.apply_overrides(config, ["--config.use_ema=yes"])


def test_overrides_apply_in_order(test_config):
  config = test_config()

  config_lib.apply_overrides(
    config, ["--config.seed=1", "--config.model.latent_dim=3", "--config.seed=7"]
  )

  assert (config.seed, config.model.latent_dim) == (7, 3)


@pytest.mark.parametrize(
  ("override", "unknown", "suggestion"),
  [
    ("--config.model.latnt_dim=4", "model.latnt_dim", "model.latent_dim"),
    ("--config.batch_sise=4", "batch_sise", "batch_size"),
    ("--config.modle.latent_dim=4", "modle", "model"),
    ("--config.optimizer.learning_rat=0.1", "optimizer.learning_rat", "optimizer.learning_rate"),
  ],
)
def test_misspelt_field_names_it_and_suggests_close_match(
  test_config, override, unknown, suggestion
):
  config = test_config()

  with pytest.raises(ConfigError) as info:
    config_lib.apply_overrides(config, [override])

  message = str(info.value)
  assert f"--config.{unknown}" in message
  assert f"did you mean --config.{suggestion}?" in message


def test_unknown_field_does_not_create_it(test_config):
  config = test_config()

  with pytest.raises(ConfigError):
    config_lib.apply_overrides(config, ["--config.model.new_field=1"])

  assert "new_field" not in config.model


@pytest.mark.parametrize(
  "override",
  [
    "--config.batch_size=1.5",
    "--config.batch_size=abc",
    "--config.model.latent_dim=[1,2]",
    "--config.optimizer.learning_rate=fast",
    # A bool is not an int, although Python's bool subclasses it.
    "--config.model.latent_dim=True",
  ],
)
def test_wrong_type_raises(test_config, override):
  config = test_config()
  field = override.split("=")[0][len("--config.") :]
  before = _get(config, field)

  with pytest.raises(ConfigError, match=field):
    config_lib.apply_overrides(config, [override])

  assert _get(config, field) == before


@pytest.mark.parametrize(
  "override", ["batch_size=32", "--batch_size=32", "--config.batch_size", "-config.seed=1", ""]
)
def test_malformed_override_raises(test_config, override):
  with pytest.raises(ConfigError, match="expected --config.FIELD=VALUE"):
    config_lib.apply_overrides(test_config(), [override])


def test_validate_accepts_test_config(test_config):
  config_lib.validate(test_config())  # Must not raise.


@pytest.mark.parametrize(
  ("field", "value", "message"),
  [
    ("parallel", "pmap", "config.parallel is gone: every run is jax.jit over a mesh"),
    ("kernels", "gpu", "config.kernels='gpu'"),
    ("batch_size", 0, "config.batch_size must be a positive integer"),
    ("batch_size", -8, "config.batch_size must be a positive integer"),
    ("batch_size", True, "config.batch_size must be a positive integer"),
    ("num_steps", 0, "config.num_steps must be a positive integer"),
    ("log_every", 0, "config.log_every must be a positive integer"),
    ("keep_checkpoints", 0, "config.keep_checkpoints must be a positive integer"),
  ],
)
def test_validate_rejects(test_config, field, value, message):
  config = test_config()
  with config.ignore_type():
    config[field] = value

  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config)


@pytest.mark.parametrize(
  ("mesh", "ok"),
  [
    ({"devices": 0, "fsdp": 1}, True),
    ({"devices": 4, "fsdp": -1}, True),
    ({"devices": -1}, False),
    ({"fsdp": 0}, False),
    ({"fsdp": -2}, False),
    ({"fsdp_min_size": -1}, False),
    ({"devices": 1.5}, False),
  ],
)
def test_validate_checks_the_mesh(test_config, mesh, ok):
  config = test_config()
  with config.ignore_type():
    config.mesh.update(mesh)
  if ok:
    config_lib.validate(config)
  else:
    with pytest.raises(ConfigError, match="config.mesh."):
      config_lib.validate(config)


def test_configs_saved_before_the_mesh_resume_as_today(test_config):
  # An earlier genlab saved `parallel` and knew no mesh or kernels: the same run today.
  saved = test_config().to_dict()
  del saved["mesh"], saved["kernels"]
  saved["parallel"] = "pmap"
  upgraded = config_lib.from_json(json.dumps(saved, default=list))
  assert "parallel" not in upgraded
  assert upgraded.mesh.to_dict() == config_lib.base_config().mesh.to_dict()
  assert upgraded.kernels == "auto"
  config_lib.check_resumable(upgraded, test_config())  # Must not raise.


def test_a_saved_activation_sae_config_with_a_renamed_field_resumes_with_its_value():
  today = config_lib.base_config("activation_sae")
  today.sae.dead_after = 2560
  saved = today.to_dict()
  saved["sae"]["aux_dead_after"] = saved["sae"].pop("dead_after")  # As an earlier genlab wrote.
  upgraded = config_lib.from_json(json.dumps(saved, default=list))
  assert "aux_dead_after" not in upgraded.sae and upgraded.sae.dead_after == 2560
  config_lib.check_resumable(upgraded, today)  # Must not raise.


def test_a_saved_activation_sae_config_with_threshold_decay_in_sae_resumes_with_it_in_model():
  today = config_lib.load_experiment(EXPERIMENTS / "sae_pydoc_residual.py")
  saved = json.loads(config_lib.to_json(today))
  saved["sae"]["threshold_decay"] = 0.9  # Where genlab kept BatchTopK's EMA decay before.
  upgraded = config_lib.from_json(json.dumps(saved))
  assert "threshold_decay" not in upgraded.sae and upgraded.model.threshold_decay == 0.9
  with pytest.raises(ConfigError, match=r"model.threshold_decay \(saved 0.9, now 0.99\)"):
    config_lib.check_resumable(upgraded, today)
  saved["sae"]["threshold_decay"] = 0.99  # The default: the same run.
  config_lib.check_resumable(config_lib.from_json(json.dumps(saved)), today)


def test_a_model_field_the_experiment_leaves_at_its_default_can_be_set():
  config = config_lib.load_experiment(EXPERIMENTS / "sae_pydoc_residual.py")
  assert "matryoshka_widths" not in config.model
  config_lib.apply_overrides(
    config,
    ["--config.model.code=matryoshka_batchtopk", "--config.model.matryoshka_widths=(128,512)"],
  )
  assert config.model.matryoshka_widths == [128, 512]
  with pytest.raises(ConfigError, match="unknown config field --config.model.matryoshka_width"):
    config_lib.apply_overrides(config, ["--config.model.matryoshka_width=(1,)"])
  # Resuming with such a field set to its default is the same run; to another value, not.
  saved = config_lib.load_experiment(EXPERIMENTS / "sae_pydoc_residual.py")
  again = config_lib.load_experiment(EXPERIMENTS / "sae_pydoc_residual.py")
  config_lib.apply_overrides(again, ["--config.model.threshold_decay=0.99"])
  config_lib.check_resumable(saved, again)
  config_lib.apply_overrides(again, ["--config.model.code_bias_init=1.0"])
  with pytest.raises(ConfigError, match=r"model.code_bias_init \(saved 0.0, now 1.0\)"):
    config_lib.check_resumable(saved, again)


def test_base_config_holds_the_family_options_its_module_defines():
  from genlab.families import vae

  config = config_lib.base_config("vae")
  assert config.family == "vae"
  assert config.vae.to_dict() == vae.options().to_dict()
  assert "vae" not in config_lib.base_config("autoencoder")


def test_validate_rejects_missing_required_field(test_config):
  config = test_config()
  del config["num_steps"]

  with pytest.raises(ConfigError, match="lacks required fields: num_steps"):
    config_lib.validate(config)


def test_json_round_trip(test_config):
  config = test_config(**{"model.features": (4, 8, 16), "optimizer.learning_rate": 3e-4})

  text = config_lib.to_json(config)
  restored = config_lib.from_json(text)

  assert restored.to_dict() == config.to_dict()
  assert restored.model.features == (4, 8, 16)  # Lists in the JSON come back as tuples.
  assert restored.data.range == (0.0, 1.0)
  assert restored.eval_batch_size is None
  assert config_lib.to_json(restored) == text
  config_lib.validate(restored)


def test_load_experiment_has_required_fields():
  config = config_lib.load_experiment(EXPERIMENTS / "conv_ae_digits.py")

  assert isinstance(config, ml_collections.ConfigDict)
  for field in ("seed", "batch_size", "num_steps", "dataset", "model", "mesh", "kernels"):
    assert field in config, field
  assert config.dataset == "digits"
  assert config.model.latent_dim == 16
  config_lib.validate(config)


def test_load_experiment_missing_file_raises(tmp_path):
  missing = tmp_path / "no_such_experiment.py"

  with pytest.raises(ConfigError, match="experiment file not found.*no_such_experiment.py"):
    config_lib.load_experiment(missing)


def test_load_experiment_without_get_config_raises(tmp_path):
  path = tmp_path / "empty_experiment.py"
  path.write_text("x = 1\n")

  with pytest.raises(ConfigError, match="defines no get_config"):
    config_lib.load_experiment(path)


def test_value_used_as_a_group_is_named(test_config):
  config = test_config()
  with pytest.raises(ConfigError, match="seed is a value, not a group"):
    config_lib.apply_overrides(config, ["--config.seed.x=1"])
  with pytest.raises(ConfigError, match="is a group of fields"):
    config_lib.apply_overrides(config, ["--config.model=3"])
