"""Turn a write probe's record into recovery figures (RTO, RPO, timeline).

RTO is measured on the probe's own clock, so clock offsets between hosts do
not matter: it is the gap between the last acknowledged write before the
fault and the first acknowledged write after it. RPO counts acknowledged ids
that are missing from the database afterwards.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError


def drill_figures(summary: dict[str, Any], fault_at: float, present_ids: list[int]) -> dict[str, Any]:
    """Figures of one drill run.

    summary: the probe's JSON summary; fault_at: the fault's injection time
    (epoch seconds, probe host clock); present_ids: ids of the run found in
    the table after healing.
    """
    try:
        acks = sorted(summary["acks"], key=lambda a: a[2])  # [id, sent, acked]
        failures = summary["failures"]  # [id, sent, error]
    except (KeyError, TypeError) as exc:
        raise AnsibleFilterError(f"drill_figures: not a probe summary: {exc}") from exc
    fault_at = float(fault_at)
    before = [a for a in acks if a[2] <= fault_at]
    after = [a for a in acks if a[2] > fault_at]
    last_before = before[-1][2] if before else None
    # The outage ends with the first write after the fault whose attempt was
    # sent after the fault too (an attempt in flight at the fault that still
    # committed does not prove recovery).
    first_after = next((a[2] for a in after if a[1] >= fault_at), None)
    rto = round(first_after - last_before, 3) if first_after is not None and last_before is not None else None
    failed_after = [f for f in failures if f[1] >= (last_before or fault_at)]
    present = set(int(i) for i in present_ids)
    lost = sorted(int(a[0]) for a in acks if int(a[0]) not in present)
    errors: dict[str, int] = {}
    for failure in failed_after:
        key = str(failure[2]).split(":")[0]
        errors[key] = errors.get(key, 0) + 1
    return {
        "attempts": summary["attempts"],
        "acked": summary["acked"],
        "failed_attempts": len(failures),
        "failed_attempts_after_fault": len(failed_after),
        "error_kinds": errors,
        "last_ack_before_fault": last_before,
        "first_ack_after_fault": first_after,
        "rto_seconds": rto,
        "recovered": first_after is not None,
        "lost_writes": len(lost),
        "lost_ids": lost[:50],
        "first_failure": failed_after[0][1] if failed_after else None,
        "last_failure": failed_after[-1][1] if failed_after else None,
    }


class FilterModule:
    """Drill filters for neurondb.ha."""

    def filters(self) -> dict[str, Any]:
        return {"drill_figures": drill_figures}
