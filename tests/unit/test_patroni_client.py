# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""PatroniClient against the fake cluster and deliberately broken servers."""

from __future__ import annotations

import socket
import threading
import time
import typing as t
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible_collections.neurondb.ha.plugins.module_utils.patroni import (
    PatroniClient,
    PatroniError,
    PatroniTimeoutError,
    wait_for_new_leader,
)
from fake_patroni import FakeCluster


def client_for(urls: t.List[str], **kwargs: t.Any) -> PatroniClient:
    kwargs.setdefault("username", "patroni")
    kwargs.setdefault("password", "s3cret")
    kwargs.setdefault("use_proxy", False)
    kwargs.setdefault("retry_delay", 0.05)
    kwargs.setdefault("retries", 1)
    return PatroniClient(urls, **kwargs)


def free_port() -> int:
    """A port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SilentServer:
    """Accepts connections and never answers: the request may have been processed."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.accepted = 0
        self.conns: t.List[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn = self.sock.accept()[0]
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


class Always503(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(503)

    def log_message(self, *args: t.Any) -> None:
        pass


@pytest.fixture
def broken_member() -> t.Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Always503)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# -- reads ---------------------------------------------------------------------------


def test_reads_fall_back_to_next_member_when_refused(fake_cluster: FakeCluster) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = client_for([dead, *fake_cluster.urls], retries=0)
    cluster = client.cluster()
    assert cluster["leader"] == "db1"
    assert [m["name"] for m in cluster["members"]] == ["db1", "db2", "db3"]
    # The first live member answered, nobody else was asked.
    assert [r[0] for r in fake_cluster.calls("GET", "/cluster")] == ["db1"]


def test_reads_move_on_after_5xx(fake_cluster: FakeCluster, broken_member: str) -> None:
    client = client_for([broken_member, fake_cluster.url("db2")], retries=0)
    assert client.config()["ttl"] == 30
    assert [r[0] for r in fake_cluster.calls("GET", "/config")] == ["db2"]


def test_reads_retry_until_member_comes_up() -> None:
    port = free_port()
    late = FakeCluster(names=("db9",), leader="db9")
    client = client_for([f"http://127.0.0.1:{port}"], retries=5, retry_delay=0.1)
    timer = threading.Timer(0.3, lambda: late.start(ports={"db9": port}))
    started = time.monotonic()
    timer.start()
    try:
        assert client.cluster()["leader"] == "db9"
    finally:
        timer.join()
        late.stop()
    assert time.monotonic() - started >= 0.25  # it was refused at first


def test_every_member_down_names_each_url_and_endpoint() -> None:
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    client = client_for(urls, retries=2, retry_delay=0.01)
    with pytest.raises(PatroniError) as caught:
        client.cluster()
    message = str(caught.value)
    assert "GET /cluster" in message
    assert "after 3 attempt(s)" in message
    for url in urls:
        assert f"{url}: connection refused" in message


def test_single_member_down_error_fields() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PatroniError) as caught:
        client_for([url], retries=0).get("/patroni", member="db7")
    err = caught.value
    assert (err.url, err.endpoint, err.method, err.status, err.member) == (url, "/patroni", "GET", None, "db7")
    assert err.reason == "connection refused"
    assert str(err) == f"Patroni API GET /patroni on member db7 ({url}) failed: connection refused"


def test_client_errors_are_not_retried(fake_cluster: FakeCluster) -> None:
    client = client_for(fake_cluster.urls, retries=3)
    with pytest.raises(PatroniError) as caught:
        client.get("/no-such-endpoint")
    assert caught.value.status == 404
    # One request to one member: a 404 would be the same everywhere.
    assert len(fake_cluster.calls("GET", "/no-such-endpoint")) == 1


