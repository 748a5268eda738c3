"""Bad input, clearly refused: property-based tests (Hypothesis) over the dataset loader, the
manifest, the checkpoint loader, model inputs and CLI arguments. Whatever the damage, the answer is
a LoopWMError that names the problem (never a traceback from deep inside numpy or torch), and the
files that were there stay as they were."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopwm.checkpoint import load_model, save_checkpoint
from loopwm.data import TrajectoryDataset, collect
from loopwm.utils import LoopWMError
from tests.test_model import random_obs, small_model

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return collect(env_id="loopwm/Balls-v0", n_bodies=3, max_episode_steps=12, episodes=4, shard_episodes=2,
                   out=str(tmp_path_factory.mktemp("bad") / "data"), progress=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ckpt")
    model = small_model().eval()
    save_checkpoint(run, 3, model, model.checkpoint_meta())
    return run


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_of(folder: Path) -> Path:
    dst = Path(tempfile.mkdtemp()) / folder.name
    shutil.copytree(folder, dst)
    return dst


@FAST
@given(position=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255), verify=st.booleans())
def test_any_flipped_byte_in_a_shard_is_caught(dataset, position, mask, verify):
    data = copy_of(dataset)
    shard = data / "shard_00001.npz"
    raw = bytearray(shard.read_bytes())
    raw[int(position * len(raw))] ^= mask
    shard.write_bytes(bytes(raw))
    before = digest(data)
    if verify:
        with pytest.raises(LoopWMError, match="shard_00001.npz is corrupt"):
            TrajectoryDataset.load(data)
    else:  # without the checksum the zip's own CRCs and the shape checks must still catch it or load it intact
        try:
            ds = TrajectoryDataset.load(data, verify=False)
            assert np.isfinite(ds.arrays["obs"]).all()
        except LoopWMError as err:
            assert "shard_00001.npz" in str(err)
    assert digest(data) == before  # loading never writes


@FAST
@given(keep=st.floats(0, 1, exclude_max=True))
def test_any_truncation_of_a_shard_is_caught(dataset, keep):
    data = copy_of(dataset)
    shard = data / "shard_00000.npz"
    shard.write_bytes(shard.read_bytes()[: int(keep * shard.stat().st_size)])
    with pytest.raises(LoopWMError, match="shard_00000.npz"):
        TrajectoryDataset.load(data, verify=False)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)
MANIFEST_KEYS = ["schema_version", "format", "observation_space", "action_space", "shards", "info_keys",
                 "info_dtypes", "episodes", "steps", "kinematics"]


@FAST
@given(key=st.sampled_from(MANIFEST_KEYS), value=JSON)
def test_any_altered_manifest_field_loads_or_is_refused_clearly(dataset, key, value):
    data = copy_of(dataset)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest[key] = value
    (data / "manifest.json").write_text(json.dumps(manifest))
    try:
        ds = TrajectoryDataset.load(data)
    except LoopWMError as err:
        assert str(err)  # a message, whatever it is
    else:
        assert ds.episodes == 4 and ds.arrays["obs"].shape[1:] == (3, 7)


@FAST
@given(version=st.integers(2, 10**6))
def test_a_manifest_from_a_newer_schema_asks_for_an_upgrade(dataset, version):
    data = copy_of(dataset)
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**manifest, "schema_version": version}))
    with pytest.raises(LoopWMError, match="newer loopwm.*upgrade"):
        TrajectoryDataset.load(data)


@FAST
@given(blob=st.binary(max_size=300), which=st.sampled_from(["tensors", "json"]))
def test_a_file_that_is_not_a_checkpoint_is_refused_never_unpickled(checkpoint, blob, which):
    run = copy_of(checkpoint)
    target = next((run / "checkpoints").glob("*.safetensors" if which == "tensors" else "*.json"))
    target.write_bytes(blob)
    with pytest.raises(LoopWMError):
        load_model(run)


@FAST
@given(key=st.sampled_from(["kind", "spec", "model", "format", "format_version", "tensors", "sha256"]), value=JSON)
def test_a_checkpoint_from_another_model_or_config_is_refused_clearly(checkpoint, key, value):
    run = copy_of(checkpoint)
    meta_path = next((run / "checkpoints").glob("*.json"))
    meta = json.loads(meta_path.read_text())
    if meta.get(key) == value:
        return
    meta[key] = value
    meta_path.write_text(json.dumps(meta))
    try:
        model, _ = load_model(run)
    except LoopWMError as err:
        assert str(err)
    else:  # only edits that change nothing the weights depend on may load
        assert key in ("format_version",) or isinstance(model, torch.nn.Module)


@FAST
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_observations_of_the_wrong_shape_are_refused(shape):
    model = small_model().eval()
    obs = torch.zeros(shape)
    if tuple(shape[1:]) in ((4, 7),):
        return  # that is the right shape
    with pytest.raises(LoopWMError, match="shape"):
        model.initial(obs)


@FAST
@given(bad=st.sampled_from([float("nan"), float("inf"), -float("inf")]), where=st.integers(0, 2 * 4 * 7 - 1))
def test_nan_or_infinite_observations_are_refused(bad, where):
    model = small_model().eval()
    obs = random_obs(2, 1)[:, 0]
    obs.view(-1)[where] = bad
    with pytest.raises(LoopWMError, match="NaN or infinite"):
        model.initial(obs)


@FAST
@given(scale=st.floats(1.01, 1e6), sign=st.sampled_from([-1.0, 1.0]))
def test_out_of_range_or_misshapen_actions_are_refused(scale, sign):
    model = small_model().eval()
    model.spec.action_low, model.spec.action_high = [-1.0, -1.0], [1.0, 1.0]
    state = model.initial(random_obs(2, 1)[:, 0])
    with pytest.raises(LoopWMError, match="leaves the action space"):
        model.imagine(state, torch.full((2, 3, 2), sign * scale))
    with pytest.raises(LoopWMError, match="actions have shape"):
        model.imagine(state, torch.zeros(2, 3, 5))
    with pytest.raises(LoopWMError, match="batch"):
        model.imagine(state, torch.zeros(3, 3, 2))


@settings(max_examples=15, deadline=None)
@given(env_id=st.text(alphabet=st.characters(codec="ascii", exclude_characters="\x00"), min_size=1, max_size=20))
def test_unknown_environment_ids_get_a_message(env_id):
    from loopwm.envs import make_env

    if env_id.strip() in ("CartPole-v1",):
        return
    try:
        env = make_env(env_id)
    except LoopWMError as err:
        message = str(err)
        assert repr(env_id) in message or env_id in message  # the message names what was asked for
        assert any(hint in message for hint in ("does not know", "needs", "is not an environment id", "unknown loopwm"))
    else:  # a real id by chance
        env.close()


@settings(max_examples=10, deadline=None)
@given(episodes=st.integers(-5, 0))
def test_cli_rejects_nonsense_numbers_with_exit_code_2(tmp_path_factory, episodes):
    from loopwm.cli import main

    out = tmp_path_factory.mktemp("cli") / "d"
    assert main(["collect", "--episodes", str(episodes), "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()


def test_a_model_width_the_heads_do_not_divide_is_refused_with_the_fix(tmp_path):
    from loopwm.cli import main
    from loopwm.text.model import TextModelConfig, TextWorldModel

    data = collect(env_id="loopwm/Balls-v0", n_bodies=3, episodes=3, max_episode_steps=12, out=str(tmp_path / "d"),
                   progress=False)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress",
                 "--model.d", "30", "--model.n-heads", "4"]) == 2
    assert not (tmp_path / "run" / "checkpoints").exists()
    # the corrected command then runs in the same folder: nothing was trained, so nothing binds it
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress",
                 "--model.d", "32", "--model.n-heads", "4"]) == 0
    with pytest.raises(LoopWMError, match="divisible by n_heads=4.*e.g. 28"):
        TextWorldModel(50, TextModelConfig(d=30, n_heads=4))
    with pytest.raises(LoopWMError, match="--model.copy-pool read or all"):
        TextWorldModel(50, TextModelConfig(copy_pool="some"))


def test_a_device_is_chosen_in_one_place_and_named_for_records():
    from loopwm.utils import device_label, pick_device

    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(LoopWMError, match="unknown device"):
        pick_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(LoopWMError, match="--device cpu"):
            pick_device("cuda")
    if not torch.accelerator.is_available():  # any accelerator type asked of a machine without one
        assert pick_device("auto") == torch.device("cpu")
        for name in ("cuda:0", "xpu", "mps"):
            with pytest.raises(LoopWMError, match="no accelerator: use --device cpu"):
                pick_device(name)
    assert device_label("cpu") == "cpu" and device_label(torch.device("cpu")) == "cpu"
    assert device_label("meta") == "meta"  # a device type without a torch module of its own
