# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""pgbackrest_info against recorded `pgbackrest info --output=json` and a fake S3 client."""

from __future__ import annotations

import datetime as dt
import os
import stat
import typing as t

import pytest
from ansible_collections.neurondb.ha.plugins.module_utils import pgbackrest as pgb
from ansible_collections.neurondb.ha.plugins.modules import pgbackrest_info
from botocore.exceptions import ClientError, EndpointConnectionError

DATA = os.path.join(os.path.dirname(__file__), "data")
HEALTHY = os.path.join(DATA, "pgbackrest_info_healthy.json")
NO_BACKUP = os.path.join(DATA, "pgbackrest_info_no_backup.json")
MISSING = os.path.join(DATA, "pgbackrest_info_missing.json")
UTC = dt.UTC


def fake_pgbackrest(tmp_path: t.Any, recorded: str, rc: int = 0, stderr: str = "") -> str:
    """An executable that prints the recorded JSON (or fails), and records its arguments."""
    script = tmp_path / "pgbackrest"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > "{tmp_path}/argv"\n'
        + (f'cat "{recorded}"\n' if recorded else "")
        + (f'echo "{stderr}" >&2\n' if stderr else "")
        + f"exit {rc}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def stop_of(label: str) -> float:
    import json

    with open(HEALTHY) as f:
        return next(b["timestamp"]["stop"] for b in json.load(f)[0]["backup"] if b["label"] == label)


class FakeS3:
    """The three calls the off-site check makes, over a dict of keys."""

    def __init__(self, keys: t.Dict[str, dt.datetime], error: Exception | None = None) -> None:
        self.keys = keys
        self.error = error
        self.calls: t.List[t.Tuple[str, t.Dict[str, t.Any]]] = []

    def head_bucket(self, **kwargs: t.Any) -> t.Dict[str, t.Any]:
        self.calls.append(("head_bucket", kwargs))
        if self.error:
            raise self.error
        return {}

    def list_objects_v2(self, **kwargs: t.Any) -> t.Dict[str, t.Any]:
        self.calls.append(("list_objects_v2", kwargs))
        after = kwargs.get("StartAfter", "")
        found = sorted(k for k in self.keys if k.startswith(kwargs["Prefix"]) and k > after)
        return {
            "Contents": [{"Key": k, "LastModified": self.keys[k], "Size": 1} for k in found],
            "IsTruncated": False,
        }


SEG_A = "archive/bklab/17-1/0000000100000000/00000001000000000000000A-" + "a" * 40 + ".zst"
SEG_B = "archive/bklab/17-1/0000000100000000/00000001000000000000000B-" + "b" * 40 + ".zst"
MANIFEST = "backup/bklab/20261125-200000F_20261125-210000I/backup.manifest"
T_A = dt.datetime(2026, 11, 25, 21, 10, tzinfo=UTC)
T_B = dt.datetime(2026, 11, 25, 21, 11, tzinfo=UTC)


def repo_keys(prefix: str = "pgbackrest/") -> t.Dict[str, dt.datetime]:
    return {prefix + k: v for k, v in {SEG_A: T_A, SEG_B: T_B, MANIFEST: T_A}.items()}


def s3_args() -> t.Dict[str, t.Any]:
    return {
        "endpoint": "bk-backup1",
        "port": 9000,
        "bucket": "neurondb-backup",
        "key": "AKIA",
        "key_secret": "secret",
        "uri_style": "path",
        "repo_path": "/pgbackrest",
    }


@pytest.fixture
def use_s3(monkeypatch: pytest.MonkeyPatch) -> t.Callable[[FakeS3], FakeS3]:
    def install(fake: FakeS3) -> FakeS3:
        monkeypatch.setattr(pgbackrest_info, "s3_client", lambda settings: fake)
        return fake

    return install


