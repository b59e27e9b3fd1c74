import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from collodreamer.config import (
    ConfigError,
    available_presets,
    field_help,
    flatten,
    from_dict,
    load_config,
    make_config,
    parse_override,
    run_name,
    save_config,
    to_dict,
    uses_pixels,
)
from collodreamer.schema import ActorConfig, Config, EnvConfig, ValueConfig, setting
from collodreamer.seeds import MAX_SEED, OFFSETS, env_seed
from collodreamer.spec import EnvSpec


def test_defaults_and_overrides():
    config = make_config(
        overrides=["env.task=dmc:cheetah_run", "replay.batch_size=16", "run.steps=100_000", "seed=3"]
    )
    assert config.env.task == "dmc:cheetah_run"
    assert config.replay.batch_size == 16
    assert config.run.steps == 100_000
    assert config.seed == 3
    assert Config().replay.batch_size == 50  # defaults untouched


def test_presets_layer_in_order(tmp_path: Path):
    first = tmp_path / "first.yaml"
    first.write_text("replay:\n  batch_size: 8\n  batch_length: 10\n")
    second = tmp_path / "second.yaml"
    second.write_text("replay:\n  batch_size: 12\n")
    config = make_config([str(first), str(second)], ["replay.batch_length=20"])
    assert (config.replay.batch_size, config.replay.batch_length) == (12, 20)
    assert "tiny" in available_presets()
    assert make_config(["tiny"]).run.steps == 400


def test_scientific_floats_parse_from_yaml():
    assert parse_override("a.b=6e-4") == {"a": {"b": "6e-4"}}  # YAML 1.1 reads it as a string


