# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Patroni REST API client shared by the neurondb.ha modules.

Everything goes through ``ansible.module_utils.urls`` so the modules need no
third-party HTTP library on the target.

Error semantics matter more than usual here, because the callers change who
is primary:

* Reads (``GET``) try every configured member in turn and retry whole passes
  on transport errors and 5xx answers; a 4xx answer is raised at once, since
  every member would give the same one.
* Actions (``POST``/``PATCH``/``DELETE``) go to one member only. They are
  retried only when the request certainly never reached Patroni (connection
  refused, DNS, TLS handshake). When the request may have been processed but
  the answer was lost (read timeout, reset), :class:`PatroniError` is raised
  with ``outcome_unknown=True`` so the caller can look at the cluster instead
  of blindly sending a second switchover.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
import typing as t
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from ansible.module_utils.urls import Request, make_context

Member = t.Dict[str, t.Any]
Cluster = t.Dict[str, t.Any]

LEADER_ROLES = ("leader", "standby_leader")
REPLICA_ROLES = ("replica", "sync_standby", "quorum_standby")

# Patroni's built-in defaults, used when a key is absent from the DCS config.
DCS_DEFAULTS: t.Dict[str, t.Any] = {
    "ttl": 30,
    "loop_wait": 10,
    "retry_timeout": 10,
    "maximum_lag_on_failover": 1048576,
    "synchronous_mode": False,
}

_TRUE_STRINGS = ("true", "on", "yes", "1")


def patroni_argument_spec() -> t.Dict[str, t.Any]:
    """Options shared by every module talking to the Patroni REST API.

    Documented in the ``neurondb.ha.patroni`` doc fragment.
    """
    return dict(
        api_url=dict(type="list", elements="str", required=True),
        api_username=dict(type="str"),
        api_password=dict(type="str", no_log=True),
        ca_path=dict(type="path"),
        client_cert=dict(type="path"),
        client_key=dict(type="path", no_log=False),
        validate_certs=dict(type="bool", default=True),
        timeout=dict(type="int", default=10),
        retries=dict(type="int", default=3),
        use_proxy=dict(type="bool", default=True),
    )


# Keyword arguments for AnsibleModule that go with patroni_argument_spec().
PATRONI_REQUIRED_TOGETHER = [["api_username", "api_password"]]
PATRONI_REQUIRED_BY = {"client_key": "client_cert"}


class PatroniError(Exception):
    """A Patroni REST call failed.

    Carries which member (name and/or base URL), which endpoint, the HTTP
    status if one came back, and the reason: Patroni's own text from the
    response body when there is one, else the transport error.
    """

    def __init__(
        self,
        reason: str,
        *,
        url: str | None = None,
        endpoint: str | None = None,
        method: str | None = None,
        status: int | None = None,
        member: str | None = None,
        outcome_unknown: bool = False,
    ) -> None:
        self.reason = reason
        self.url = url
        self.endpoint = endpoint
        self.method = method
        self.status = status
        self.member = member
        self.outcome_unknown = outcome_unknown
        super().__init__(self._compose())

    def _compose(self) -> str:
        call = " ".join(p for p in (self.method, self.endpoint) if p) or "request"
        if self.member and self.url:
            where = f" on member {self.member} ({self.url})"
        elif self.member or self.url:
            where = f" on {self.member or self.url}"
        else:
            where = ""
        status = f"HTTP {self.status}: " if self.status else ""
        return f"Patroni API {call}{where} failed: {status}{self.reason}"

    def as_dict(self) -> t.Dict[str, t.Any]:
        """The error's fields, for inclusion in a module's failure result."""
        return dict(
            member=self.member,
            url=self.url,
            endpoint=self.endpoint,
            method=self.method,
            status=self.status,
            reason=self.reason,
            outcome_unknown=self.outcome_unknown,
        )


class PatroniTimeoutError(PatroniError):
    """Polling the cluster did not see the awaited state before the deadline."""


class PatroniResponse:
    """A 2xx (or explicitly accepted) answer from one member."""

    def __init__(self, status: int, text: str, url: str) -> None:
        self.status = status
        self.text = text
        self.url = url

    @property
    def json(self) -> t.Any:
        return json.loads(self.text)

    @property
    def message(self) -> str:
        """Patroni's plain-text answer, e.g. 'Successfully switched over to "db2"'."""
        return _reason_from_body(self.text) or ""


