"""Build DeepSpeed's JIT op that the CPU trainer tests load (its shared-memory collectives), before the
tests start: ``python -m relay_testkit.deepspeed_ops``.

DeepSpeed builds it on first use, in whichever trainer starts first, which then spends a minute of CPU
compiling instead of training while a test waits on it.  ``tools/test.sh`` builds it once here, as
set-up, into ``$TORCH_EXTENSIONS_DIR`` (cached with the checkout); a build that is already there is only
loaded.  A failure is said and is not fatal: the tests then build it themselves.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    started = time.monotonic()
    try:
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

        ShareMemCommBuilder().load(verbose=False)
    except Exception as exc:  # a missing compiler, an unusual platform: the tests will say more
        print(f"deepspeed ops: not prebuilt ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 0
    print(f"deepspeed ops: shm_comm ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
