"""The README's print-*-command examples work when pasted, and a missing setting is never a surprise.

Each ``relayctl print-...`` command in the README's shell blocks is run as written (placeholders such as
``<cpu-server>`` filled in), with only what the README tells the reader to export beforehand. Without
those exports, every missing setting is named at once.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from relay.cli import main
from relay.deploy.workerenv import CALLER_ENV

README = Path(__file__).resolve().parents[2] / "README.md"
EXPORTED = ("RELAY_SHARED_SECRET", "HF_TOKEN")


def readme_commands() -> list[str]:
    """Every ``relayctl print-*`` command of the README's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("relayctl print-"):
                continue
            text = line
            while text.endswith("\\"):
                i += 1
                text = text[:-1] + lines[i].strip()
            commands.append(text.split(" | ")[0].rstrip(" |"))
    return commands


def argv_of(command: str) -> list[str]:
    """Fill the placeholders as a reader would: <cpu-server> -> cpu-server, <user>/<private_repo> -> user/private_repo."""
    return shlex.split(re.sub(r"<([a-z_-]+)>", r"\1", command))[1:]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (*CALLER_ENV, "RELAY_RUN_CONFIG", "WORKER_ID"):
        monkeypatch.delenv(key, raising=False)


def test_the_readme_tells_the_reader_to_export_the_secrets_first() -> None:
    text = README.read_text()
    for name in EXPORTED:
        assert re.search(rf"^export {name}=", text, re.M), name
    assert len(readme_commands()) >= 4  # lium, runpod (CLI and REST), docker


@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_print_command_works_when_pasted(command, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RELAY_SHARED_SECRET", "pasted-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_pasted")
    rc = main(argv_of(command))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "COMMANDER_URL=http://cpu-server:8080" in out or '"COMMANDER_URL": "http://cpu-server:8080"' in out


@pytest.mark.parametrize("command", readme_commands())
def test_without_the_exports_every_missing_setting_is_named_at_once(command, capsys) -> None:
    rc = main(argv_of(command))
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert lines[0].endswith("error: 2 problems:"), err
    assert lines[1].startswith("  - no Hugging Face token") and lines[2].startswith("  - no shared secret"), (
        err
    )


def test_a_printer_with_nothing_set_lists_all_it_needs(capsys) -> None:
    rc = main(["print-docker-command", "--image", "i", "--volume", "v", "--run-id", "../x", "--env", "NOEQ"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and "Traceback" not in err
    assert err.splitlines()[0] == "relayctl print-docker-command: error: 5 problems:", err
    for fragment in (
        "--run-id: ",
        "no commander: pass --commander-url",
        "no checkpoint remote",
        "no shared secret",
        "--env (no '='): expected KEY=VALUE",
    ):
        assert fragment in err, err
