"""A training-safe host copy of what a checkpoint file holds: the only part of an async save that pauses
training (relay_inject.async_save writes the copy in the background).

Two shapes, one per serialiser the HF Trainer writes checkpoints with:

- ``copy_tree`` for ``torch.save`` objects (optimizer, scheduler, RNG states, ``.bin`` weights): the
  containers are rebuilt, every tensor *storage* is copied once (torch.save writes whole storages, so views
  that shared one still share one and the file holds the same bytes), everything else must be an immutable
  leaf or a numpy array;
- ``copy_tensors`` for ``safetensors.torch.save_file``: each (contiguous) tensor's own bytes.

Anything this cannot copy faithfully (a tensor subclass, a sparse or quantized tensor, a device other than
the CPU or CUDA, an arbitrary object) raises ``NotCopyable``: the caller then saves that file synchronously,
exactly as the Trainer would have, so a copy is either exact or not attempted.

Copies land in ``HostBuffers``: host memory kept from one save to the next (page-locked with
``cudaHostRegister`` when the state lives on a GPU, so device-to-host copies are DMA at full bandwidth and
are only enqueued here; ``Copy.ready()`` waits for them).  The pool holds exactly the buffers the last save
used, so what stays allocated is one checkpoint's worth of tensor bytes, which every save reports.  Before
the first save they can be reserved in the background (``reserve``) from the sizes the state has then.
"""

from __future__ import annotations

import copy as _copy
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Copy", "HostBuffers", "NotCopyable"]

_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size, range)


class NotCopyable(Exception):
    """The object holds something a host copy cannot reproduce exactly; save it synchronously."""


def _unregister(ptr: int) -> None:
    try:
        torch.cuda.cudart().cudaHostUnregister(ptr)
    except Exception:  # noqa: BLE001 - interpreter teardown: the process is going away anyway
        pass


class HostBuffers:
    """Host storages reused across saves, keyed by size; page-locked when ``pin`` (CUDA state)."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self.pin_error: str | None = None  # why pinning was given up, said once by the caller
        self._free: dict[int, list[torch.UntypedStorage]] = {}
        self._used: list[torch.UntypedStorage] = []
        self.allocated_bytes = 0  # newly allocated by the save in progress (0 once warm)

    def take(self, nbytes: int) -> torch.UntypedStorage:
        free = self._free.get(nbytes)
        if free:
            buf = free.pop()
        else:
            buf = self._allocate(nbytes)
            self.allocated_bytes += nbytes
        self._used.append(buf)
        return buf

    def reserve(self, sizes: list[int]) -> None:
        """Allocate (and touch, or page-lock) buffers of these sizes ahead of the first save, so that its
        pause is a warm one; the writer thread runs this after the first step (relay_inject.hf_save)."""
        for nbytes in sizes:
            buf = self._allocate(nbytes, touch=True)
            self._free.setdefault(nbytes, []).append(buf)

    def _allocate(self, nbytes: int, touch: bool = False) -> torch.UntypedStorage:
        holder = torch.empty(nbytes, dtype=torch.uint8)
        if touch and not self.pin:
            holder.zero_()  # fault the pages in now rather than during a copy (registering does it too)
        storage = holder.untyped_storage()
        if self.pin and nbytes:
            # cudaHostRegister on an exact-size allocation: torch's pinned allocator rounds every block up to
            # a power of two (up to twice the memory); registered memory is DMA-able all the same.
            ptr = storage.data_ptr()
            err = int(torch.cuda.cudart().cudaHostRegister(ptr, nbytes, 1))  # 1: portable
            if err == 0:
                weakref.finalize(storage, _unregister, ptr)
            else:
                self.pin, self.pin_error = False, f"cudaHostRegister failed with CUDA error {err}"
        return storage

    @property
    def held_bytes(self) -> int:
        """Host bytes this pool holds: the buffers of the save in progress and those kept for the next."""
        return sum(b.nbytes() for b in self._used) + sum(b.nbytes() for v in self._free.values() for b in v)

    def recycle(self) -> None:
        """The save's files are written: its buffers serve the next save; any others are released."""
        self._free = {}
        for buf in self._used:
            self._free.setdefault(buf.nbytes(), []).append(buf)
        self._used = []
        self.allocated_bytes = 0


