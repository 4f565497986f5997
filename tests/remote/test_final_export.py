"""The run's final export on both remotes: sealed with a manifest, published in one fenced commit under
``<run_id>/final/``, loadable with ``from_pretrained(..., subfolder="<run_id>/final")``, and pulled by
``relayctl pull`` verified file by file (a corrupted copy is refused)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay.ckpt import RunLayout
from relay.ckpt.final import seal_final
from relay.remote import RemoteFencedError
from relay_testkit.tiny_model import build_tiny_model
from tests.ckpt.util import REPO_ROOT, make_committed
from tests.remote.conftest import REPO, Backend

RUN = "run1"


@pytest.fixture(scope="module")
def model_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model saved as a trainer's final export would be: weights, config, tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("export") / "model")


def export_dir(tmp_path: Path, model_src: Path, name: str = "final") -> Path:
    dest = tmp_path / name
    shutil.copytree(model_src, dest)
    return dest


def relayctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**__import__("os").environ, **(env or {})},
    )


def remote_url(backend: Backend, tmp_path: Path) -> tuple[str, dict[str, str]]:
    if backend.hub is None:
        return (tmp_path / "remote").as_uri(), {}
    return f"hf://{REPO}", {**backend.hub.env(), "HF_TOKEN": "test-token"}


def test_final_export_published_fenced_loaded_and_pulled(
    backend: Backend, tmp_path: Path, model_src: Path
) -> None:
    layout = RunLayout(tmp_path / "vol", RUN)
    ckpt = make_committed(
        layout, 40, {"model.safetensors": (model_src / "model.safetensors").read_bytes()}, epoch=3
    )
    remote = backend.make()
    remote.push(ckpt, epoch=3)
    export = seal_final(export_dir(tmp_path, model_src), run_id=RUN, step=40, epoch=3)
    manifest = json.loads((export.path / "manifest.json").read_text())
    assert manifest["source"] == "final" and manifest["step"] == 40 and manifest["epoch"] == 3

    with pytest.raises(RemoteFencedError):  # an older lease holder never publishes the deliverable
        remote.push_final(export, epoch=2)
    result = remote.push_final(export, epoch=3)
    assert not result.noop
    assert result.files_skipped >= 1  # the weights are the last checkpoint's: sent as a reference
    assert remote.push_final(export, epoch=3).noop  # the same export again: nothing to do

    url, env = remote_url(backend, tmp_path)
    # users load it as any export, from the remote itself
    code = (
        "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "kw = dict(subfolder=sys.argv[2], token=sys.argv[3] or None)\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], **kw); AutoTokenizer.from_pretrained(sys.argv[1], **kw)\n"
        "print(sum(float(p.double().sum()) for p in m.parameters()))"
    )
    where = str(tmp_path / "remote") if backend.hub is None else REPO
    token = "" if backend.hub is None else "test-token"
    r = subprocess.run(
        [sys.executable, "-c", code, where, f"{RUN}/final", token],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, **env, "HF_HUB_OFFLINE": "0"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    local = AutoModelForCausalLM.from_pretrained(model_src)
    assert float(r.stdout.strip().splitlines()[-1]) == pytest.approx(
        sum(float(p.detach().double().sum()) for p in local.parameters())
    )

    # relayctl pull --final: every byte checked against the manifest
    dest = tmp_path / "pulled"
    r = relayctl("pull", RUN, str(dest), "--final", "--remote", url, env=env)
    assert r.returncode == 0, r.stderr
    assert f"pulled the final export of run {RUN} (step 40, epoch 3" in r.stdout
    for f in manifest["files"]:
        assert (dest / f["path"]).read_bytes() == (export.path / f["path"]).read_bytes()

    # ... and a checkpoint, by step or the newest by default
    r = relayctl("pull", RUN, str(tmp_path / "ck"), "--remote", url, env=env)
    assert r.returncode == 0 and "checkpoint step 40" in r.stdout, r.stderr
    r = relayctl("pull", RUN, str(tmp_path / "nope"), "--step", "7", "--remote", url, env=env)
    assert r.returncode == 1 and "no checkpoint step 7 of run run1" in r.stderr, r.stderr

    # a corrupted remote copy is refused, and nothing appears at DEST
    corrupt_final(backend, tmp_path, "config.json")
    bad = tmp_path / "bad"
    r = relayctl("pull", RUN, str(bad), "--final", "--remote", url, env=env)
    assert r.returncode == 1, r.stdout
    assert "does not verify" in r.stderr and "config.json" in r.stderr and "Traceback" not in r.stderr
    assert not bad.exists() and not list(tmp_path.glob(".relay-pull-*"))


def corrupt_final(backend: Backend, tmp_path: Path, rel: str) -> None:
    if backend.hub is None:
        p = tmp_path / "remote" / RUN / "final" / rel
        data = p.read_bytes()
        p.unlink()
        p.write_bytes(data.replace(b"{", b"[", 1))
        return
    path = f"{RUN}/final/{rel}"
    data = backend.hub.files(REPO)[path]
    backend.hub.put_file(REPO, path, data.replace(b"{", b"[", 1))


def test_a_new_final_export_replaces_the_old_one_whole(
    backend: Backend, tmp_path: Path, model_src: Path
) -> None:
    remote = backend.make()
    first = export_dir(tmp_path, model_src, "first")
    (first / "extra.txt").write_text("only in the first export")
    remote.push_final(seal_final(first, run_id=RUN, step=10, epoch=1), epoch=1)
    second = seal_final(export_dir(tmp_path, model_src, "second"), run_id=RUN, step=20, epoch=1)
    remote.push_final(second, epoch=1)
    url, env = remote_url(backend, tmp_path)
    dest = tmp_path / "pulled"
    r = relayctl("pull", RUN, str(dest), "--final", "--remote", url, env=env)
    assert r.returncode == 0 and "(step 20, epoch 1" in r.stdout, r.stderr
    assert not (dest / "extra.txt").exists()
    if backend.hub is not None:
        assert f"{RUN}/final/extra.txt" not in backend.hub.files(REPO)


def test_pull_usage_errors(tmp_path: Path) -> None:
    r = relayctl("pull", RUN, str(tmp_path / "d"), "--final", env={"RELAY_REMOTE": "", "HF_REPO": ""})
    assert r.returncode == 2 and "no remote" in r.stderr
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x").write_text("mine")
    r = relayctl("pull", RUN, str(occupied), "--remote", (tmp_path / "remote").as_uri())
    assert (
        r.returncode == 1 and "refusing to overwrite" in r.stderr and (occupied / "x").read_text() == "mine"
    )
    r = relayctl("pull", RUN, str(tmp_path / "d"), "--final", "--remote", (tmp_path / "remote").as_uri())
    assert r.returncode == 1 and "no final export of run run1" in r.stderr, r.stderr
    r = relayctl("pull", "bad id!", str(tmp_path / "d"), "--remote", (tmp_path / "remote").as_uri())
    assert r.returncode == 2 and "Traceback" not in r.stderr
