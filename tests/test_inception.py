"""FID, KID and IS by the standard conventions: the JAX FID Inception against pytorch-fid's
with the same weights, the torch-free weights reader, the fetch, the resize against
clean-fid's, and the formulas against their reference implementations."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from conftest import EXPERIMENTS, import_torch_references
from genlab import metrics
from genlab.errors import ConfigError, GenlabError


@pytest.fixture(scope="module")
def torch_refs():
  return import_torch_references()


def _random_fid_state_dict(torch, pytorch_fid):
  """pytorch-fid's FID Inception (1,008 classes, no aux head) with torch's default init and
  random batch-norm statistics: the published file's tensors, names and shapes."""
  torch.manual_seed(0)
  net = pytorch_fid.inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  state = net.state_dict()
  g = torch.Generator().manual_seed(1)
  for k, v in state.items():
    if k.endswith("running_mean") or k.endswith("bn.bias"):
      state[k] = torch.randn(v.shape, generator=g) * 0.1
    elif k.endswith("running_var") or k.endswith("bn.weight"):
      state[k] = torch.rand(v.shape, generator=g) + 0.5
  return state


@pytest.fixture(scope="module")
def random_weights(torch_refs, tmp_path_factory):
  """A .pth of random FID-Inception weights written by torch.save, and the state dict."""
  torch, pytorch_fid, _ = torch_refs
  state = _random_fid_state_dict(torch, pytorch_fid)
  path = tmp_path_factory.mktemp("weights") / "random_fid_inception.pth"
  torch.save(state, path)
  return path, state


def _real_looking_images() -> np.ndarray:
  """Two 8-bit RGB images: an embedded digit (8×8, grey, repeated) and a photograph."""
  import skimage.data
  from sklearn.datasets import load_digits

  digit = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)[:, :, None]
  photo = skimage.data.astronaut()[::16, ::16]  # 32×32×3.
  return digit, photo


# The weights reader -------------------------------------------------------------------


def test_the_pth_reader_reads_what_torch_save_wrote_in_both_formats(torch_refs, tmp_path):
  torch, _, _ = torch_refs
  from genlab.models.torch_weights import read_state_dict

  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  state = {
    "conv.weight": torch.randn(3, 2, 5, 5),
    "transposed": base.t(),  # Not contiguous: strides differ from the shape's.
    "view": base[1:3, 2:],  # An offset into a shared storage.
    "half": torch.randn(7).half(),
    "bn.num_batches_tracked": torch.tensor(12345678901),
    "mask": torch.tensor([True, False, True]),
  }
  for new_format in (True, False):
    path = tmp_path / f"s{new_format}.pth"
    torch.save(state, path, _use_new_zipfile_serialization=new_format)
    assert zipfile.is_zipfile(path) == new_format
    read = read_state_dict(path)
    assert list(read) == list(state)
    for k, v in state.items():
      assert read[k].dtype == v.numpy().dtype and read[k].shape == tuple(v.shape), k
      np.testing.assert_array_equal(read[k], v.numpy(), err_msg=k)


class _Payload:
  def __reduce__(self):
    return (os.system, ("touch pwned",))


def test_the_pth_reader_runs_no_code_from_the_file(torch_refs, tmp_path, monkeypatch):
  torch, _, _ = torch_refs
  from genlab.models.torch_weights import UnsafePickle, read_state_dict

  monkeypatch.chdir(tmp_path)
  torch.save({"w": torch.zeros(2), "x": _Payload()}, tmp_path / "zip.pth")
  with pytest.raises(UnsafePickle, match="system"):
    read_state_dict(tmp_path / "zip.pth")
  (tmp_path / "legacy.pth").write_bytes(pickle.dumps(_Payload()))
  with pytest.raises(UnsafePickle, match="system"):
    read_state_dict(tmp_path / "legacy.pth")
  assert not (tmp_path / "pwned").exists()


