# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""pgBackRest repository facts for the neurondb.ha modules.

Pure functions over the JSON of ``pgbackrest info --output=json`` (so they can
be unit tested against recorded output), WAL and LSN arithmetic, recovery
target checks, and the off-site check of an S3 repository with boto3.

Facts about pgBackRest (2.55) this relies on:

* ``info --output=json`` prints a list with one object per stanza: ``status``
  (``code`` 0 ok, 1 missing stanza path, 2 no valid backups, 3 missing stanza
  data, 4 different cipher, 5 database mismatch, 6 backup/expire running,
  99 other), ``backup`` (oldest first) with ``label``, ``type``,
  ``timestamp.start/stop`` (epoch seconds), ``lsn.start/stop``,
  ``archive.start/stop``, ``info.size/delta`` and ``info.repository.size/delta``,
  and ``archive`` with the WAL range (``min``/``max`` segment names) per
  database id (``id`` such as ``17-1``).
* In an S3 repository the objects are ``<repo-path>/backup/<stanza>/<label>/backup.manifest``
  and ``<repo-path>/archive/<stanza>/<archive-id>/<first 16 hex digits>/<segment>-<sha1>[.<ext>]``,
  with the leading ``/`` of the repository path dropped. Encryption changes
  the content, not the names.
"""

from __future__ import annotations

import configparser
import datetime as dt
import re
import typing as t

Info = t.Dict[str, t.Any]

BACKUP_TYPES = ("full", "diff", "incr")
DEFAULT_WAL_SEGMENT_SIZE = 16 * 1024 * 1024
# datetime.UTC is Python 3.11+; managed hosts may run older interpreters.
UTC = dt.timezone.utc  # noqa: UP017


_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_SEGMENT_OBJECT = re.compile(r"(?:^|/)([0-9A-F]{24})-[0-9a-f]{40}(?:\.[a-z0-9]+)?$")
_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_TIME = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[ T](?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)\s*"
    r"(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)$"
)


class PgBackRestError(Exception):
    """A failure to report as the module's message."""


# --------------------------------------------------------------------------- LSN / WAL


def parse_lsn(value: str) -> int:
    """``'0/3000028'`` -> 50331688."""
    match = _LSN.match(value.strip())
    if not match:
        raise PgBackRestError(f"'{value}' is not an LSN (expected the form 16/B374D848)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segment_range(name: str, segment_size: int = DEFAULT_WAL_SEGMENT_SIZE) -> t.Tuple[int, int, int]:
    """(timeline, first LSN, LSN just past the end) of a WAL segment name."""
    if not _SEGMENT.match(name):
        raise PgBackRestError(f"'{name}' is not a WAL segment name")
    timeline = int(name[0:8], 16)
    log = int(name[8:16], 16)
    seg = int(name[16:24], 16)
    start = (log << 32) + seg * segment_size
    return timeline, start, start + segment_size


# --------------------------------------------------------------------------- time


def parse_time(value: str) -> dt.datetime:
    """A recovery target time with an explicit offset: ``2025-05-01 12:00:00+00`` (also ``T``, ``Z``, ``+02:00``)."""
    match = _TIME.match(value.strip())
    if not match:
        raise PgBackRestError(
            f"'{value}' is not a time with a zone offset; write it as pgBackRest and PostgreSQL take it, "
            "e.g. '2025-05-01 12:00:00+00'"
        )
    clock = match.group("time")
    if clock.count(":") == 1:
        clock += ":00"
    tz = match.group("tz")
    if tz == "Z":
        offset = dt.timedelta(0)
    else:
        digits = tz[1:].replace(":", "")
        hours, minutes = int(digits[0:2]), int(digits[2:4] or 0)
        offset = dt.timedelta(hours=hours, minutes=minutes) * (-1 if tz[0] == "-" else 1)
    naive = dt.datetime.fromisoformat(f"{match.group('date')} {clock}")
    return naive.replace(tzinfo=dt.timezone(offset))


def iso(epoch: t.Optional[float]) -> t.Optional[str]:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, tz=UTC).isoformat()


# --------------------------------------------------------------------------- info JSON


def select_stanza(info: t.Any, stanza: str) -> Info:
    """The object of ``stanza`` in the info output (a list of stanzas)."""
    if not isinstance(info, list):
        raise PgBackRestError("unexpected output of pgbackrest info: not a JSON list")
    for entry in info:
        if isinstance(entry, dict) and entry.get("name") == stanza:
            return entry
    raise PgBackRestError(f"pgbackrest info has no stanza '{stanza}'")


