# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Options shared by the modules that talk to the Patroni REST API."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  api_url:
    description:
      - Base URLs of the Patroni REST API of the cluster members, for example V(https://db1:8008).
      - Reads are sent to each URL in turn until one answers, so list several members.
      - Actions (switchover, config change, restart) go to the leader, or to the member concerned. Its URL is taken
        from this list when an entry matches the member's advertised C(restapi.connect_address) (host and port) or
        its name (as host name); otherwise the advertised address is used.
    type: list
    elements: str
    required: true
  api_username:
    description:
      - User name for HTTP basic authentication (C(restapi.authentication.username) in Patroni).
      - Patroni requires it for unsafe methods (POST, PATCH, PUT, DELETE) when authentication is configured.
    type: str
  api_password:
    description:
      - Password for HTTP basic authentication.
    type: str
  ca_path:
    description:
      - PEM file with the CA certificate(s) used to verify the Patroni API's TLS certificate.
      - When not set, the system trust store is used.
    type: path
  client_cert:
    description:
      - PEM client certificate, for Patroni configured with C(restapi.verify_client).
    type: path
  client_key:
    description:
      - PEM private key of O(client_cert), when not included in that file.
    type: path
  validate_certs:
    description:
      - Whether to verify the Patroni API's TLS certificate. Only disable this on a lab.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for one HTTP answer.
      - Calls that Patroni answers only when done (switchover, restart) get a longer timeout derived from the
        cluster's C(loop_wait) or the module's own wait options.
    type: int
    default: 10
  retries:
    description:
      - How many more times to try after a connection error (refused, DNS, TLS handshake, timeout on reads).
      - HTTP error answers are not retried, except 5xx answers to reads, which move on to the next member.
      - An action whose request may have reached Patroni without an answer coming back is never re-sent; the
        module inspects the cluster instead.
    type: int
    default: 3
  use_proxy:
    description:
      - Whether to honour the C(http_proxy)/C(https_proxy)/C(no_proxy) environment variables.
    type: bool
    default: true
notes:
  - Requests are made from the host the task runs on (usually with C(delegate_to) or C(run_once) on the controller),
    using Python's standard library through C(ansible.module_utils.urls); no extra Python package is needed.
"""
