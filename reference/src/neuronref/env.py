"""Reading settings from the environment, with errors that name the variable."""

from __future__ import annotations

import re
from collections.abc import Mapping

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
LOG_FORMATS = ("json", "console")
DURATION_RE = re.compile(r"(?:(\d+(?:\.\d+)?)(ms|s|m|h))+")
DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(Exception):
    """A bad setting; the message names the variable, never its value when it is a secret."""


def text(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """The value without surrounding blanks; empty counts as unset."""
    value = env.get(name, "").strip()
    return value or default


def secret(env: Mapping[str, str], name: str) -> str | None:
    """A password or key: kept byte for byte (blanks may be part of it); empty counts as unset."""
    value = env.get(name, "")
    return value if value.strip() else None


def port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = text(env, name)
    return default if raw is None else parse_port(name, raw)


def parse_port(name: str, raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"{name}={raw!r} is not a TCP port (1-65535)")
    return int(raw)


def integer(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = text(env, name)
    if raw is None:
        return default
    if not raw.lstrip("-").isdigit() or int(raw) < minimum:
        raise ConfigError(f"{name}={raw!r} is not an integer >= {minimum}")
    return int(raw)


def boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = text(env, name)
    if raw is None:
        return default
    if raw.lower() in TRUE_WORDS:
        return True
    if raw.lower() in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (true or false)")


def choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (text(env, name) or default).lower()
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return raw


def duration(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    """A Go-style duration (300ms, 5m, 1h30m) in seconds; 0 means no limit (None)."""
    raw = text(env, name)
    if raw is None:
        return default
    if raw == "0":
        return None
    if not DURATION_RE.fullmatch(raw):
        raise ConfigError(f"{name}={raw!r} is not a duration such as 30s, 5m or 1h")
    seconds = sum(float(number) * DURATION_UNITS[unit] for number, unit in DURATION_PART_RE.findall(raw))
    return seconds or None


def host_port(name: str, raw: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """host:port, [v6]:port or :port (Go's listen address syntax)."""
    match = re.fullmatch(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>[^:]+)", raw)
    if match is None:
        raise ConfigError(f"{name}={raw!r} is not host:port (or :port)")
    host = match.group("v6") or match.group("host") or default_host
    return host, parse_port(name, match.group("port"))