def test_fetch_weights_checks_the_checksum_keeps_the_file_and_fetches_once(tmp_path):
  import hashlib

  from genlab.run.inception_weights import fetch_weights

  source = tmp_path / "served" / "weights.pth"
  source.parent.mkdir()
  source.write_bytes(os.urandom(3 << 20))
  digest = hashlib.sha256(source.read_bytes()).hexdigest()
  cache = tmp_path / "cache"
  with pytest.raises(GenlabError, match="not the expected"):
    fetch_weights(source.as_uri(), sha256="0" * 64, directory=cache)
  assert list(cache.iterdir()) == []  # Nothing half-fetched or unchecked is kept.
  path = fetch_weights(source.as_uri(), sha256=digest, directory=cache)
  assert path == cache / "weights.pth" and path.read_bytes() == source.read_bytes()

  def no_network(url):
    raise AssertionError(f"fetched {url} again")

  assert fetch_weights(source.as_uri(), sha256=digest, directory=cache, opener=no_network) == path
  with pytest.raises(GenlabError, match="could not fetch"):
    fetch_weights((tmp_path / "absent.pth").as_uri(), sha256=digest, directory=tmp_path / "c2")


def test_the_published_weights_checksum_is_the_one_its_name_carries():
  from genlab.evaluators.inception import PUBLISHED_SHA256, PUBLISHED_WEIGHTS

  # torch.hub's convention: the name ends with the first 8 hex digits of the file's SHA-256.
  assert PUBLISHED_WEIGHTS == f"pt_inception-2015-12-05-{PUBLISHED_SHA256[:8]}.pth"


# The network ----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_jax_inception_equals_pytorch_fids_with_the_same_weights(
  torch_refs, random_weights, monkeypatch
):
  """pool3 and logits within 1e-4 relative of pytorch-fid's InceptionV3 (its FID blocks)
  loaded with the same random weights, read back by the torch-free reader."""
  import jax

  from genlab.evaluators.inception import resize
  from genlab.models.inception import FIDInceptionV3, variables_from_state_dict
  from genlab.models.torch_weights import read_state_dict

  torch, pytorch_fid, _ = torch_refs
  path, state = random_weights
  monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", lambda *a, **k: state)
  reference = pytorch_fid.inception.InceptionV3([3], resize_input=False, normalize_input=False)
  digit, photo = _real_looking_images()
  x = np.concatenate([resize(digit[None]), resize(photo[None])]) / 127.5 - 1.0
  with torch.no_grad():
    pool = reference.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2)).float())[0][:, :, 0, 0]
    logits = torch.nn.functional.linear(pool, state["fc.weight"], state["fc.bias"])
  variables = variables_from_state_dict(read_state_dict(path))
  got_pool, got_logits = jax.jit(FIDInceptionV3().apply)(variables, np.float32(x))
  for got, want in ((got_pool, pool.numpy()), (got_logits, logits.numpy())):
    assert got.shape == want.shape and np.abs(want).max() > 0
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_weights_that_do_not_fit_are_refused_naming_the_tensor(torch_refs):
  torch, pytorch_fid, _ = torch_refs
  from genlab.models.inception import variables_from_state_dict

  state = {k: v.numpy() for k, v in _random_fid_state_dict(torch, pytorch_fid).items()}
  variables_from_state_dict(state)  # As written: taken.
  with pytest.raises(ValueError, match="Mixed_6b.branch1x1.conv.weight has shape"):
    variables_from_state_dict({**state, "Mixed_6b.branch1x1.conv.weight": np.zeros((1, 1))})
  with pytest.raises(ValueError, match="no fc.bias"):
    variables_from_state_dict({k: v for k, v in state.items() if k != "fc.bias"})
  with pytest.raises(ValueError, match="does not use: AuxLogits"):
    variables_from_state_dict({**state, "AuxLogits.fc.weight": np.zeros((2, 2))})


# Resizing -------------------------------------------------------------------------------


def test_resize_matches_clean_fids_clean_and_legacy_pytorch_modes(torch_refs):
  _, _, cleanfid = torch_refs
  from genlab.evaluators.inception import resize

  digit, photo = _real_looking_images()
  big = np.random.default_rng(0).integers(0, 256, (400, 350, 3), dtype=np.uint8)  # Downsized.
  for image in (np.repeat(digit, 3, axis=-1), photo, big):
    # clean: the same PIL calls, bit-exact. legacy_pytorch: torch computes the source positions
    # in float32, genlab in float64; on a noise image (steps of 255 between pixels) that moves
    # values by up to 0.007 of 255.
    for mode, tolerance in (("clean", 0.0), ("legacy_pytorch", 1e-2)):
      want = cleanfid.resize.build_resizer(mode)(image)
      got = resize(image[None], mode)[0]
      assert got.shape == (299, 299, 3) and got.dtype == np.float32
      np.testing.assert_allclose(got, want, rtol=0, atol=tolerance, err_msg=mode)
  np.testing.assert_array_equal(resize(digit[None]), resize(np.repeat(digit, 3, -1)[None]))