def test_reports_last_backup_of_each_type(tmp_path: t.Any, run_module: t.Any) -> None:
    exe = fake_pgbackrest(tmp_path, HEALTHY)
    result, failed = run_module(pgbackrest_info.main, {"stanza": "bklab", "executable": exe})
    assert not failed, result["msg"]
    assert result["changed"] is False
    assert result["status"] == {"code": 0, "message": "ok"}
    assert result["cipher"] == "aes-256-cbc"
    assert result["last"]["full"]["label"] == "20261125-200000F"
    assert result["last"]["incr"]["label"] == "20261125-200000F_20261125-210000I"
    assert result["last"]["diff"] is None
    newest = result["newest"]
    assert newest["type"] == "incr" and newest["duration_seconds"] == 4
    assert newest["size"] == 31457280 and newest["repo_delta"] == 131072
    assert newest["stop"] == "2026-11-25T21:00:04+00:00"
    assert result["archive"] == {
        "id": "17-1",
        "min": "000000010000000000000003",
        "max": "00000001000000000000000A",
        "min_lsn": "0/3000000",
        "max_lsn": "0/B000000",
    }
    argv = (tmp_path / "argv").read_text().split()
    assert argv == [
        "--config=/etc/pgbackrest/pgbackrest.conf",
        "--stanza=bklab",
        "--repo=1",
        "--log-level-file=off",
        "--log-level-console=warn",
        "--output=json",
        "info",
    ]


def test_fails_when_newest_backup_is_too_old(
    tmp_path: t.Any, run_module: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgbackrest_info.time, "time", lambda: stop_of("20261125-200000F_20261125-210000I") + 7200)
    exe = fake_pgbackrest(tmp_path, HEALTHY)
    result, failed = run_module(pgbackrest_info.main, {"stanza": "bklab", "executable": exe, "max_age": 3600})
    assert failed
    assert "the newest backup 20261125-200000F_20261125-210000I (incr) ended" in result["msg"]
    assert "ended 2.0 h ago, more than the 1.0 h allowed" in result["msg"]
    # The facts are still returned with the failure.
    assert result["newest"]["label"] == "20261125-200000F_20261125-210000I"


def test_max_age_passes_for_a_fresh_backup(tmp_path: t.Any, run_module: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgbackrest_info.time, "time", lambda: stop_of("20261125-200000F_20261125-210000I") + 120)
    exe = fake_pgbackrest(tmp_path, HEALTHY)
    result, failed = run_module(pgbackrest_info.main, {"stanza": "bklab", "executable": exe, "max_age": 3600})
    assert not failed, result["msg"]
    assert result["newest"]["age_seconds"] == 120.0
    assert result["msg"] == "newest backup 20261125-200000F_20261125-210000I (incr), 2.0 min old"


def test_no_backup_is_fine_unless_required(tmp_path: t.Any, run_module: t.Any) -> None:
    exe = fake_pgbackrest(tmp_path, NO_BACKUP)
    result, failed = run_module(pgbackrest_info.main, {"stanza": "bklab", "executable": exe})
    assert not failed and result["newest"] is None and result["msg"] == "no backup yet"
    result, failed = run_module(pgbackrest_info.main, {"stanza": "bklab", "executable": exe, "require_backup": True})
    assert failed and result["msg"] == "the repository holds no backup of stanza bklab"


def test_missing_stanza_fails(tmp_path: t.Any, run_module: t.Any) -> None:
    exe = fake_pgbackrest(tmp_path, MISSING)
    result, failed = run_module(pgbackrest_info.main, {"stanza": "bklab", "executable": exe})
    assert failed
    assert result["msg"] == "stanza bklab is not healthy: missing stanza path (status code 1)"


def test_pgbackrest_error_is_reported(tmp_path: t.Any, run_module: t.Any) -> None:
    exe = fake_pgbackrest(tmp_path, "", rc=29, stderr="ERROR: [029]: unable to read repo1")
    result, failed = run_module(pgbackrest_info.main, {"stanza": "bklab", "executable": exe})
    assert failed
    assert result["msg"] == "pgbackrest info failed (rc 29): ERROR: [029]: unable to read repo1"


