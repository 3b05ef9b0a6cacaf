"""Turn a write probe's record into recovery figures (RTO, RPO, timeline).

RTO is measured on the probe's own clock, so clock offsets between hosts do
not matter: it is the longest gap between two consecutive acknowledged
writes ending after the fault (the client-visible write outage). RPO counts acknowledged ids
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
    # A fault may bite late (a graceful stop first checkpoints), so the outage
    # is the longest gap between consecutive acknowledged writes that ends
    # after the fault, not the time from the fault itself.
    outage_start = outage_end = None
    previous = None
    for ack in acks:
        if (
            previous is not None
            and ack[2] > fault_at
            and (outage_start is None or ack[2] - previous[2] > outage_end - outage_start)
        ):
            outage_start, outage_end = previous[2], ack[2]
        previous = ack
    recovered = outage_end is not None
    rto = round(outage_end - outage_start, 3) if recovered else None
    failed_after = [f for f in failures if f[1] >= fault_at]
    present = set(int(i) for i in present_ids)
    lost = sorted(int(a[0]) for a in acks if int(a[0]) not in present)
    errors: dict[str, int] = {}
    for failure in failed_after:
        key = str(failure[2]).split(":", maxsplit=1)[0]
        errors[key] = errors.get(key, 0) + 1
    return {
        "attempts": summary["attempts"],
        "acked": summary["acked"],
        "failed_attempts": len(failures),
        "failed_attempts_after_fault": len(failed_after),
        "error_kinds": errors,
        "last_ack_before_outage": outage_start,
        "first_ack_after_outage": outage_end,
        "rto_seconds": rto,
        "recovered": recovered,
        "lost_writes": len(lost),
        "lost_ids": lost[:50],
        "first_failure": failed_after[0][1] if failed_after else None,
        "last_failure": failed_after[-1][1] if failed_after else None,
    }


class FilterModule:
    """Drill filters for neurondb.ha."""

    def filters(self) -> dict[str, Any]:
        return {"drill_figures": drill_figures}