def test_samples_are_quantized_to_8_bits_before_their_features():
  from genlab.evaluators.inception import stored_uint8, to_uint8

  x = np.array([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5], np.float32)
  np.testing.assert_array_equal(to_uint8(x, (-1.0, 1.0)), [0, 0, 128, 191, 255, 255])
  np.testing.assert_array_equal(to_uint8(x, (0.0, 1.0)), [0, 0, 0, 128, 255, 255])
  np.testing.assert_array_equal(stored_uint8(np.array([0, 17, 255])), [0, 17, 255])


# The formulas ---------------------------------------------------------------------------


def _features(n=80, d=24, seed=0):
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(d, d))
  return rng.normal(size=(n, d)) @ mixing + rng.normal(size=d)


def test_fid_equals_pytorch_fids_and_is_zero_for_a_set_and_itself(torch_refs):
  _, pytorch_fid, _ = torch_refs
  a, b = _features(seed=0), _features(seed=1)
  stats_a, stats_b = metrics.gaussian_statistics(a), metrics.gaussian_statistics(b)
  want = pytorch_fid.fid_score.calculate_frechet_distance(*stats_a, *stats_b)
  got = metrics.frechet_distance_sqrtm(*stats_a, *stats_b)
  assert want > 1 and abs(got - want) <= 1e-6 * abs(want)
  # The eigendecomposition form genlab's feature-net fd uses agrees up to rounding.
  assert abs(metrics.frechet_distance(*stats_a, *stats_b) - want) <= 1e-6 * want
  assert abs(metrics.frechet_distance_sqrtm(*stats_a, *stats_a)) < 1e-6 * np.trace(stats_a[1])
  # Gaussian noise of growing σ moves the set further and further away.
  rng = np.random.default_rng(2)
  noise = rng.normal(size=a.shape)
  fids = [
    metrics.frechet_distance_sqrtm(*stats_a, *metrics.gaussian_statistics(a + s * noise))
    for s in (0.5, 1.0, 2.0, 4.0)
  ]
  assert all(x < y for x, y in zip(fids, fids[1:], strict=False)), fids


def test_kid_equals_clean_fids_on_the_same_subsets(torch_refs):
  _, _, cleanfid = torch_refs
  real, fake = _features(60, 32, seed=3), _features(50, 32, seed=4) * 1.1
  np.random.seed(7)
  want = cleanfid.fid.kernel_distance(real, fake, num_subsets=6, max_subset_size=20)
  got, std = metrics.kernel_inception_distance(
    real, fake, subset_size=20, subsets=6, rng=np.random.RandomState(7)
  )
  assert abs(got - want) <= 1e-10 * abs(want) and std > 0
  # The unbiased MMD² of one pair of subsets, written out from the published formula.
  rng = np.random.RandomState(7)
  x, y = fake[rng.choice(50, 20, replace=False)], real[rng.choice(60, 20, replace=False)]
  k = lambda p, q: (p @ q.T / 32 + 1) ** 3  # noqa: E731
  m = 20
  mmd = (
    (k(x, x).sum() - np.trace(k(x, x))) / (m * (m - 1))
    + (k(y, y).sum() - np.trace(k(y, y))) / (m * (m - 1))
    - 2 * k(x, y).mean()
  )
  one, _ = metrics.kernel_inception_distance(
    real, fake, subset_size=20, subsets=1, rng=np.random.RandomState(7)
  )
  assert abs(one - mmd) <= 1e-10 * abs(mmd)
  with pytest.raises(ValueError, match="subset size 51"):
    metrics.kernel_inception_distance(real, fake, subset_size=51, subsets=1, rng=rng)


def test_inception_score_equals_the_published_formula():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(40, 1008)) * 3
  got, got_std = metrics.inception_score(logits, splits=4)
  p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  scores = []
  for part in np.split(p, 4):  # The original code's consecutive splits.
    py = part.mean(axis=0)
    scores.append(np.exp(np.mean([np.sum(q * np.log(q / py)) for q in part])))
  np.testing.assert_allclose([got, got_std], [np.mean(scores), np.std(scores)], rtol=1e-10)
  # Confident and spread over C classes: the score is C.
  confident = np.eye(1008)[np.arange(40) % 8] * 100
  assert abs(metrics.inception_score(confident, splits=1)[0] - 8) < 1e-6


