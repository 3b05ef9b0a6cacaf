"""Shared helpers for the foundation scenario's testinfra checks.

Cluster-level facts come from the controller side: Patroni's REST API and
PostgreSQL through the load balancer, reached on the scenario's own docker
network, verified with the CA the scenario created.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import testinfra

INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
EPHEMERAL = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "")


def get_host(name: str) -> Any:
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=INVENTORY)


@pytest.fixture(scope="session")
def hostvars() -> dict[str, Any]:
    return get_host("mol-db1").ansible.get_variables()


@pytest.fixture(scope="session")
def tls() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=os.path.join(EPHEMERAL, "pki", "ca.crt"))


@pytest.fixture(scope="session")
def addresses() -> dict[str, str]:
    return {
        name: get_host(name).ansible.get_variables()["neurondb_address"]
        for name in ("mol-db1", "mol-db2", "mol-db3", "mol-lb1", "mol-app1", "mol-app2")
    }


@pytest.fixture
def patroni_cluster(addresses: dict[str, str], tls: ssl.SSLContext) -> Callable[[], dict[str, Any]]:
    def read() -> dict[str, Any]:
        url = f"https://{addresses['mol-db1']}:8008/cluster"
        with urllib.request.urlopen(url, context=tls, timeout=5) as response:
            return json.load(response)

    return read


@pytest.fixture
def connect(addresses: dict[str, str], hostvars: dict[str, Any]) -> Callable[..., psycopg.Connection]:
    def open_connection(host: str, port: int = 5432, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection:
        return psycopg.connect(
            host=addresses.get(host, host),
            port=port,
            dbname=dbname,
            user="postgres",
            password=hostvars["patroni_superuser_password"],
            sslmode="require",
            connect_timeout=5,
            autocommit=True,
            **kwargs,
        )

    return open_connection


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until predicate() is truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # any failure means "not yet"
            last_error = exc
        time.sleep(1)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")