def summarize_backup(backup: Info, now: float) -> Info:
    stop = backup.get("timestamp", {}).get("stop")
    start = backup.get("timestamp", {}).get("start")
    info = backup.get("info", {})
    repository = info.get("repository", {})
    return {
        "label": backup.get("label"),
        "type": backup.get("type"),
        "start": iso(start),
        "stop": iso(stop),
        "start_epoch": start,
        "stop_epoch": stop,
        "duration_seconds": (stop - start) if start is not None and stop is not None else None,
        "age_seconds": round(now - stop, 1) if stop is not None else None,
        "size": info.get("size"),
        "delta": info.get("delta"),
        "repo_size": repository.get("size"),
        "repo_delta": repository.get("delta"),
        "lsn_start": backup.get("lsn", {}).get("start"),
        "lsn_stop": backup.get("lsn", {}).get("stop"),
        "wal_start": backup.get("archive", {}).get("start"),
        "wal_stop": backup.get("archive", {}).get("stop"),
        "prior": backup.get("prior"),
        "error": bool(backup.get("error", False)),
        "database_id": backup.get("database", {}).get("id"),
    }


def summarize(stanza_info: Info, now: float) -> Info:
    """Status, backups (oldest first), the newest of each type and overall, the WAL range of the current database."""
    status = stanza_info.get("status", {})
    backups = [summarize_backup(b, now) for b in stanza_info.get("backup", [])]
    backups.sort(key=lambda b: (b["stop_epoch"] or 0, b["label"] or ""))
    last: t.Dict[str, t.Optional[Info]] = {kind: None for kind in BACKUP_TYPES}
    for backup in backups:
        if backup["type"] in last:
            last[backup["type"]] = backup
    newest = backups[-1] if backups else None

    databases = stanza_info.get("db", [])
    current_db = max((d.get("id", 0) for d in databases), default=None)
    archive: t.Optional[Info] = None
    for entry in stanza_info.get("archive", []):
        if current_db is None or entry.get("database", {}).get("id") == current_db:
            archive = {
                "id": entry.get("id"),
                "min": entry.get("min"),
                "max": entry.get("max"),
            }
    if archive is not None:
        for end in ("min", "max"):
            name = archive[end]
            if name and _SEGMENT.match(name):
                first, past = segment_range(name)[1:]
                archive[f"{end}_lsn"] = format_lsn(first if end == "min" else past)
            else:
                archive[f"{end}_lsn"] = None

    return {
        "stanza": stanza_info.get("name"),
        "status": {"code": status.get("code"), "message": status.get("message")},
        "cipher": stanza_info.get("cipher"),
        "backups": backups,
        "last": last,
        "newest": newest,
        "archive": archive,
        "backup_running": bool(status.get("lock", {}).get("backup", {}).get("held", False)),
    }


def check_target(
    summary: Info,
    *,
    target_time: t.Optional[str] = None,
    target_lsn: t.Optional[str] = None,
    latest_time: t.Optional[float] = None,
) -> Info:
    """Whether a recovery target lies within what the repository can restore.

    The earliest reachable point is the end (stop) of the oldest valid backup;
    the latest is the end of the newest archived WAL segment for an LSN, and
    ``latest_time`` (the newest WAL segment's upload time, else now) for a time.
    Returns the verdict, the bounds, the backup pgBackRest would start from and
    the problem in words when out of range.
    """
    valid = [b for b in summary["backups"] if not b["error"] and b["stop_epoch"] is not None]
    result: Info = {"in_range": False, "problem": None, "backup": None}
    if not valid:
        result["problem"] = "the repository has no valid backup to restore"
        return result
    archive = summary.get("archive") or {}

    if target_time is not None:
        when = parse_time(target_time).timestamp()
        earliest = valid[0]["stop_epoch"]
        result.update(type="time", value=target_time, earliest=iso(earliest), latest=iso(latest_time))
        candidates = [b for b in valid if b["stop_epoch"] <= when]
        if when < earliest:
            result["problem"] = (
                f"target time {target_time} is before the end of the oldest backup ({iso(earliest)}, "
                f"{valid[0]['label']}): nothing can be restored to it"
            )
        elif latest_time is not None and when > latest_time:
            result["problem"] = (
                f"target time {target_time} is after the newest archived WAL ({iso(latest_time)}): "
                "the archive does not reach it yet"
            )
        else:
            result["in_range"] = True
        result["backup"] = candidates[-1]["label"] if candidates else None
        return result

    if target_lsn is not None:
        lsn = parse_lsn(target_lsn)
        stops = [(parse_lsn(b["lsn_stop"]), b) for b in valid if b["lsn_stop"]]
        earliest_lsn = min(stop for stop, _backup in stops) if stops else None
        latest_lsn = parse_lsn(archive["max_lsn"]) if archive.get("max_lsn") else None
        result.update(
            type="lsn",
            value=target_lsn,
            earliest=format_lsn(earliest_lsn) if earliest_lsn is not None else None,
            latest=format_lsn(latest_lsn) if latest_lsn is not None else None,
        )
        candidates = [b for s, b in stops if s <= lsn]
        if earliest_lsn is None or lsn < earliest_lsn:
            result["problem"] = f"target LSN {target_lsn} is before the end of the oldest backup ({result['earliest']})"
        elif latest_lsn is not None and lsn > latest_lsn:
            result["problem"] = f"target LSN {target_lsn} is past the newest archived WAL (ends at {result['latest']})"
        else:
            result["in_range"] = True
        result["backup"] = candidates[-1]["label"] if candidates else None
        return result

    result.update(in_range=True, backup=valid[-1]["label"])
    return result


