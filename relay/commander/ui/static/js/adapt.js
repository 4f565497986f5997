// Where the run page gets a run's lease history and the pod/epoch of a log line: both straight from the
// commander (detail.leases, one entry per epoch; worker_id and epoch on every log line), put into the one
// shape the timeline, the charts and the log tail read.

/** How a lease ended, as the timeline colours it (the commander's LeaseEnd values). */
export const OUTCOMES = ["running", "preempted", "expired", "fenced", "failed", "completed", "cancelled"];

/**
 * One entry per epoch, oldest first:
 * {epoch, worker_id, granted_at, ended_at (null while held), outcome, first_step, last_step, fenced_at}.
 */
export function leaseHistory(detail) {
  return (detail.leases || []).map((lease) => ({
    epoch: lease.epoch,
    worker_id: lease.worker_id,
    granted_at: lease.granted_at,
    ended_at: lease.ended_at ?? null,
    outcome: lease.ended,
    first_step: lease.first_step ?? null,
    last_step: lease.last_step ?? null,
    fenced_at: lease.fenced_at ?? null, // its holder called after the lease had ended, and was refused
  }));
}

/** {worker_id, epoch} of a log line: the pod and lease epoch the commander stored it with. */
export function lineOrigin(line) {
  return { worker_id: line.worker_id ?? null, epoch: line.epoch ?? null };
}