class _TransportError(Exception):
    """Internal: no HTTP answer. ``delivered`` says whether Patroni may have seen the request."""

    def __init__(self, reason: str, delivered: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered = delivered


def normalize_base_url(url: str) -> str:
    """``https://db1:8008/`` -> ``https://db1:8008``; also accepts a member's advertised ``.../patroni`` URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL of a Patroni REST API: {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def _reason_from_body(text: str) -> str:
    """Patroni answers errors in plain text, except those it sends through
    BaseHTTPRequestHandler.send_error (HTML page with 'Message: ...')."""
    text = (text or "").strip()
    if "<html" not in text.lower():
        return text
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("<p>Message:"):
            return line[len("<p>Message:") :].replace("</p>", "").strip().rstrip(".")
    return ""


def _describe_transport_error(exc: BaseException, timeout: float, delivered: bool) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name ({exc})"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout}s (timeout)" if delivered else f"cannot connect within {timeout}s (timeout)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message}); check ca_path or validate_certs"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc}); check ca_path, client_cert and client_key"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without an answer"
    return str(exc) or exc.__class__.__name__


def _rejected_by_tls(exc: BaseException) -> bool:
    """A TLS alert from the server (e.g. certificate required, TLS 1.3 sends it
    after the handshake) means the HTTP request was never processed."""
    return isinstance(exc, ssl.SSLError) and "ALERT" in str(getattr(exc, "reason", "") or "")


class PatroniClient:
    """Talks to the Patroni REST API of one cluster.

    ``urls`` are the members' API base URLs as configured by the user; reads
    try them in order.
    """

    def __init__(
        self,
        urls: t.Sequence[str],
        *,
        username: str | None = None,
        password: str | None = None,
        ca_path: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        validate_certs: bool = True,
        timeout: float = 10,
        retries: int = 3,
        use_proxy: bool = True,
        retry_delay: float = 1.0,
    ) -> None:
        if not urls:
            raise ValueError("at least one Patroni REST API URL is required")
        if retries < 0 or timeout <= 0:
            raise ValueError("retries must be >= 0 and timeout > 0")
        self.urls = [normalize_base_url(u) for u in urls]
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        # One TLS context for all calls: loads the CA bundle and client
        # certificate once, and fails early on unreadable files.
        context = make_context(
            cafile=ca_path,
            validate_certs=validate_certs,
            client_cert=client_cert,
            client_key=client_key,
        )
        self._request = Request(
            use_proxy=use_proxy,
            timeout=timeout,
            url_username=username,
            # Patroni checks the password only for unsafe methods, but always
            # sending it (force_basic_auth) avoids a 401 challenge round trip.
            url_password=password if username else None,
            force_basic_auth=bool(username),
            use_netrc=False,
            http_agent="neurondb.ha-patroni",
            context=context,
        )

    # -- transport -----------------------------------------------------------------

    def _send_once(self, method: str, base: str, endpoint: str, body: t.Any, timeout: float) -> PatroniResponse:
        url = base + endpoint
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            resp = self._request.open(method, url, data=data, headers=headers, timeout=timeout)
            return PatroniResponse(resp.status, resp.read().decode("utf-8", "replace"), url)
        except HTTPError as exc:
            try:
                text = exc.read().decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):  # the error body is best-effort only
                text = ""
            return PatroniResponse(exc.code, text, url)
        except URLError as exc:
            # urllib wraps failures of connect/TLS handshake/sending in
            # URLError; the response was not read yet, so Patroni did not act.
            reason = exc.reason if isinstance(exc.reason, BaseException) else URLError(exc.reason)
            raise _TransportError(_describe_transport_error(reason, timeout, False), delivered=False) from exc
        except (OSError, http.client.HTTPException) as exc:
            # Failures while waiting for/reading the answer: the request was
            # sent and may have been acted upon.
            delivered = not _rejected_by_tls(exc)
            raise _TransportError(_describe_transport_error(exc, timeout, delivered), delivered=delivered) from exc

    def _sleep_before(self, attempt: int) -> None:
        if attempt:
            time.sleep(self.retry_delay * attempt)

    # -- public calls ------------------------------------------------------------

    def get(
        self,
        endpoint: str,
        *,
        url: str | None = None,
        member: str | None = None,
        accept: t.Sequence[int] = (),
        retries: int | None = None,
    ) -> PatroniResponse:
        """GET from the given member, or from the first configured member that answers.

        ``accept`` lists non-2xx statuses to hand back instead of raising, for
        health checks such as ``/primary`` (200 or 503).
        """
        bases = [normalize_base_url(url)] if url else self.urls
        retries = self.retries if retries is None else retries
        last: t.Dict[str, PatroniError] = {}
        for attempt in range(retries + 1):
            self._sleep_before(attempt)
            for base in bases:
                try:
                    resp = self._send_once("GET", base, endpoint, None, self.timeout)
                except _TransportError as exc:
                    last[base] = PatroniError(exc.reason, url=base, endpoint=endpoint, method="GET", member=member)
                    continue
                if resp.status < 300 or resp.status in accept:
                    return resp
                err = self._http_error(resp, base, endpoint, "GET", member)
                if resp.status < 500:
                    raise err
                last[base] = err
        if len(last) == 1:
            raise next(iter(last.values()))
        detail = "; ".join(
            f"{base}: {f'HTTP {err.status}: ' if err.status else ''}{err.reason}" for base, err in last.items()
        )
        # The reason names every member's URL and error; no single url applies.
        raise PatroniError(
            f"no member answered after {retries + 1} attempt(s): {detail}", endpoint=endpoint, method="GET"
        )

    def action(
        self,
        method: str,
        endpoint: str,
        body: t.Any = None,
        *,
        url: str,
        member: str | None = None,
        timeout: float | None = None,
    ) -> PatroniResponse:
        """Send an unsafe request to one member; raise PatroniError unless it answers 2xx."""
        base = normalize_base_url(url)
        timeout = timeout or self.timeout
        for attempt in range(self.retries + 1):
            self._sleep_before(attempt)
            try:
                resp = self._send_once(method, base, endpoint, body, timeout)
            except _TransportError as exc:
                err = PatroniError(
                    exc.reason,
                    url=base,
                    endpoint=endpoint,
                    method=method,
                    member=member,
                    outcome_unknown=exc.delivered,
                )
                if exc.delivered or attempt == self.retries:
                    raise err from None
                continue
            if resp.status >= 300:
                raise self._http_error(resp, base, endpoint, method, member)
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _http_error(resp: PatroniResponse, base: str, endpoint: str, method: str, member: str | None) -> PatroniError:
        reason = _reason_from_body(resp.text) or http.client.responses.get(resp.status, "error")
        if resp.status == 401:
            reason += " (check api_username/api_password)"
        elif resp.status == 403:
            reason += " (Patroni restapi allowlist or client certificate)"
        return PatroniError(reason, url=base, endpoint=endpoint, method=method, status=resp.status, member=member)

    # -- convenience -------------------------------------------------------------

    def get_json(self, endpoint: str, **kwargs: t.Any) -> t.Any:
        resp = self.get(endpoint, **kwargs)
        try:
            return resp.json
        except ValueError:
            raise PatroniError(
                f"answer is not JSON: {resp.text[:200]!r}", url=resp.url, endpoint=endpoint, method="GET"
            ) from None

    def cluster(self, **kwargs: t.Any) -> Cluster:
        return parse_cluster(self.get_json("/cluster", **kwargs))

    def config(self, **kwargs: t.Any) -> t.Dict[str, t.Any]:
        data = self.get_json("/config", **kwargs)
        if not isinstance(data, dict):
            raise PatroniError("answer is not a JSON object", endpoint="/config", method="GET")
        return data

    def history(self, **kwargs: t.Any) -> t.List[t.Dict[str, t.Any]]:
        return parse_history(self.get_json("/history", **kwargs))

    def member_url(self, member: Member) -> str:
        """Base URL to reach ``member``'s REST API; see :func:`member_base_url`."""
        url = member_base_url(member, self.urls)
        if not url:
            raise PatroniError(
                "the member advertises no REST API URL (api_url) and none of api_url matches it",
                member=member.get("name"),
            )
        return url


def member_base_url(member: Member, configured: t.Sequence[str]) -> str | None:
    """Pick the URL to reach a member's API.

    Members advertise ``restapi.connect_address`` (often an IP address). When
    the user listed that member under another name (e.g. the host name in the
    TLS certificate), the user's URL wins: it matches on host and port, or on
    the member name as host name.
    """
    advertised = member.get("api_url")
    adv = urlsplit(advertised) if advertised else None
    for url in configured:
        parts = urlsplit(url)
        if adv and (parts.hostname, parts.port) == (adv.hostname, adv.port):
            return url
    name = member.get("name")
    for url in configured:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        named = bool(name) and name.lower() in (host, host.split(".")[0])
        if named and (not adv or adv.port in (None, parts.port)):
            return url
    return normalize_base_url(advertised) if advertised else None


# -- parsing -------------------------------------------------------------------


def parse_lag(value: t.Any) -> int | None:
    """Patroni reports lag as bytes (int) or the string 'unknown'."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def as_bool(value: t.Any) -> bool:
    """Tags come from YAML, so ``nofailover`` may be true, 'true', 'on'..."""
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_STRINGS
    return bool(value)


def normalize_member(raw: t.Dict[str, t.Any]) -> Member:
    """One entry of GET /cluster ``members`` in a stable shape.

    ``lag`` is the worst of Patroni's figures: ``replay_lag`` (Patroni 4,
    ≥ ``receive_lag``), else ``lag`` (WAL position of the member). It is 0
    for the leader and None when Patroni does not know it.
    """
    role = raw.get("role") or "unknown"
    tags = raw.get("tags") if isinstance(raw.get("tags"), dict) else {}
    is_leader = role in LEADER_ROLES
    receive_lag = parse_lag(raw.get("receive_lag"))
    replay_lag = parse_lag(raw.get("replay_lag"))
    plain_lag = parse_lag(raw.get("lag"))
    if is_leader:
        lag: int | None = 0
    else:
        known = [v for v in (plain_lag, receive_lag, replay_lag) if v is not None]
        lag = max(known) if known else None
    timeline = raw.get("timeline")
    try:
        priority = int(tags.get("failover_priority", 1))
    except (TypeError, ValueError):
        priority = 1
    return {
        "name": raw.get("name"),
        "role": role,
        "state": raw.get("state") or "unknown",
        "host": raw.get("host"),
        "port": raw.get("port"),
        "api_url": raw.get("api_url"),
        "timeline": timeline if isinstance(timeline, int) else None,
        "lag": lag,
        "receive_lag": 0 if is_leader else receive_lag,
        "replay_lag": 0 if is_leader else replay_lag,
        "lsn": raw.get("lsn") if raw.get("lsn") != "unknown" else None,
        "receive_lsn": raw.get("receive_lsn") if raw.get("receive_lsn") != "unknown" else None,
        "replay_lsn": raw.get("replay_lsn") if raw.get("replay_lsn") != "unknown" else None,
        "tags": tags,
        # failover_priority <= 0 (Patroni >= 3.2) excludes a member like nofailover.
        "nofailover": as_bool(tags.get("nofailover", False)) or priority <= 0,
        "failover_priority": priority,
        "pending_restart": bool(raw.get("pending_restart", False)),
        "pending_restart_reason": raw.get("pending_restart_reason") or {},
        "scheduled_restart": raw.get("scheduled_restart"),
        "is_leader": is_leader,
    }


def parse_cluster(data: t.Any) -> Cluster:
    """GET /cluster -> {scope, leader, members, paused, scheduled_switchover}."""
    if not isinstance(data, dict) or not isinstance(data.get("members"), list):
        raise PatroniError("unexpected /cluster answer: no 'members' list", endpoint="/cluster", method="GET")
    members = [normalize_member(m) for m in data["members"] if isinstance(m, dict)]
    leaders = [m for m in members if m["is_leader"]]
    return {
        "scope": data.get("scope"),
        "leader": leaders[0]["name"] if leaders else None,
        "members": members,
        "paused": bool(data.get("pause", False)),
        "scheduled_switchover": data.get("scheduled_switchover") or None,
    }


def find_member(cluster: Cluster, name: str | None) -> Member | None:
    return next((m for m in cluster["members"] if m["name"] == name), None)


def leader_member(cluster: Cluster) -> Member | None:
    return find_member(cluster, cluster["leader"]) if cluster["leader"] else None


def parse_history(data: t.Any) -> t.List[t.Dict[str, t.Any]]:
    """GET /history lines ``[timeline, lsn, reason, timestamp, new_leader?]``.

    ``new_leader`` only exists in newer Patroni versions; None otherwise.
    """
    if not isinstance(data, list):
        raise PatroniError("unexpected /history answer: not a list", endpoint="/history", method="GET")
    events = []
    for line in data:
        if not isinstance(line, list) or len(line) < 2:
            continue
        padded = list(line) + [None] * (5 - len(line))
        events.append(
            {
                "timeline": padded[0],
                "lsn": padded[1],
                "reason": padded[2],
                "timestamp": padded[3],
                "new_leader": padded[4],
            }
        )
    return events


def dcs_settings(config: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    """The HA timing knobs from /config, Patroni's defaults filled in."""
    return {key: config.get(key, default) for key, default in DCS_DEFAULTS.items()}