# --------------------------------------------------------------------------- configuration file


def read_repo_settings(path: str, stanza: str, repo: int = 1) -> t.Dict[str, str]:
    """repoN-* options of a pgbackrest.conf ([global], then [stanza] over it), without the ``repoN-`` prefix."""
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    if not parser.read(path):
        return {}
    prefix = f"repo{repo}-"
    settings: t.Dict[str, str] = {}
    for section in ("global", stanza):
        if parser.has_section(section):
            for key, value in parser.items(section):
                if key.startswith(prefix):
                    settings[key[len(prefix) :]] = value.strip()
    return settings


def s3_settings(from_file: t.Dict[str, str], overrides: t.Dict[str, t.Any]) -> Info:
    """S3 connection settings: explicit options over the pgbackrest.conf values."""

    def pick(name: str, file_key: str, default: t.Any = None) -> t.Any:
        value = overrides.get(name)
        if value is not None and value != "":
            return value
        return from_file.get(file_key, default)

    verify = overrides.get("verify_tls")
    if verify is None:
        verify = from_file.get("storage-verify-tls", from_file.get("s3-verify-tls", "y")) != "n"
    port = pick("port", "storage-port", 443)
    return {
        "endpoint": pick("endpoint", "s3-endpoint"),
        "port": int(port),
        "region": pick("region", "s3-region", "us-east-1"),
        "bucket": pick("bucket", "s3-bucket"),
        "uri_style": pick("uri_style", "s3-uri-style", "host"),
        "key": pick("key", "s3-key"),
        "key_secret": pick("key_secret", "s3-key-secret"),
        "ca_file": pick("ca_file", "storage-ca-file"),
        "verify_tls": bool(verify),
        "repo_path": pick("repo_path", "path", "/var/lib/pgbackrest"),
    }


# --------------------------------------------------------------------------- S3


def repo_prefix(repo_path: str) -> str:
    stripped = (repo_path or "").strip("/")
    return f"{stripped}/" if stripped else ""


def manifest_key(repo_path: str, stanza: str, label: str) -> str:
    return f"{repo_prefix(repo_path)}backup/{stanza}/{label}/backup.manifest"


def archive_prefix(repo_path: str, stanza: str, archive_id: str) -> str:
    return f"{repo_prefix(repo_path)}archive/{stanza}/{archive_id}/"


