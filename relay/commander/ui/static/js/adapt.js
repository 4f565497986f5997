// Where the run page gets a run's lease history and the pod/epoch of a log line.
//
// The commander's answers carry both (detail.leases: one entry per epoch; worker_id and epoch on every
// log line). For a run whose answer lacks them (an older commander), they are derived from the events
// and the metrics history: the same shape comes out either way, so nothing else on the page cares.

/** How a lease ended, as the timeline colours it. */
export const OUTCOMES = ["running", "preempted", "expired", "fenced", "failed", "completed", "cancelled", "unknown"];

const RELEASES = new Set(["preempted", "completed", "failed", "cancelled"]);

/**
 * One entry per epoch, oldest first:
 * {epoch, worker_id, granted_at, ended_at (null while held), outcome, first_step, last_step}.
 */
export function leaseHistory(detail) {
  if (Array.isArray(detail.leases)) return detail.leases.map(normalize);
  return deriveLeases(detail);
}

function normalize(lease) {
  return {
    epoch: lease.epoch,
    worker_id: lease.worker_id,
    granted_at: lease.granted_at,
    ended_at: lease.ended_at ?? null,
    outcome: lease.ended ?? (lease.ended_at == null ? "running" : "unknown"),
    first_step: lease.first_step ?? null,
    last_step: lease.last_step ?? null,
    fenced_at: lease.fenced_at ?? null, // its holder called after the lease had ended, and was refused
  };
}

/** The lease history as the events tell it: grants open a lease, releases and expiries close it. */
export function deriveLeases(detail) {
  const byEpoch = new Map();
  const events = [...(detail.events || [])].sort((a, b) => a.ts - b.ts);
  for (const ev of events) {
    if (ev.name === "acquired") {
      for (const open of byEpoch.values()) {
        if (open.ended_at === null) close(open, ev.ts, "fenced"); // a newer grant replaced it while live
      }
      byEpoch.set(ev.epoch, {
        epoch: ev.epoch, worker_id: ev.worker_id, granted_at: ev.ts, ended_at: null, outcome: "running",
        first_step: null, last_step: null, fenced_at: null,
      });
      continue;
    }
    const lease = byEpoch.get(ev.epoch);
    if (!lease || lease.ended_at !== null) continue;
    if (ev.name === "lease_expired") close(lease, ev.ts, "expired");
    else if (RELEASES.has(ev.name) && ev.worker_id) {
      const failed = (ev.message || "").startsWith("released as failed");
      close(lease, ev.ts, failed ? "failed" : ev.name);
    }
  }
  const leases = [...byEpoch.values()].sort((a, b) => a.epoch - b.epoch);
  const last = leases[leases.length - 1];
  if (last && last.ended_at === null && detail.holder !== last.worker_id) {
    close(last, detail.updated_at, "unknown");
  }
  for (const point of detail.metrics_history || []) {
    const lease = byEpoch.get(point.epoch);
    if (!lease) continue;
    lease.first_step = lease.first_step === null ? point.step : Math.min(lease.first_step, point.step);
    lease.last_step = lease.last_step === null ? point.step : Math.max(lease.last_step, point.step);
  }
  return leases;
}

function close(lease, ts, outcome) {
  lease.ended_at = ts;
  lease.outcome = outcome;
}

/** {worker_id, epoch} of a log line: its own fields, else the lease that held the run when it was written. */
export function lineOrigin(line, leases) {
  if (line.worker_id != null || line.epoch != null) {
    const lease = leases.find((l) => l.epoch === line.epoch);
    return { worker_id: line.worker_id ?? lease?.worker_id ?? null, epoch: line.epoch ?? null };
  }
  let found = null;
  for (const lease of leases) {
    if (lease.granted_at <= line.ts + 0.5) found = lease; // a worker's clock may lead the commander's a little
  }
  return found ? { worker_id: found.worker_id, epoch: found.epoch } : { worker_id: null, epoch: null };
}