@pytest.mark.parametrize(
    "override, message",
    [
        ("replay.batchsize=3", "unknown config key 'replay.batchsize'; valid keys: capacity, batch_size"),
        ("replay.batch_size=big", "replay.batch_size: expected an integer, got 'big'"),
        ("env.obs=depth", "env.obs: 'depth' is not a valid choice; choices: pixels, state"),
        ("run.video=3", "run.video: expected true or false, got 3"),
        ("env=3", "env: is a section"),
        ("replay.batch_size=0", "replay.batch_size must be positive"),
        ("run.eval_every=0", "run.eval_every must be positive"),
        ("value.target_period=0", "value.target_period must be positive"),
        ("planner.replan_every=40", "planner.replan_every (40) cannot exceed planner.horizon (30)"),
        ("nokey", "override 'nokey' must look like key=value"),
        ("run.steps=0", "run.steps must be positive, got 0"),
        ("run.steps=-5", "run.steps must be positive, got -5"),
        ("model.lr=-1e-3", "model.lr must be positive, got -0.001"),
        ("actor.lr=.nan", "actor.lr: expected a number, got nan"),
        ("value.lr=nan", "value.lr: expected a number, got nan"),
        ("policy.lr=.inf", "policy.lr must be positive, got inf"),
        ("planner.damping=0", "planner.damping must be positive, got 0.0"),
        ("value.gamma=0", "value.gamma must be in (0, 1], got 0.0"),
        ("value.gamma=1.01", "value.gamma must be in (0, 1], got 1.01"),
        ("value.lam=-0.1", "value.lam must be in [0, 1], got -0.1"),
        ("seed=-1", "seed must be in [0, 4294937295], got -1"),
        ("run.prefill=-1", "run.prefill cannot be negative, got -1"),
        ("run.max_nonfinite=0", "run.max_nonfinite must be positive, got 0"),
    ],
)
def test_errors_are_one_line_and_name_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        make_config(overrides=[override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="unknown preset 'nope'; choices: .*tiny"):
        make_config(["nope"])


def test_saved_config_round_trips(tmp_path: Path):
    config = make_config(["tiny"], ["env.obs=state", "seed=7"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_saved_config_with_bad_key_is_rejected(tmp_path: Path):
    (tmp_path / "config.yaml").write_text("env:\n  taks: dmc:cheetah_run\n")
    with pytest.raises(ConfigError, match="unknown config key 'env.taks'"):
        load_config(tmp_path / "config.yaml")


def test_saved_config_that_is_not_utf8_is_rejected(tmp_path: Path):
    (tmp_path / "config.yaml").write_bytes(b"agent: dreamer\nseed: \xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot read config .*config.yaml: 'utf-8' codec can't decode"):
        load_config(tmp_path / "config.yaml")


@pytest.mark.parametrize("text", ["", "- agent\n- dreamer\n"])
def test_damaged_saved_config_is_rejected(tmp_path: Path, text: str):
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match="is empty or not a mapping of sections; it is damaged"):
        load_config(tmp_path / "config.yaml")


def test_saved_config_missing_a_newer_key_warns_and_takes_the_default(tmp_path: Path, caplog):
    config = make_config(["tiny"], ["agent=dreamer"])
    data = to_dict(config)
    del data["actor"]["entropy"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    with caplog.at_level("WARNING"):
        loaded = load_config(tmp_path / "config.yaml")
    assert loaded.actor.entropy == ActorConfig().entropy
    assert "actor.entropy=" in caplog.text
    caplog.clear()
    save_config(loaded, tmp_path / "config.yaml")
    load_config(tmp_path / "config.yaml")
    assert "predates" not in caplog.text


@pytest.mark.parametrize(
    ("obs", "amp", "precision"),
    [("pixels", False, "float32"), ("pixels", True, "bfloat16"), ("state", False, "auto")],
)
def test_saved_config_with_model_amp_loads_as_model_precision(tmp_path: Path, caplog, obs, amp, precision):
    """A run saved before model.precision resumes: a pixel run in the format it trained in, a state run
    (which the setting does not touch) at today's default, so it still matches a new run of its settings."""
    data = to_dict(make_config(["tiny"], ["agent=dreamer", f"env.obs={obs}"]))
    del data["model"]["precision"]
    data["model"]["amp"] = amp
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    with caplog.at_level("WARNING"):
        assert load_config(tmp_path / "config.yaml").model.precision == precision
    assert ("model.precision=auto" in caplog.text) == (obs == "state")


def test_every_setting_declares_its_help_beside_its_field():
    """field_help reads each field's declared help and annotation, no source: a class made at runtime
    has none, and its help is still found."""
    described = field_help()
    assert described.keys() == flatten(to_dict(Config())).keys()
    assert all(help.strip() for _, help in described.values())
    obs_help = "64x64 RGB images, or the task's state vector"
    assert described["env.obs"] == ("Literal['pixels', 'state']", obs_help)
    assert described["value.dropout"][0] == "list[float]"
    probe = dataclasses.make_dataclass("Probe", [("steps", "int", setting(3, "how many"))])
    assert field_help(probe) == {"steps": ("int", "how many")}
    assert probe().steps == 3
    assert ValueConfig().dropout == [] and ValueConfig().dropout is not ValueConfig().dropout


def test_a_pixel_run_is_decided_by_the_spec_or_else_by_the_config():
    assert EnvSpec((64, 64, 3), 2).pixels and not EnvSpec((5,), 2).pixels
    assert uses_pixels(EnvConfig(obs="pixels")) and not uses_pixels(EnvConfig(obs="state"))


def test_configs_saved_with_env_image_size_still_load(tmp_path: Path, caplog):
    """env.image_size (64, the one size the CNN takes) is gone: a config.yaml, a checkpoint's config and
    a resolved config reused as a preset that hold it load as the same config."""
    config = make_config(["tiny"], ["agent=dreamer", "env.obs=pixels"])
    assert "image_size" not in to_dict(config)["env"]
    data = to_dict(config)
    data["env"]["image_size"] = 64
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with caplog.at_level("WARNING"):
        assert load_config(path) == config
    assert "predates" not in caplog.text
    assert from_dict(data) == config
    assert make_config([str(path)]) == config


def test_config_listing_names_type_value_source_and_help(capsys, tmp_path):
    from collodreamer.cli import main

    assert main(["config", "--agent", "collodreamer", "--preset", "cpu", "value.weight=0.5"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert len(rows) == len(flatten(to_dict(make_config())))
    assert "preset cpu" in rows["model.latent"] and "gaussian" in rows["model.latent"]
    assert "override" in rows["value.weight"] and "0.5" in rows["value.weight"]
    assert "agent defaults" in rows["value.gamma"] and "discount" in rows["value.gamma"]
    assert "default" in rows["run.steps"] and "env frames" in rows["run.steps"]
    # --yaml prints the resolved config, which reused as a preset gives the same config back.
    assert main(["config", "--agent", "latco", "--preset", "cpu", "--yaml", "seed=7"]) == 0
    preset = tmp_path / "mine.yaml"
    preset.write_text(capsys.readouterr().out)
    assert make_config([str(preset)]) == make_config(["cpu"], ["agent=latco", "seed=7"])


def test_default_agent_is_collodreamer_and_random_stays_available():
    assert Config().agent == "collodreamer"
    default = make_config(["tiny"])
    assert default.agent == "collodreamer" and default.model.latent == "categorical"  # its own defaults
    assert make_config(["tiny"], ["agent=random"]).agent == "random"


def test_run_names_are_made_in_one_place():
    config = make_config(["tiny"], ["agent=latco", "env.task=gym:Pendulum-v1", "env.obs=state", "seed=3"])
    assert run_name(config) == "latco-Pendulum-v1-state-s3"
    named = run_name(config, variant="base", stamp="20261130-101500")
    assert named == "base-latco-Pendulum-v1-state-s3-20261130-101500"


def test_every_seed_stream_of_the_largest_seed_fits_numpy():
    for stream in OFFSETS:
        np.random.default_rng(env_seed(MAX_SEED, stream))  # raises at 2**32 or more
        assert env_seed(MAX_SEED, stream) < 2**32
    assert max(OFFSETS.values()) == OFFSETS["report"]  # the report stream is the farthest
    make_config(["tiny"], [f"seed={MAX_SEED}"])
    with pytest.raises(ConfigError, match="seed"):
        make_config(["tiny"], [f"seed={MAX_SEED + 1}"])