# The evaluator ----------------------------------------------------------------------------


def _vae_config(data_dir, **sample_metrics):
  from genlab import config as config_lib

  config = config_lib.load_experiment(EXPERIMENTS / "vae_digits.py")
  config.data.data_dir = data_dir
  config.model.hidden = (32,)
  config.vae.nll_k = 10
  config.sample_metrics.update(**{"evaluators": "inception", **sample_metrics})
  return config


@pytest.mark.parametrize(
  "options, needle",
  [
    ({"kid_subset_size": 1001}, "kid_subset_size=1001 must be from 2 to 1000"),
    ({"inception_n_fake": 8, "kid_subset_size": 9}, "kid_subset_size=9 must be from 2 to 8"),
    ({"inception_n_fake": 8, "kid_subset_size": 4, "is_splits": 9}, "is_splits=9 must be"),
    ({"inception_resize": "bicubic"}, "inception_resize='bicubic'; choose one of"),
    ({"inception_n_real": 1}, "must be at least 2"),
  ],
)
def test_inception_sizes_are_refused_when_the_family_is_built(options, needle, data_dir):
  from genlab.run import setup

  options = {"inception_n_fake": 1000, **options}
  with pytest.raises(ConfigError) as error:
    setup(_vae_config(data_dir, **options))
  assert needle in str(error.value) and "\n" not in str(error.value), str(error.value)


@pytest.mark.slow
def test_a_vae_run_reports_fid_kid_and_is_with_their_protocol(random_weights, data_dir, tmp_path):
  """Trained without them, scored by `genlab eval` with them (the group's fields are eval
  overrides). One FID: scipy's sqrtm of a 2,048² matrix takes tens of seconds on 2 cores."""
  from genlab.run import evaluate_workdir, train_and_evaluate
  from genlab.run.inception_weights import sha256_of

  path, _ = random_weights
  config = _vae_config(data_dir, evaluators="")
  config.update(num_steps=10, eval_every=10, image_every=10, checkpoint_every=10)
  train_and_evaluate(config, tmp_path / "run")
  sizes = {
    "evaluators": "inception",
    "inception_weights": str(path),
    "inception_n_fake": 6,
    "inception_n_real": 6,
    "kid_subset_size": 4,
    "kid_subsets": 3,
    "is_splits": 2,
  }
  overrides = [f"--config.sample_metrics.{k}={v}" for k, v in sizes.items()]
  report = evaluate_workdir(tmp_path / "run", overrides)
  m, protocol = report["metrics"], report["protocol"]
  assert all(np.isfinite(m[k]) for k in ("fid", "kid", "kid_std", "is", "is_std")), m
  assert m["fid"] > 0 and 1.0 <= m["is"] <= 1008
  assert protocol["inception_weights_sha256"] == sha256_of(path)
  assert protocol["inception_weights_published"].startswith("no: not pt_inception-2015-12-05")
  assert protocol["inception_n_fake"] == 6 and protocol["inception_n_real"] == 6
  assert protocol["inception_real_split"] == "train" and protocol["is_splits"] == 2
  assert protocol["kid_subset_size"] == 4 and protocol["kid_subsets"] == 3
  assert protocol["inception_resize"].startswith("clean: ")
  assert "fewer than the 50000" in protocol["inception_sample_counts"]
  assert {"fid", "kid", "is"} <= set(report["definitions"])
  assert json.loads((tmp_path / "run" / "eval.json").read_text())["metrics"]["fid"] == m["fid"]
  # The real features were cached, keyed by the weights' SHA-256 and the count.
  cached = list((pathlib.Path(os.environ["GENLAB_CACHE_DIR"]) / "inception_stats").glob("*.npy"))
  assert any(sha256_of(path)[:16] in p.name and "-train-6-" in p.name for p in cached), cached


def test_cached_features_are_computed_once(tmp_path):
  from genlab.evaluators.inception import InceptionNet

  net = InceptionNet({}, weights="w.pth", sha256="0" * 64, cache_dir=tmp_path)
  first = net.cached("digits-train-6", lambda: np.arange(6.0))

  def again():
    raise AssertionError("computed again")

  np.testing.assert_array_equal(net.cached("digits-train-6", again), first)
  assert [p.name for p in tmp_path.iterdir()] == ["digits-train-6.npy"]