@dataclass
class Copy:
    """One save's host copies: the buffers, and the CUDA events the copies wait on."""

    buffers: HostBuffers
    copied_bytes: int = 0
    _devices: set[int] = field(default_factory=set)
    _events: list[Any] = field(default_factory=list)

    # --- torch.save objects -------------------------------------------------------------------
    def copy_tree(self, obj: Any) -> Any:
        """``obj`` rebuilt with every tensor storage copied to host memory (views keep sharing one)."""
        return self._tree(obj, {})

    def _tree(self, obj: Any, storages: dict[tuple[str, int], torch.UntypedStorage]) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._tensor_via_storage(obj, storages)
        if isinstance(obj, _IMMUTABLE):
            return obj
        if isinstance(obj, dict):
            new = _copy.copy(obj)  # keeps the dict subclass (OrderedDict, defaultdict) and its attributes
            for key, value in obj.items():
                new[key] = self._tree(value, storages)
            return new
        if isinstance(obj, list):
            new_list = _copy.copy(obj)
            for i, value in enumerate(obj):
                new_list[i] = self._tree(value, storages)
            return new_list
        if isinstance(obj, tuple):
            items = [self._tree(value, storages) for value in obj]
            return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
        return _numpy_copy(obj)

    def _tensor_via_storage(
        self, t: torch.Tensor, storages: dict[tuple[str, int], torch.UntypedStorage]
    ) -> Any:
        self._check(t)
        src = t.untyped_storage()
        key = (str(t.device), src.data_ptr())
        dst = storages.get(key)
        if dst is None or dst.nbytes() != src.nbytes():
            dst = self.buffers.take(src.nbytes())
            if src.nbytes():
                self._enqueue(t.device)
                dst.copy_(src, non_blocking=t.device.type == "cuda")
            self.copied_bytes += src.nbytes()
            storages[key] = dst
        out = torch.empty(0, dtype=t.dtype).set_(dst, t.storage_offset(), t.size(), t.stride())
        if type(t) is torch.nn.Parameter:
            return torch.nn.Parameter(out, requires_grad=t.requires_grad)
        return out.requires_grad_(t.requires_grad) if t.requires_grad and out.is_floating_point() else out

    # --- safetensors dicts --------------------------------------------------------------------
    def copy_tensors(self, tensors: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Each tensor's own bytes, contiguous (what safetensors writes); shared storage is not copyable
        (safetensors refuses it, and must get the chance to say so in the caller's thread)."""
        seen: set[tuple[str, int]] = set()
        out: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise NotCopyable(f"{name} is not a tensor")
            self._check(t)
            if not t.is_contiguous():
                raise NotCopyable(f"{name} is not contiguous")
            key = (str(t.device), t.untyped_storage().data_ptr())
            if t.numel() and key in seen:
                raise NotCopyable(f"{name} shares memory with another tensor")
            seen.add(key)
            nbytes = t.numel() * t.element_size()
            buf = self.buffers.take(nbytes)
            dst = torch.empty(0, dtype=t.dtype).set_(buf, 0, t.size(), _contiguous_strides(t.size()))
            if nbytes:
                self._enqueue(t.device)
                dst.copy_(t.detach(), non_blocking=t.device.type == "cuda")
            self.copied_bytes += nbytes
            out[name] = dst
        return out

    # --- common -------------------------------------------------------------------------------
    def _check(self, t: torch.Tensor) -> None:
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            raise NotCopyable(f"tensor subclass {type(t).__name__}")
        if t.layout != torch.strided or t.is_quantized or t.device.type not in ("cpu", "cuda"):
            raise NotCopyable(f"a {t.layout} tensor on {t.device}")

    def _enqueue(self, device: torch.device) -> None:
        if device.type == "cuda":
            self._devices.add(device.index if device.index is not None else torch.cuda.current_device())

    def seal(self) -> None:
        """Mark the end of the copies: an event on the current stream of every device copied from.  The
        copies were enqueued on those streams, so training's next kernels run after them (it cannot
        overwrite what is being copied) and the host need not wait here."""
        for index in sorted(self._devices):
            with torch.cuda.device(index):
                event = torch.cuda.Event()
                event.record()
                self._events.append(event)

    def ready(self) -> None:
        """Block until every enqueued device-to-host copy has landed (the writer thread calls this)."""
        for event in self._events:
            event.synchronize()


def _contiguous_strides(size: torch.Size) -> tuple[int, ...]:
    strides, acc = [], 1
    for dim in reversed(size):
        strides.append(acc)
        acc *= max(int(dim), 1)
    return tuple(reversed(strides))


def _numpy_copy(obj: Any) -> Any:
    """numpy arrays (the RNG state) are copied; numpy scalars are immutable; nothing else is known."""
    module = type(obj).__module__
    if module == "numpy" or module.startswith("numpy."):
        import numpy as np

        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                raise NotCopyable("a numpy array of objects")
            return obj.copy()
        if isinstance(obj, np.generic):
            return obj
    raise NotCopyable(f"an object of type {type(obj).__qualname__}")