def test_unknown_stanza(tmp_path: t.Any, run_module: t.Any) -> None:
    exe = fake_pgbackrest(tmp_path, HEALTHY)
    result, failed = run_module(pgbackrest_info.main, {"stanza": "other", "executable": exe})
    assert failed and result["msg"] == "pgbackrest info has no stanza 'other'"


def test_check_mode_reads_the_same(tmp_path: t.Any, run_module: t.Any) -> None:
    exe = fake_pgbackrest(tmp_path, HEALTHY)
    normal = run_module(pgbackrest_info.main, {"stanza": "bklab", "executable": exe})[0]
    checked, failed = run_module(pgbackrest_info.main, {"stanza": "bklab", "executable": exe}, check_mode=True)
    assert not failed
    assert checked["changed"] is False
    assert [b["label"] for b in checked["backups"]] == [b["label"] for b in normal["backups"]]
    assert checked["archive"] == normal["archive"]


def test_offsite_finds_manifest_and_newest_wal(tmp_path: t.Any, run_module: t.Any, use_s3: t.Any) -> None:
    fake = use_s3(FakeS3(repo_keys()))
    exe = fake_pgbackrest(tmp_path, HEALTHY)
    args = {"stanza": "bklab", "executable": exe, "offsite": True, "s3": s3_args()}
    result, failed = run_module(pgbackrest_info.main, args)
    assert not failed, result["msg"]
    off = result["offsite"]
    assert off["manifest_present"] is True
    assert off["manifest_key"] == "pgbackrest/" + MANIFEST
    assert off["wal_present"] is True and off["wal_key"] == "pgbackrest/" + SEG_A
    # A segment archived after pgbackrest info ran is seen in the bucket.
    assert off["newest_wal"] == "00000001000000000000000B"
    assert off["newest_wal_time"] == "2026-11-25T21:11:00+00:00"
    assert fake.calls[0] == ("head_bucket", {"Bucket": "neurondb-backup"})


def test_offsite_missing_objects_fail(tmp_path: t.Any, run_module: t.Any, use_s3: t.Any) -> None:
    keys = repo_keys()
    del keys["pgbackrest/" + MANIFEST]
    del keys["pgbackrest/" + SEG_A]
    use_s3(FakeS3(keys))
    exe = fake_pgbackrest(tmp_path, HEALTHY)
    result, failed = run_module(
        pgbackrest_info.main, {"stanza": "bklab", "executable": exe, "offsite": True, "s3": s3_args()}
    )
    assert failed
    assert "the manifest of the newest backup 20261125-200000F_20261125-210000I is not in S3" in result["msg"]
    assert "the newest archived WAL segment 00000001000000000000000A is not in S3" in result["msg"]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            ClientError(
                {
                    "Error": {"Code": "InvalidAccessKeyId", "Message": "The key does not exist"},
                    "ResponseMetadata": {"HTTPStatusCode": 403},
                },
                "HeadBucket",
            ),
            "S3 refused the credentials for bucket 'neurondb-backup' at https://bk-backup1:9000 "
            "(HTTP 403 InvalidAccessKeyId",
        ),
        (
            ClientError(
                {"Error": {"Code": "403", "Message": "Forbidden"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
                "HeadBucket",
            ),
            "S3 refused the credentials",
        ),
        (
            ClientError(
                {"Error": {"Code": "404", "Message": "Not Found"}, "ResponseMetadata": {"HTTPStatusCode": 404}},
                "HeadBucket",
            ),
            "bucket 'neurondb-backup' at https://bk-backup1:9000 does not exist (HTTP 404): create it first",
        ),
        (
            EndpointConnectionError(endpoint_url="https://bk-backup1:9000/neurondb-backup"),
            "cannot reach bucket 'neurondb-backup' at https://bk-backup1:9000: EndpointConnectionError",
        ),
    ],
)
def test_s3_errors_are_explained(
    tmp_path: t.Any, run_module: t.Any, use_s3: t.Any, error: Exception, expected: str
) -> None:
    use_s3(FakeS3({}, error=error))
    args = {"stanza": "bklab", "info": False, "offsite": True, "s3": s3_args()}
    result, failed = run_module(pgbackrest_info.main, args)
    assert failed
    assert expected in result["msg"]


