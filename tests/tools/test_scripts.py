"""tools/*.sh: shellcheck-clean; bootstrap says what it installs and shows pip's progress; the browser
installer is a no-op once chromium and chromedriver are there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = sorted((REPO / "tools").glob("*.sh"))

# Stands in for the interpreter so that bootstrap's own steps can be watched without installing
# gigabytes: `-m venv DIR` makes DIR/bin/python (this script); `-m pip ...` prints what pip prints.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "--version" ]; then echo "Python 3.11.2"; exit 0; fi
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi
echo "$*" >> "$CALLS"
echo "Collecting ${*: -1}"
echo "Successfully installed ${*: -1}"
"""


def test_shellcheck_passes() -> None:
    shellcheck = Path(sys.executable).with_name("shellcheck")
    result = subprocess.run([str(shellcheck), *map(str, TOOLS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bootstrap_says_what_it_does_and_passes_pips_progress_on(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / "calls.log"
    env = {**os.environ, "PYTHON": str(fake), "RELAY_VENV": str(tmp_path / "venv"), "CALLS": str(calls)}
    first = subprocess.run(
        ["bash", "tools/bootstrap.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert first.returncode == 0, first.stderr
    said = [line for line in first.stderr.splitlines() if line.startswith("bootstrap: ")]
    assert (
        said[0]
        == "bootstrap: creating the virtual environment " + str(tmp_path / "venv") + " (Python 3.11.2)"
    )
    assert any("installing torch==2.13.0 first" in line for line in said)
    assert any("installing relay-trainer with its train, deepspeed and test extras" in line for line in said)
    assert said[-1].startswith("bootstrap: " + str(tmp_path / "venv") + " is ready (")
    assert "Collecting torch==2.13.0" in first.stderr  # pip's own lines reach the terminal
    assert "Collecting .[train,deepspeed,test]" in first.stderr and first.stdout == ""
    pip_calls = calls.read_text().splitlines()
    assert len(pip_calls) == 3 and all("--progress-bar on" in c and " -q" not in c for c in pip_calls)
    again = subprocess.run(
        ["bash", "tools/bootstrap.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert (again.returncode, again.stderr, again.stdout) == (0, "", "")  # up to date: nothing to say
    assert len(calls.read_text().splitlines()) == 3


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")), reason="chromium is not installed here"
)
def test_the_browser_installer_does_nothing_once_chromium_is_there(tmp_path: Path) -> None:
    spy = tmp_path / "bin"
    spy.mkdir()
    (spy / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "apt.log"}\nexit 1\n')
    (spy / "apt-get").chmod(0o755)
    env = {**os.environ, "PATH": f"{spy}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "tools/install_browser.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not (tmp_path / "apt.log").exists()