def test_html_error_pages_are_reduced_to_their_message(fake_cluster: FakeCluster) -> None:
    fake_cluster.config = None  # Patroni: send_error(502) when DCS holds no config
    client = client_for([fake_cluster.url("db1")], retries=0)
    with pytest.raises(PatroniError) as caught:
        client.config()
    assert caught.value.status == 502
    assert caught.value.reason == "Bad Gateway"


def test_health_endpoint_statuses_can_be_accepted(fake_cluster: FakeCluster) -> None:
    client = client_for(fake_cluster.urls)
    assert client.get("/primary", url=fake_cluster.url("db1")).status == 200
    replica = client.get("/primary", url=fake_cluster.url("db2"), accept=(503,))
    assert replica.status == 503
    assert replica.json["role"] == "replica"


def test_silent_member_read_is_retried_then_times_out() -> None:
    silent = SilentServer()
    try:
        client = client_for([silent.url], retries=1, timeout=0.3, retry_delay=0.01)
        with pytest.raises(PatroniError) as caught:
            client.get("/cluster")
        assert "no answer within 0.3s" in caught.value.reason
        assert silent.accepted == 2  # GET is safe to repeat
    finally:
        silent.close()


# -- actions -------------------------------------------------------------------------


def test_action_without_answer_is_not_resent_and_flagged_unknown() -> None:
    silent = SilentServer()
    try:
        client = client_for([silent.url], retries=3, timeout=0.3)
        with pytest.raises(PatroniError) as caught:
            client.action("POST", "/switchover", {"leader": "db1"}, url=silent.url, member="db1")
        assert caught.value.outcome_unknown is True
        assert silent.accepted == 1
    finally:
        silent.close()


def test_action_refused_connection_is_retried_and_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = client_for([url], retries=2, retry_delay=0.01)
    started = time.monotonic()
    with pytest.raises(PatroniError) as caught:
        client.action("POST", "/restart", {}, url=url, member="db2")
    assert caught.value.outcome_unknown is False
    assert caught.value.reason == "connection refused"
    assert "POST /restart on member db2" in str(caught.value)
    assert time.monotonic() - started >= 0.03  # slept 0.01 + 0.02 between the 3 attempts


@pytest.mark.parametrize(
    ("password", "with_user", "reason"),
    [("wrong", True, "not authenticated"), (None, False, "no auth header received")],
)
def test_unsafe_methods_need_credentials(
    fake_cluster: FakeCluster, password: str | None, with_user: bool, reason: str
) -> None:
    client = client_for(fake_cluster.urls, username="patroni" if with_user else None, password=password, retries=3)
    with pytest.raises(PatroniError) as caught:
        client.action("PATCH", "/config", {"ttl": 40}, url=fake_cluster.url("db1"), member="db1")
    err = caught.value
    assert err.status == 401
    assert err.reason == f"{reason} (check api_username/api_password)"
    assert err.endpoint == "/config" and err.member == "db1"
    assert fake_cluster.config and fake_cluster.config["ttl"] == 30
    assert len(fake_cluster.calls("PATCH", "/config")) == 1  # HTTP errors are not retried


def test_precondition_failed_carries_patroni_reason(fake_cluster: FakeCluster) -> None:
    client = client_for(fake_cluster.urls)
    with pytest.raises(PatroniError) as caught:
        client.action("POST", "/switchover", {"leader": "db2", "candidate": "db3"}, url=fake_cluster.url("db1"))
    assert caught.value.status == 412
    assert caught.value.reason == "leader name does not match"
    assert fake_cluster.leader == "db1"


def test_successful_switchover_and_waiting_for_new_leader(fake_cluster: FakeCluster) -> None:
    client = client_for(fake_cluster.urls)
    resp = client.action(
        "POST", "/switchover", {"leader": "db1", "candidate": "db3"}, url=fake_cluster.url("db1"), timeout=5
    )
    assert resp.status == 200
    assert resp.message == 'Successfully switched over to "db3"'
    cluster, leader, waited = wait_for_new_leader(client, "db1", timeout=5, interval=0.05, min_timeline=4)
    assert leader["name"] == "db3" and leader["timeline"] == 4 and leader["state"] == "running"
    assert cluster["leader"] == "db3"
    assert waited >= 0
    assert client.history()[-1]["new_leader"] == "db3"