def test_preflight_without_pgbackrest(run_module: t.Any, use_s3: t.Any) -> None:
    use_s3(FakeS3({}))
    args = {"stanza": "bklab", "info": False, "offsite": True, "s3": s3_args(), "executable": "/nonexistent"}
    result, failed = run_module(pgbackrest_info.main, args)
    assert not failed
    assert result["msg"] == "bucket neurondb-backup answers to the credentials"
    assert result["offsite"]["reachable"] is True and result["offsite"]["manifest_present"] is None


def test_s3_settings_come_from_the_configuration(
    tmp_path: t.Any, run_module: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text(
        "[global]\nrepo1-type=s3\nrepo1-path=/pgbackrest\nrepo1-s3-endpoint=bk-backup1\nrepo1-storage-port=9000\n"
        "repo1-s3-bucket=neurondb-backup\nrepo1-s3-key=AKIA\nrepo1-s3-key-secret=s%cret\nrepo1-s3-uri-style=path\n"
        "repo1-storage-ca-file=/etc/neurondb/pki/ca.crt\n\n[bklab]\npg1-path=/var/lib/postgresql/17/bklab\n"
    )
    seen: t.Dict[str, t.Any] = {}

    def client(settings: t.Dict[str, t.Any]) -> FakeS3:
        seen.update(settings)
        return FakeS3({})

    monkeypatch.setattr(pgbackrest_info, "s3_client", client)
    result, failed = run_module(
        pgbackrest_info.main,
        {"stanza": "bklab", "info": False, "offsite": True, "config": str(conf), "s3": {"port": 9443}},
    )
    assert not failed, result["msg"]
    assert seen == {
        "endpoint": "bk-backup1",
        "port": 9443,  # the option wins over the file
        "region": "us-east-1",
        "bucket": "neurondb-backup",
        "uri_style": "path",
        "key": "AKIA",
        "key_secret": "s%cret",
        "ca_file": "/etc/neurondb/pki/ca.crt",
        "verify_tls": True,
        "repo_path": "/pgbackrest",
    }


def test_target_time_in_range(tmp_path: t.Any, run_module: t.Any, use_s3: t.Any) -> None:
    use_s3(FakeS3(repo_keys()))
    exe = fake_pgbackrest(tmp_path, HEALTHY)
    args = {
        "stanza": "bklab",
        "executable": exe,
        "offsite": True,
        "s3": s3_args(),
        "target_time": "2026-11-25 21:05:00+00",
    }
    result, failed = run_module(pgbackrest_info.main, args)
    assert not failed, result["msg"]
    assert result["target"]["in_range"] is True
    assert result["target"]["backup"] == "20261125-200000F_20261125-210000I"
    assert result["target"]["earliest"] == "2026-11-25T20:00:10+00:00"
    assert result["target"]["latest"] == "2026-11-25T21:11:00+00:00"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (
            "2026-11-25 19:59:00+00",
            "is before the end of the oldest backup (2026-11-25T20:00:10+00:00, 20261125-200000F)",
        ),
        ("2026-11-25 22:11:30+01:00", "is after the newest archived WAL (2026-11-25T21:11:00+00:00)"),
        ("2026-11-25 23:00:00", "is not a time with a zone offset"),
    ],
)
def test_target_time_out_of_range_is_refused(
    tmp_path: t.Any, run_module: t.Any, use_s3: t.Any, target: str, expected: str
) -> None:
    use_s3(FakeS3(repo_keys()))
    exe = fake_pgbackrest(tmp_path, HEALTHY)
    args = {"stanza": "bklab", "executable": exe, "offsite": True, "s3": s3_args(), "target_time": target}
    result, failed = run_module(pgbackrest_info.main, args)
    assert failed
    assert expected in result["msg"]


