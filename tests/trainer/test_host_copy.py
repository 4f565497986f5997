"""The pieces of async checkpoints in one process (fast, no Trainer): the host copy, the capture of a
Trainer's writes, a failed background write, and the save-request reader."""

from __future__ import annotations

import collections
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import trainer_blackbox  # noqa: F401 - puts relay_inject on the path

# isort: split
from relay_inject.async_save import AsyncCheckpointer, AsyncSaveError
from relay_inject.hf_save import DEFERRED_METHODS
from relay_inject.host_copy import Copy, HostBuffers, NotCopyable
from relay_inject.save_request import SaveRequests


def test_a_host_copy_is_independent_of_the_live_state_and_keeps_its_shape() -> None:
    base = torch.arange(12, dtype=torch.float32)
    param = torch.nn.Parameter(torch.ones(3))
    live = {
        "state": collections.OrderedDict(w=base, view=base[2:5], step=torch.tensor(7.0)),
        "groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0, 1]}],
        "param": param,
        "numpy": ("MT19937", np.arange(4, dtype=np.uint32), 1, 0, 0.0),
    }
    copy = Copy(HostBuffers(pin=False))
    snap = copy.copy_tree(live)
    with torch.no_grad():
        base.add_(100)  # training goes on: in-place updates
        param.mul_(5)
    live["groups"][0]["lr"] = 9.9
    live["numpy"][1][:] = 0
    assert type(snap["state"]) is collections.OrderedDict
    assert torch.equal(snap["state"]["w"], torch.arange(12, dtype=torch.float32))
    view = snap["state"]["view"]  # still a view of the same (copied) storage, as torch.save writes it
    assert view.untyped_storage().data_ptr() == snap["state"]["w"].untyped_storage().data_ptr()
    assert view.storage_offset() == 2 and view.tolist() == [2.0, 3.0, 4.0]
    assert type(snap["param"]) is torch.nn.Parameter and snap["param"].tolist() == [1.0, 1.0, 1.0]
    assert snap["groups"][0]["lr"] == 0.1 and snap["groups"][0]["betas"] == (0.9, 0.99)
    assert snap["numpy"][1].tolist() == [0, 1, 2, 3]
    assert copy.copied_bytes == 12 * 4 + 4 + 3 * 4  # the shared storage once


def test_what_cannot_be_copied_exactly_is_refused() -> None:
    copy = Copy(HostBuffers(pin=False))
    with pytest.raises(NotCopyable):
        copy.copy_tree({"args": types.SimpleNamespace(lr=1)})
    with pytest.raises(NotCopyable):
        copy.copy_tree([torch.zeros(2).to_sparse()])
    base = torch.zeros(4, 4)
    with pytest.raises(NotCopyable):
        copy.copy_tensors({"t": base.t()})  # not contiguous: safetensors must say so itself
    with pytest.raises(NotCopyable):
        copy.copy_tensors({"a": base, "b": base})  # shared memory, likewise


def test_buffers_are_reused_and_the_pool_holds_one_save() -> None:
    buffers = HostBuffers(pin=False)
    first = Copy(buffers)
    first.copy_tensors({"a": torch.zeros(100), "b": torch.zeros(10)})
    assert buffers.allocated_bytes == 440 and buffers.held_bytes == 440
    ptrs = {b.data_ptr() for b in buffers._used}
    buffers.recycle()
    second = Copy(buffers)
    second.copy_tensors({"a": torch.ones(100)})
    assert buffers.allocated_bytes == 0 and {b.data_ptr() for b in buffers._used} <= ptrs
    buffers.recycle()
    assert buffers.held_bytes == 400  # a's buffer is kept for the next save, b's was released