def test_wait_for_new_leader_times_out_with_last_seen_state(fake_cluster: FakeCluster) -> None:
    client = client_for(fake_cluster.urls)
    with pytest.raises(PatroniTimeoutError) as caught:
        wait_for_new_leader(client, "db1", timeout=0.3, interval=0.1)
    assert "a new running leader other than db1" in caught.value.reason
    assert "db1 leader running tl=3" in caught.value.reason


# -- TLS -----------------------------------------------------------------------------

cryptography = pytest.importorskip("cryptography")


def _make_cert(tmp_path: t.Any, name: str, issuer: t.Any = None, ca: bool = False) -> t.Dict[str, t.Any]:
    """Certificate and key signed by ``issuer`` (a _make_cert result), self-signed without; written as PEM."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = (issuer["cert"], issuer["key"]) if issuer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if issuer_cert:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return {"cert": cert, "key": key, "cert_path": str(cert_path), "key_path": str(key_path)}


@pytest.fixture
def tls_cluster(tmp_path: t.Any) -> t.Iterator[t.Dict[str, t.Any]]:
    """db1 behind TLS with a certificate from a private CA, requiring client certificates."""
    import ssl

    ca = _make_cert(tmp_path, "ca", ca=True)
    server_cert = _make_cert(tmp_path, "server", issuer=ca)
    client_cert = _make_cert(tmp_path, "client", issuer=ca)
    cluster = FakeCluster(names=("db1",)).start()
    server = cluster.members["db1"].server
    assert server is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca["cert_path"])
    context.load_cert_chain(server_cert["cert_path"], server_cert["key_path"])
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield {
        "port": cluster.members["db1"].port,
        "ca_path": ca["cert_path"],
        "client_cert": client_cert["cert_path"],
        "client_key": client_cert["key_path"],
    }
    cluster.stop()


def test_tls_with_ca_and_client_certificate(tls_cluster: t.Dict[str, t.Any]) -> None:
    url = f"https://localhost:{tls_cluster['port']}"
    client = client_for(
        [url],
        ca_path=tls_cluster["ca_path"],
        client_cert=tls_cluster["client_cert"],
        client_key=tls_cluster["client_key"],
    )
    assert client.cluster()["leader"] == "db1"


def test_tls_unknown_ca_is_rejected_unless_validation_is_off(tls_cluster: t.Dict[str, t.Any]) -> None:
    url = f"https://127.0.0.1:{tls_cluster['port']}"
    cert = {"client_cert": tls_cluster["client_cert"], "client_key": tls_cluster["client_key"]}
    client = client_for([url], retries=0, **cert)
    with pytest.raises(PatroniError) as caught:
        client.cluster()
    assert "TLS certificate verification failed" in caught.value.reason
    lax = client_for([url], validate_certs=False, **cert)
    assert lax.cluster()["leader"] == "db1"


def test_tls_without_client_certificate_fails(tls_cluster: t.Dict[str, t.Any]) -> None:
    url = f"https://localhost:{tls_cluster['port']}"
    client = client_for([url], ca_path=tls_cluster["ca_path"], retries=0)
    with pytest.raises(PatroniError) as caught:
        client.cluster()
    assert caught.value.url == url
    assert caught.value.status is None
    assert caught.value.reason.startswith("TLS error (")
    # Rejected at the TLS layer: Patroni never saw the request, whatever TLS version.
    with pytest.raises(PatroniError) as caught:
        client.action("POST", "/restart", {}, url=url)
    assert caught.value.outcome_unknown is False


def test_unreadable_client_certificate_fails_early(tmp_path: t.Any) -> None:
    with pytest.raises(OSError):
        client_for(["https://db1:8008"], client_cert=str(tmp_path / "missing.pem"))
