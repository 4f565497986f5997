"""The README's environment-variable reference is generated from the config model and current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay.config import WorkerConfig, env_names
from relay.deploy import envref

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def test_readme_reference_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    assert envref.START in text and envref.END in text
    assert envref.is_current(text), (
        "README env reference is stale: run python -m relay.deploy.envref --write README.md"
    )


def test_every_config_field_is_documented_with_its_variable() -> None:
    ref = envref.reference_markdown()
    for key, var in env_names().items():
        assert f"| `{var}` | `{key}` |" in ref, key
        description = WorkerConfig.model_fields[key].description
        assert description, f"{key} has no description"


def test_markdown_is_escaped_and_secrets_flagged() -> None:
    ref = envref.reference_markdown()
    rows = [ln for ln in ref.splitlines() if ln.startswith("| `")]
    assert len(rows) == len(WorkerConfig.model_fields)
    assert all(ln.count(" | ") == 3 for ln in rows)  # no stray | splitting a cell
    assert "<mode>" not in ref  # would vanish as an HTML tag on GitHub
    secret_rows = [ln for ln in rows if "**Secret**" in ln]
    assert {ln.split("`")[1] for ln in secret_rows} >= {"HF_TOKEN", "RELAY_SHARED_SECRET"}


def test_splice_replaces_only_the_block() -> None:
    doc = f"# Title\n\nbefore\n{envref.START}\nold stuff\n{envref.END}\nafter\n"
    new = envref.splice(doc, block=f"{envref.START}\nNEW\n{envref.END}")
    assert new == f"# Title\n\nbefore\n{envref.START}\nNEW\n{envref.END}\nafter\n"
    assert envref.splice(envref.splice(doc)) == envref.splice(doc)  # idempotent


@pytest.mark.parametrize(
    "doc, message",
    [
        ("no markers here", "not found"),
        (f"{envref.START} only", "not found"),
        (f"{envref.END}\n{envref.START}", "comes before"),
        (f"{envref.START}{envref.END}{envref.START}{envref.END}", "more than once"),
    ],
)
def test_bad_markers_are_refused(doc: str, message: str) -> None:
    with pytest.raises(envref.EnvrefError, match=message):
        envref.splice(doc)


def test_cli_check_and_write(tmp_path: Path) -> None:
    doc = tmp_path / "DOC.md"
    doc.write_text(f"intro\n{envref.START}\nstale\n{envref.END}\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "relay.deploy.envref"]
    check = subprocess.run([*cmd, "--check", str(doc)], capture_output=True, text=True, cwd=REPO, check=False)
    assert check.returncode == 1 and "stale" in check.stderr
    write = subprocess.run([*cmd, "--write", str(doc)], capture_output=True, text=True, cwd=REPO, check=False)
    assert write.returncode == 0, write.stderr
    assert "`COMMANDER_URL`" in doc.read_text(encoding="utf-8")
    again = subprocess.run([*cmd, "--check", str(doc)], capture_output=True, text=True, cwd=REPO, check=False)
    assert again.returncode == 0, again.stderr
    missing = subprocess.run(
        [*cmd, "--check", str(tmp_path / "nope.md")], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert missing.returncode == 2 and "nope.md" in missing.stderr and "Traceback" not in missing.stderr


def test_readme_has_the_commander_settings_from_their_model() -> None:
    """relayctl serve's settings table is generated from CommanderConfig: every setting, its flag and variable."""
    from relay.commander.config import reference_rows, settings

    text = README.read_text(encoding="utf-8")
    assert envref.COMMANDER_START in text and envref.COMMANDER_END in text
    block = text[text.index(envref.COMMANDER_START) : text.index(envref.COMMANDER_END)]
    rows = [ln for ln in block.splitlines() if ln.startswith("| `") or ln.startswith("| - |")]
    assert len(rows) == len(reference_rows()) == len(list(settings()))
    for row in reference_rows():
        assert row["description"], row
        assert any(
            (f"`{row['flag']}`" in ln if row["flag"] else ln.startswith("| - |"))
            and (f"`{row['env']}`" in ln if row["env"] else " | - | " in ln)
            for ln in rows
        ), row
    for var in ("RELAY_STATE", "RELAY_LEASE_TTL", "RELAY_SHARED_SECRET", "RELAY_CALLBACK_INTERVAL_S"):
        assert f"`{var}`" in block, var
    stale = text.replace(block, f"{envref.COMMANDER_START}\nold\n")
    assert not envref.is_current(stale)  # a stale commander block fails the check too
