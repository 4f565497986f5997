"""WorkerConfig: file + env overrides, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import ConfigError, env_names, load_config
from relay.deploy.envref import reference_markdown

BASE = {"COMMANDER_URL": "http://127.0.0.1:9"}


def test_repo_example_config_is_valid_for_the_built_in_trainer() -> None:
    from trainer_blackbox.train_config import validate_train_block

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "run.yaml", env={})
    assert cfg.mode in ("sft", "rl")
    assert validate_train_block(cfg.train, cfg.mode).max_steps == 200  # what the pod's trainer checks first


def test_a_mock_block_given_to_the_built_in_trainer_names_every_problem() -> None:
    """The old example's block, run by the built-in trainer: all four problems, not 'and 3 more'."""
    from trainer_blackbox.train_config import TrainConfigError, validate_train_block

    block = {"max_steps": 200, "save_steps": 20, "step_seconds": 0.1, "checkpoint_bytes": 1048576}
    with pytest.raises(TrainConfigError) as info:
        validate_train_block(block, "sft")
    message = str(info.value)
    assert "\n" not in message and "more problem" not in message
    for key in (
        "train.model: required",
        "train.dataset: required",
        "train.step_seconds",
        "train.checkpoint_bytes",
    ):
        assert key in message, message
    assert len(info.value.problems) == 4


def test_every_config_problem_is_named_at_once() -> None:
    env = {**BASE, "MAX_RESTARTS": "many", "MODE": "pretrain", "GRACE_S": "-1"}
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    message = str(info.value)
    assert "\n" not in message and "more problem" not in message
    assert [key for key, _, _ in info.value.problems] == ["mode", "grace_s", "max_restarts"]
    for key in ("mode (env MODE)", "grace_s (env GRACE_S)", "max_restarts (env MAX_RESTARTS)"):
        assert key in message, message


def test_env_overrides_file(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("commander_url: http://a:1\nrun_id: r1\nmax_restarts: 1\ntrain: {max_steps: 3}\n")
    cfg = load_config(
        None, env={"RELAY_RUN_CONFIG": str(f), "MAX_RESTARTS": "7", "TRAIN": '{"max_steps": 9}'}
    )
    assert cfg.run_id == "r1"
    assert cfg.max_restarts == 7
    assert cfg.train == {"max_steps": 9}
    # an empty env value clears an optional key: RUN_ID="" means "take the next waiting run"
    assert load_config(f, env={"RUN_ID": ""}).run_id is None


def test_defaults_and_shorthands() -> None:
    cfg = load_config(
        None, env={**BASE, "HF_REPO": "me/ckpts", "HF_TOKEN": "hf_SeCrEt123", "RELAY_SHARED_SECRET": "s"}
    )
    assert cfg.remote == "hf://me/ckpts"
    assert cfg.ckpt_keep_last_n == 3 and cfg.grace_s == 60 and str(cfg.relay_root) == "/mnt/relay"
    assert cfg.worker_id and cfg.worker_id != load_config(None, env=BASE).worker_id  # random suffix
    assert cfg.token() == "hf_SeCrEt123" and cfg.secret() == "s"
    assert "hf_SeCrEt123" not in repr(cfg) and cfg.public_dict()["hf_token"] == "***"


@pytest.mark.parametrize(
    ("env", "key", "fragment"),
    [
        ({}, "commander_url", "required"),
        ({**BASE, "COMMANDER_URL": "ftp://x"}, "commander_url", "http://"),
        ({**BASE, "MAX_RESTARTS": "many"}, "max_restarts", "integer"),
        ({**BASE, "RUN_ID": "../etc"}, "run_id", "A-Z"),
        ({**BASE, "MODE": "pretrain"}, "mode", "sft"),
        ({**BASE, "RELAY_REMOTE": "s3://b"}, "remote", "hf://"),
        ({**BASE, "RELAY_REMOTE": "file://relative"}, "remote", "absolute"),
        ({**BASE, "HF_REPO": "a/b", "RELAY_REMOTE": "file:///x"}, "hf_repo", "conflicts"),
        ({**BASE, "HF_REPO": "a/b"}, "hf_token", "required for the remote hf://a/b: set HF_TOKEN"),
        ({**BASE, "RELAY_REMOTE": "hf://a/b", "HF_TOKEN": " "}, "hf_token", "required"),
        ({**BASE, "GRACE_S": "-1"}, "grace_s", "greater than 0"),
        ({**BASE, "TRAIN": "[1, 2]"}, "train", "dictionary"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(env: dict[str, str], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    msg = str(info.value)
    assert "\n" not in msg
    assert info.value.key == key
    assert key in msg and fragment in msg


def test_file_problems(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("commander_url: http://a:1\nmax_restartz: 2\n")
    with pytest.raises(ConfigError, match="max_restartz.*unknown key"):
        load_config(f, env={})
    f.write_text("commander_url: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML: line"):
        load_config(f, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", env={})
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f, env={})


def test_every_key_has_an_env_var_and_a_description() -> None:
    names = env_names()
    assert names["remote"] == "RELAY_REMOTE" and names["grace_s"] == "GRACE_S"
    ref = reference_markdown()
    for var in names.values():
        assert f"`{var}`" in ref
    assert "| `COMMANDER_URL` |" in ref


@pytest.mark.parametrize("key", ["hf_token", "relay_shared_secret"])
@pytest.mark.parametrize("value", ["123456789", "[hf_SeCrEt123]", "true", "12.5"])
def test_a_bad_secret_value_is_never_echoed(tmp_path: Path, key: str, value: str) -> None:
    f = tmp_path / "run.yaml"
    f.write_text(f"commander_url: http://a:1\n{key}: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, env={})
    msg = str(info.value)
    assert key in msg and "\n" not in msg
    for fragment in ("123456789", "SeCrEt", "True", "12.5"):
        assert fragment not in msg, msg
    if "(got" in msg:
        assert "(got ***)" in msg


def test_other_bad_values_are_still_echoed(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("commander_url: http://a:1\nmax_restarts: lots\n")
    with pytest.raises(ConfigError, match=r"\(got 'lots'\)"):
        load_config(f, env={})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("commander_url: [unclosed\n", "invalid YAML: line 2, column 1: "),
        (
            "commander_url: http://a:1\nrun_id: 2024-13-45\n",
            "invalid YAML: bad value: month must be in 1..12",
        ),
        ("[" * 5000, "invalid YAML: nested too deeply"),
    ],
)
def test_yaml_problems_are_one_line_with_the_position(tmp_path: Path, text: str, fragment: str) -> None:
    f = tmp_path / "run.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f, env={})
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_missing_commander_is_one_problem_among_the_others() -> None:
    """Not a check before the others: the validator names it with how to set it, beside the rest."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"RUN_ID": "..", "MODE": "ppo"})
    assert str(info.value).startswith("config error: commander_url: required: set commander_url in the")
    assert [key for key, _, _ in info.value.problems] == ["commander_url", "run_id", "mode"]
    assert info.value.problems[2][2] == "env MODE"


def test_extra_rules_are_reported_with_the_models() -> None:
    def needs_secret(data: object) -> list[tuple[str, str]]:
        return [("relay_shared_secret", "required here")]

    with pytest.raises(ConfigError) as info:
        load_config(None, env={**BASE, "MODE": "ppo"}, extra=needs_secret)
    assert [key for key, _, _ in info.value.problems] == ["mode", "relay_shared_secret"]
    with pytest.raises(ConfigError, match="relay_shared_secret: required here"):
        load_config(None, env=BASE, extra=needs_secret)
