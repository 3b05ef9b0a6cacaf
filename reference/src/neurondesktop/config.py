"""NeuronDesktop API settings (the first-start values are read in profiles.py, and only then)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from neuronref import env
from neuronref.db import ConnParams
from neuronref.env import ConfigError

AUTH_MODES = ("oidc", "jwt", "hybrid")


@dataclass(frozen=True)
class DesktopConfig:
    host: str
    port: int
    db: ConnParams
    log_level: str
    log_format: str
    auth_mode: str
    jwt_secret: str | None = field(repr=False)
    oidc_issuer_url: str | None
    oidc_client_id: str | None
    oidc_client_secret: str | None = field(repr=False)
    oidc_redirect_url: str | None = None
    session_secure: bool = True
    session_cookie_domain: str | None = None
    cors_allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    enable_sql_console: bool = False

    @property
    def password_login(self) -> bool:
        return self.auth_mode in ("jwt", "hybrid")


def _url(environ: Mapping[str, str], name: str) -> str | None:
    value = env.text(environ, name)
    if value is not None:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{name}={value!r} is not an http(s) URL")
    return value


def load(environ: Mapping[str, str]) -> DesktopConfig:
    auth_mode = env.choice(environ, "AUTH_MODE", "oidc", AUTH_MODES)
    jwt_secret = env.secret(environ, "JWT_SECRET")
    issuer, client_id = _url(environ, "OIDC_ISSUER_URL"), env.text(environ, "OIDC_CLIENT_ID")
    redirect = _url(environ, "OIDC_REDIRECT_URL")
    missing = []
    if auth_mode in ("jwt", "hybrid") and jwt_secret is None:
        missing.append("JWT_SECRET")
    if auth_mode in ("oidc", "hybrid"):
        # Checked, never fetched: the issuer is only contacted when a user signs in.
        missing += [
            name
            for name, value in (
                ("OIDC_ISSUER_URL", issuer),
                ("OIDC_CLIENT_ID", client_id),
                ("OIDC_REDIRECT_URL", redirect),
            )
            if value is None
        ]
    if missing:
        raise ConfigError(f"AUTH_MODE={auth_mode} needs {', '.join(missing)}")
    origins = [origin.strip() for origin in (env.text(environ, "CORS_ALLOWED_ORIGINS", "*") or "*").split(",")]
    return DesktopConfig(
        host=env.text(environ, "SERVER_HOST", "0.0.0.0") or "0.0.0.0",
        port=env.port(environ, "SERVER_PORT", 8081),
        db=ConnParams(
            host=env.text(environ, "DB_HOST", "localhost") or "localhost",
            port=env.port(environ, "DB_PORT", 5432),
            dbname=env.text(environ, "DB_NAME", "neurondesk") or "neurondesk",
            user=env.text(environ, "DB_USER", "neurondesk") or "neurondesk",
            password=env.secret(environ, "DB_PASSWORD") or "neurondesk",
            application_name="neurondesktop",
        ),
        log_level=env.choice(environ, "LOG_LEVEL", "info", env.LOG_LEVELS),
        log_format=env.choice(environ, "LOG_FORMAT", "json", env.LOG_FORMATS),
        auth_mode=auth_mode,
        jwt_secret=jwt_secret,
        oidc_issuer_url=issuer,
        oidc_client_id=client_id,
        oidc_client_secret=env.secret(environ, "OIDC_CLIENT_SECRET"),
        oidc_redirect_url=redirect,
        session_secure=env.boolean(environ, "SESSION_SECURE", True),
        session_cookie_domain=env.text(environ, "SESSION_COOKIE_DOMAIN"),
        cors_allowed_origins=[origin for origin in origins if origin],
        enable_sql_console=env.boolean(environ, "ENABLE_SQL_CONSOLE", False),
    )