def synchronous_mode(config: t.Dict[str, t.Any]) -> str:
    """'off', 'on' or 'quorum' (Patroni 4 accepts the string 'quorum')."""
    value = config.get("synchronous_mode", False)
    if isinstance(value, str) and value.strip().lower() == "quorum":
        return "quorum"
    return "on" if as_bool(value) else "off"


# -- waiting -------------------------------------------------------------------


def wait_for_cluster(
    client: PatroniClient,
    predicate: t.Callable[[Cluster], bool],
    *,
    timeout: float,
    interval: float = 1.0,
    waiting_for: str = "the expected cluster state",
) -> Cluster:
    """Poll GET /cluster until ``predicate`` holds; PatroniTimeoutError otherwise.

    Transport errors while polling are expected (members restart during
    switchover) and only end the wait when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last_seen = "nothing (no member answered)"
    while True:
        try:
            cluster = client.cluster(retries=0)
        except PatroniError as exc:
            last_seen = f"error: {exc}"
        else:
            if predicate(cluster):
                return cluster
            last_seen = describe_cluster(cluster)
        if time.monotonic() + interval > deadline:
            raise PatroniTimeoutError(
                f"gave up after {timeout}s waiting for {waiting_for}; last seen: {last_seen}",
                endpoint="/cluster",
                method="GET",
            )
        time.sleep(interval)


def describe_cluster(cluster: Cluster) -> str:
    parts = [f"{m['name']} {m['role']} {m['state']} tl={m['timeline']}" for m in cluster["members"]]
    return ", ".join(parts) or "no members"


def wait_for_new_leader(
    client: PatroniClient,
    old_leader: str,
    *,
    timeout: float,
    interval: float = 1.0,
    min_timeline: int | None = None,
) -> t.Tuple[Cluster, Member, float]:
    """Wait until a member other than ``old_leader`` leads and is running.

    With ``min_timeline`` also wait until the new leader reports that
    timeline (promotion increments it). Returns cluster, leader, seconds waited.
    """
    started = time.monotonic()

    def new_leader_running(cluster: Cluster) -> bool:
        leader = leader_member(cluster)
        if not leader or leader["name"] == old_leader or leader["state"] != "running":
            return False
        return min_timeline is None or leader["timeline"] is None or leader["timeline"] >= min_timeline

    cluster = wait_for_cluster(
        client,
        new_leader_running,
        timeout=timeout,
        interval=interval,
        waiting_for=f"a new running leader other than {old_leader}",
    )
    leader = leader_member(cluster)
    if leader is None:  # new_leader_running() only accepts clusters with a leader
        raise PatroniError("cluster lost its leader while waiting", endpoint="/cluster", method="GET")
    return cluster, leader, time.monotonic() - started


def client_from_module(module: t.Any) -> PatroniClient:
    """Build the client from the shared options; fail the module on bad settings."""
    p = module.params
    try:
        return PatroniClient(
            p["api_url"],
            username=p["api_username"],
            password=p["api_password"],
            ca_path=p["ca_path"],
            client_cert=p["client_cert"],
            client_key=p["client_key"],
            validate_certs=p["validate_certs"],
            timeout=p["timeout"],
            retries=p["retries"],
            use_proxy=p["use_proxy"],
        )
    except (ValueError, OSError, ssl.SSLError) as exc:
        module.fail_json(msg=f"Invalid Patroni API settings: {exc}")
        raise  # fail_json exits; keeps type checkers honest