def test_capture_defers_checkpoint_writes_and_nothing_else(tmp_path: Path) -> None:
    ckpt, elsewhere = tmp_path / "partial" / "checkpoint-3", tmp_path / "user"
    ckpt.mkdir(parents=True)
    elsewhere.mkdir()
    # a library that bound the function at import, as transformers.modeling_utils and peft do
    lib = types.ModuleType("fake_lib_with_alias")
    lib.safe_save_file = save_file
    sys.modules[lib.__name__] = lib
    weights = {"w": torch.arange(6, dtype=torch.float32)}
    saver = AsyncCheckpointer(pin=False)
    originals = (save_file, torch.save)  # locals: every module-level name for them is rebound in a capture
    try:
        with saver.capture(tmp_path / "partial", 3) as job:
            lib.safe_save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
            torch.save({"m": weights["w"]}, ckpt / "optimizer.pt")
            torch.save(types.SimpleNamespace(lr=1), ckpt / "training_args.bin")  # not copyable: saved now
            torch.save({"x": 1}, elsewhere / "own.pt")  # not the checkpoint: written as usual
            assert (lib.safe_save_file, torch.save) != originals  # rebound for the capture
        assert (lib.safe_save_file, torch.save) == originals  # and restored
        assert job.deferred == ["model.safetensors", "optimizer.pt"] and job.sync_files == [
            "training_args.bin"
        ]
        assert not (ckpt / "model.safetensors").exists() and (elsewhere / "own.pt").exists()
        weights["w"].add_(1)  # training goes on
        finished: list[int] = []
        saver.submit(lambda j: finished.append(j.step))
        saver.wait()
    finally:
        del sys.modules[lib.__name__]
    assert finished == [3]
    assert load_file(ckpt / "model.safetensors")["w"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert torch.load(ckpt / "optimizer.pt")["m"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_the_trainer_state_is_written_behind_training_as_it_was_at_the_save(tmp_path: Path) -> None:
    from transformers.trainer_callback import TrainerState

    ckpt, elsewhere = tmp_path / "partial" / "checkpoint-4", tmp_path / "user_state.json"
    ckpt.mkdir(parents=True)
    state = TrainerState(global_step=4, log_history=[{"loss": 2.5, "step": 4}])
    state.stateful_callbacks = {"TrainerControl": {"args": {"should_save": True}}}
    saver = AsyncCheckpointer(pin=False, deferred_methods=DEFERRED_METHODS)
    original = TrainerState.__dict__["save_to_json"]
    with saver.capture(tmp_path / "partial", 4) as job:
        state.save_to_json(str(ckpt / "trainer_state.json"))
        state.save_to_json(str(elsewhere))  # not the checkpoint: written as usual
        assert TrainerState.__dict__["save_to_json"] is not original
    assert TrainerState.__dict__["save_to_json"] is original
    assert job.deferred == ["trainer_state.json"] and elsewhere.exists()
    assert not (ckpt / "trainer_state.json").exists()
    state.global_step = 5  # training goes on: logs, and the callbacks' state changes
    state.log_history.append({"loss": 2.4, "step": 5})
    state.stateful_callbacks["TrainerControl"]["args"]["should_save"] = False
    saver.submit(lambda job: None)
    saver.wait()
    written = json.loads((ckpt / "trainer_state.json").read_text())
    assert written == json.loads(elsewhere.read_text())
    assert written["global_step"] == 4 and written["log_history"] == [{"loss": 2.5, "step": 4}]
    assert written["stateful_callbacks"]["TrainerControl"]["args"]["should_save"] is True


def test_a_failed_background_write_fails_the_next_save(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    saver = AsyncCheckpointer(pin=False)
    with saver.capture(tmp_path, 2):
        torch.save({"t": torch.zeros(3)}, ckpt / "optimizer.pt")
    ckpt.rmdir()  # the directory vanishes before the deferred write
    saver.submit(lambda job: None)
    with pytest.raises(AsyncSaveError, match="background write of the checkpoint of step 2 failed"):
        saver.wait()
    saver.wait()  # reported once


def test_save_requests_are_read_once_and_junk_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "req.json"
    reqs = SaveRequests.from_environ({"RELAY_SAVE_REQUEST_FILE": str(path)})
    assert not reqs.pending()  # no file: no request
    path.write_text("{not json")
    assert not reqs.pending()
    path.write_text(json.dumps({"id": 2, "reason": "save_every_s"}))
    assert reqs.pending() and not reqs.pending()
    tmp = tmp_path / "req.tmp"
    tmp.write_text(json.dumps({"id": 2, "reason": "save_every_s", "ts": 1.0}))
    os.replace(tmp, path)  # rewritten, same id: already handled
    assert not reqs.pending()
    tmp.write_text(json.dumps({"id": 3}))
    os.replace(tmp, path)
    assert reqs.pending()
    assert not SaveRequests.from_environ({}).pending()