def test_target_lsn(tmp_path: t.Any, run_module: t.Any) -> None:
    exe = fake_pgbackrest(tmp_path, HEALTHY)
    result, failed = run_module(pgbackrest_info.main, {"stanza": "bklab", "executable": exe, "target_lsn": "0/5000000"})
    assert not failed and result["target"]["backup"] == "20261125-200000F"
    result, failed = run_module(pgbackrest_info.main, {"stanza": "bklab", "executable": exe, "target_lsn": "0/B000001"})
    assert failed and "is past the newest archived WAL (ends at 0/B000000)" in result["msg"]
    result, failed = run_module(pgbackrest_info.main, {"stanza": "bklab", "executable": exe, "target_lsn": "0/4000000"})
    assert failed and "is before the end of the oldest backup (0/4000158)" in result["msg"]


def test_option_conflicts(run_module: t.Any) -> None:
    result, failed = run_module(pgbackrest_info.main, {"stanza": "bklab", "info": False})
    assert failed and result["msg"] == "info=false only makes sense with offsite=true"
    result, failed = run_module(
        pgbackrest_info.main, {"stanza": "bklab", "target_time": "2026-01-01 00:00:00+00", "target_lsn": "0/1"}
    )
    assert failed and "mutually exclusive" in result["msg"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25 21:05:00+00", dt.datetime(2026, 11, 25, 21, 5, tzinfo=UTC)),
        ("2026-11-25T21:05Z", dt.datetime(2026, 11, 25, 21, 5, tzinfo=UTC)),
        ("2026-11-25 23:05:00.5+02:00", dt.datetime(2026, 11, 25, 21, 5, 0, 500000, tzinfo=UTC)),
        ("2026-11-25 16:05:00-0500", dt.datetime(2026, 11, 25, 21, 5, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: dt.datetime) -> None:
    assert pgb.parse_time(text) == expected


def test_wal_arithmetic() -> None:
    assert pgb.segment_range("0000000200000001000000FF") == (2, (1 << 32) + 255 * 16 * 1024 * 1024, 2 << 32)
    assert pgb.parse_lsn("16/B374D848") == 0x16B374D848
    assert pgb.format_lsn(0x16B374D848) == "16/B374D848"
    with pytest.raises(pgb.PgBackRestError):
        pgb.parse_lsn("nonsense")
    assert (
        pgb.newest_segment(
            [
                {"Key": "p/archive/s/17-1/0000000100000000/00000001000000000000000F-" + "c" * 40 + ".zst"},
                {"Key": "p/archive/s/17-1/0000000200000000/000000020000000000000005-" + "d" * 40 + ".zst"},
                {"Key": "p/archive/s/17-1/00000002.history-" + "e" * 40},
            ]
        )["segment"]
        == "000000020000000000000005"
    )


def test_recorded_lab_output(tmp_path: t.Any, run_module: t.Any) -> None:
    """Output recorded from pgBackRest 2.55.1 in the Molecule scenario (two full backups, encrypted S3 repository)."""
    recorded = os.path.join(DATA, "pgbackrest_info_recorded.json")
    exe = fake_pgbackrest(tmp_path, recorded)
    result, failed = run_module(
        pgbackrest_info.main, {"stanza": "molbackup", "executable": exe, "require_backup": True}
    )
    assert not failed, result["msg"]
    assert result["status"] == {"code": 0, "message": "ok"}
    assert result["cipher"] == "aes-256-cbc"
    assert [b["label"] for b in result["backups"]] == ["20261125-224126F", "20261125-224147F"]
    assert result["last"]["full"]["label"] == "20261125-224147F"
    assert result["last"]["diff"] is None and result["last"]["incr"] is None
    newest = result["newest"]
    assert newest["size"] == 39119172 and newest["repo_size"] == 4705504
    assert newest["lsn_stop"] == "0/C0131D0"
    assert result["archive"]["id"] == "17-1"
    assert result["archive"]["max_lsn"] == "0/10000000"
    assert result["backup_running"] is False