def s3_client(settings: Info) -> t.Any:
    """A boto3 S3 client for the settings (import deferred: only the off-site check needs boto3)."""
    import boto3
    from botocore.config import Config

    verify: t.Any = settings["verify_tls"]
    if verify and settings.get("ca_file"):
        verify = settings["ca_file"]
    endpoint = settings["endpoint"]
    return boto3.session.Session().client(
        "s3",
        endpoint_url=f"https://{endpoint}:{settings['port']}",
        region_name=settings["region"],
        aws_access_key_id=settings["key"],
        aws_secret_access_key=settings["key_secret"],
        verify=verify,
        config=Config(
            s3={"addressing_style": "path" if settings["uri_style"] == "path" else "virtual"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        ),
    )


def describe_s3_error(exc: Exception, settings: Info) -> str:
    """S3's answer in words an operator can act on."""
    where = f"bucket '{settings['bucket']}' at https://{settings['endpoint']}:{settings['port']}"
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = response.get("Error", {}).get("Message") or ""
        # A HEAD answer has no body: botocore repeats the status as the code.
        detail = f" {code}" if code and code != str(status) else ""
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "AuthFailure") or (
            code in ("403", "AccessDenied") and status == 403
        ):
            return (
                f"S3 refused the credentials for {where} (HTTP 403{detail}{': ' + message if message else ''}): "
                "check pgbackrest_s3_key and pgbackrest_s3_key_secret, and that the key may list, read and write "
                "the bucket"
            )
        if code in ("NoSuchBucket", "404") or status == 404:
            return (
                f"{where} does not exist (HTTP 404{detail}): create it first (pgBackRest does not create buckets), "
                "or correct pgbackrest_s3_bucket / pgbackrest_s3_region"
            )
        return f"S3 error on {where}: HTTP {status}{detail} {message}".rstrip()
    name = type(exc).__name__
    if "SSL" in name or "Certificate" in str(exc):
        return f"TLS verification of {where} failed ({exc}): check pgbackrest_s3_ca_file"
    return f"cannot reach {where}: {name}: {exc}"


def newest_segment(objects: t.Iterable[Info]) -> t.Optional[Info]:
    """The WAL segment object with the highest name (timeline, then position) among listed objects."""
    best: t.Optional[Info] = None
    for obj in objects:
        match = _SEGMENT_OBJECT.search(obj["Key"])
        if match and (best is None or match.group(1) > best["segment"]):
            best = {"segment": match.group(1), "key": obj["Key"], "last_modified": obj.get("LastModified")}
    return best


def verify_offsite(client: t.Any, settings: Info, stanza: str, summary: t.Optional[Info]) -> Info:
    """Bucket reachable with the credentials; the newest backup's manifest and the newest archived WAL present.

    ``summary`` is None for a reachability check only. Raises the client's
    exceptions (describe them with describe_s3_error).
    """
    bucket = settings["bucket"]
    client.head_bucket(Bucket=bucket)
    result: Info = {
        "bucket": bucket,
        "endpoint": settings["endpoint"],
        "reachable": True,
        "manifest_key": None,
        "manifest_present": None,
        "wal_key": None,
        "wal_present": None,
        "newest_wal": None,
        "newest_wal_key": None,
        "newest_wal_time": None,
        "newest_wal_epoch": None,
        "problems": [],
    }
    if summary is None:
        return result

    newest = summary.get("newest")
    if newest:
        key = manifest_key(settings["repo_path"], stanza, newest["label"])
        result["manifest_key"] = key
        listed = client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=5).get("Contents", [])
        result["manifest_present"] = any(o["Key"] == key for o in listed)
        if not result["manifest_present"]:
            result["problems"].append(f"the manifest of the newest backup {newest['label']} is not in S3 ({key})")

    archive = summary.get("archive")
    if archive and archive.get("max"):
        prefix = archive_prefix(settings["repo_path"], stanza, archive["id"])
        wal_max = archive["max"]
        start_after = f"{prefix}{wal_max[:16]}/{wal_max}"
        objects: t.List[Info] = []
        kwargs: t.Dict[str, t.Any] = {"Bucket": bucket, "Prefix": prefix, "StartAfter": start_after}
        while True:
            page = client.list_objects_v2(**kwargs)
            objects.extend(page.get("Contents", []))
            if not page.get("IsTruncated"):
                break
            kwargs = {"Bucket": bucket, "Prefix": prefix, "ContinuationToken": page["NextContinuationToken"]}
        mine = [o for o in objects if o["Key"].startswith(f"{prefix}{wal_max[:16]}/{wal_max}-")]
        result["wal_key"] = mine[0]["Key"] if mine else f"{prefix}{wal_max[:16]}/{wal_max}-<sha1>"
        result["wal_present"] = bool(mine)
        if not mine:
            result["problems"].append(f"the newest archived WAL segment {wal_max} is not in S3 (under {prefix})")
        best = newest_segment(objects)
        if best is not None:
            stamp = best["last_modified"]
            result["newest_wal"] = best["segment"]
            result["newest_wal_key"] = best["key"]
            if isinstance(stamp, dt.datetime):
                if stamp.tzinfo is None:
                    stamp = stamp.replace(tzinfo=UTC)
                result["newest_wal_time"] = stamp.isoformat()
                result["newest_wal_epoch"] = stamp.timestamp()
    return result
