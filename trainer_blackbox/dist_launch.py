"""torchrun for the built-in trainers, with the relay exit-code rule on SIGTERM.

``python -m trainer_blackbox.dist_launch <torchrun args>`` is torchrun (``torch.distributed.run``) run in
this process, so the pid the worker started is the elastic agent, which forwards SIGTERM to every rank
and waits ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds for them.  Plain torchrun then exits non-zero
(it re-raises the signal as an exception) even when every rank saved its checkpoint and exited 0; here a
SIGTERM shutdown exits 0, as the contract asks.  The checkpoint's COMPLETE marker, written only after
every rank saved, is what tells the worker the save succeeded.
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(argv if argv is not None else sys.argv[1:])
    except SignalException as exc:
        if exc.sigval == signal.SIGTERM:
            print("relay dist_launch: SIGTERM forwarded to every rank; ranks shut down, exit 0", flush=True)
            return 0
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
