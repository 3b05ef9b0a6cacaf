"""Filters that turn the inventory into the addresses and URLs the stack uses.

Every role needs "the address other hosts reach this host on". It is
`neurondb_address` when the inventory sets it (needed where the Ansible
connection is not the cluster network, e.g. the docker connection in the lab),
otherwise the host's default IPv4 address from facts.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError


def node_address(host: str, hostvars: Any) -> str:
    """Address of `host` on the cluster network."""
    try:
        hvars = hostvars[host]
    except KeyError as exc:
        raise AnsibleFilterError(f"node_address: {host!r} is not in the inventory") from exc
    explicit = hvars.get("neurondb_address")
    if explicit:
        return str(explicit)
    facts = hvars.get("ansible_facts") or {}
    ipv4 = (facts.get("default_ipv4") or {}).get("address") or hvars.get("ansible_default_ipv4", {}).get("address")
    if not ipv4:
        raise AnsibleFilterError(
            f"node_address: no address for {host!r}: set neurondb_address in the inventory or gather facts first"
        )
    return str(ipv4)


def node_addresses(hosts: list[str], hostvars: Any) -> list[str]:
    """Addresses of several hosts, in inventory order."""
    return [node_address(h, hostvars) for h in hosts]


def join_host_port(hosts: list[str], hostvars: Any, port: int | str, scheme: str = "") -> list[str]:
    """`scheme://address:port` (or `address:port`) for each host."""
    prefix = f"{scheme}://" if scheme else ""
    return [f"{prefix}{node_address(h, hostvars)}:{port}" for h in hosts]


class FilterModule:
    """Topology filters for neurondb.ha."""

    def filters(self) -> dict[str, Any]:
        return {
            "node_address": node_address,
            "node_addresses": node_addresses,
            "join_host_port": join_host_port,
        }
