"""The lease timing rule: TTL, renew interval, safety margin and kill grace, checked as one unit.

The promise is that a fenced-off trainer is dead before anyone else may be granted its run.  The
worst case, on the worker's clock (``CLOCK_MONOTONIC``):

- the last successful renewal was *sent* at ``s``.  The commander handled it at ``h >= s`` and
  keeps the lease until ``h + ttl``, so nobody else can be granted the run before ``s + ttl``;
- the worker's deadline is ``s + ttl - margin``.  There the guard (and the in-process deadman)
  SIGTERMs the trainer's process group, and SIGKILLs it ``kill_grace_s`` later;
- the guard wakes and the kernel delivers the signals within :data:`SCHEDULING_SLACK_S` on a
  loaded machine, and the commander's clock may run slower than the worker's by up to
  :data:`CLOCK_DRIFT` (500 ppm, the most NTP ever slews a clock) of the TTL.

So the trainer is dead by ``s + ttl - margin + kill_grace_s + slack + drift * ttl``, before
``s + ttl`` when::

    margin >= kill_grace_s + SCHEDULING_SLACK_S + CLOCK_DRIFT * ttl

And for a healthy worker not to fence itself on one lost renewal, two renewals must fit before its
deadline::

    ttl - margin >= 2 * renew_interval

The worker checks what it knows at start (margin and kill grace: exit 2 on a bad pair) and the
rest when it is granted a lease (the commander decides the TTL and the renew interval): an unsafe
grant is handed back at once, nothing is trained.  Each refusal names the value to change.
"""

from __future__ import annotations

#: the guard's wake-up and the kernel's signal delivery on a loaded machine
SCHEDULING_SLACK_S = 0.25
#: how much faster one machine's clock may run than another's (NTP slews at most 500 ppm)
CLOCK_DRIFT = 0.0005
#: renewals that must fit between two grants' worth of silence and the self-fence
RENEWALS_IN_WINDOW = 2


def required_margin_s(kill_grace_s: float, ttl_s: float = 0.0) -> float:
    """The smallest safety margin that gets the trainer killed before a lease of ``ttl_s`` ends."""
    return kill_grace_s + SCHEDULING_SLACK_S + CLOCK_DRIFT * ttl_s


def margin_problem(margin_s: float, kill_grace_s: float) -> str | None:
    """What is wrong with the worker's margin for its kill grace (None: nothing), as the text after
    ``renew_safety_margin_s: ``. Checked before anything is acquired."""
    need = required_margin_s(kill_grace_s)
    if margin_s >= need:
        return None
    lower = margin_s - SCHEDULING_SLACK_S
    alternative = f", or lower KILL_GRACE_S to {lower:g} or less" if lower > 0 else ""
    return (
        f"{margin_s:g}s must be at least kill_grace_s ({kill_grace_s:g}s) + "
        f"{SCHEDULING_SLACK_S:g}s, so a fenced trainer is dead before its lease can end: raise "
        f"RENEW_SAFETY_MARGIN_S to {need:g} or more{alternative}"
    )


def lease_problem(ttl_s: float, renew_interval_s: float, margin_s: float, kill_grace_s: float) -> str | None:
    """What is wrong with a grant's TTL and renew interval for this worker's margin and kill grace."""
    need = required_margin_s(kill_grace_s, ttl_s)
    if margin_s < need:
        return (
            f"the commander's lease TTL ({ttl_s:g}s) needs renew_safety_margin_s >= {need:.3g}s "
            f"(kill_grace_s {kill_grace_s:g}s + {SCHEDULING_SLACK_S:g}s + {CLOCK_DRIFT:g} x TTL), this worker "
            f"has {margin_s:g}s: raise RENEW_SAFETY_MARGIN_S or lower KILL_GRACE_S"
        )
    window = ttl_s - margin_s
    if window < RENEWALS_IN_WINDOW * renew_interval_s:
        # the commander renews every third of its TTL: ttl - margin >= 2 * ttl / 3  <=>  ttl >= 3 * margin
        min_ttl = (RENEWALS_IN_WINDOW + 1) * margin_s
        return (
            f"the commander's lease TTL ({ttl_s:g}s, renewed every {renew_interval_s:g}s) leaves "
            f"{window:g}s between a renewal and this worker's self-fence (renew_safety_margin_s "
            f"{margin_s:g}s); {RENEWALS_IN_WINDOW} renewals must fit: raise the commander's --lease-ttl "
            f"to {min_ttl:g}s or more (it renews every third of its TTL) or lower "
            f"RENEW_SAFETY_MARGIN_S to {ttl_s - RENEWALS_IN_WINDOW * renew_interval_s:g}s or less"
        )
    return None
