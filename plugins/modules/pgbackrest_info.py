#!/usr/bin/python
# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: pgbackrest_info
short_description: Report a pgBackRest repository, check backup age, off-site copies and recovery targets
description:
  - Runs C(pgbackrest info --output=json) for one stanza and reports the newest backup of each type (full, diff,
    incr), its age and size, every backup, and the range of archived WAL.
  - Fails when the newest backup is older than O(max_age), when O(require_backup=true) and there is none, or when
    the stanza is not healthy (except for "no valid backups" when no backup is required).
  - With O(offsite=true), checks the S3 repository itself with boto3 - the bucket answers to the credentials, the
    newest backup's C(backup.manifest) is there, and the newest archived WAL segment is there - and reports the
    newest WAL segment in the bucket with its upload time. S3 settings come from the pgBackRest configuration file
    unless given in O(s3).
  - With O(target_time) or O(target_lsn), checks that a point-in-time recovery target lies between the end of the
    oldest backup and the newest archived WAL, and reports the backup a restore would start from.
  - Never changes anything.
version_added: 0.1.0
author:
  - neurondb.ha developers (!UNKNOWN)
options:
  stanza:
    description:
      - The pgBackRest stanza.
    type: str
    required: true
  config:
    description:
      - pgBackRest configuration file, passed as C(--config) and read for the S3 settings of the off-site check.
    type: path
    default: /etc/pgbackrest/pgbackrest.conf
  executable:
    description:
      - The pgbackrest program.
    type: path
    default: pgbackrest
  repo:
    description:
      - Repository number (C(--repo)) to report and to check off-site.
    type: int
    default: 1
  info:
    description:
      - Run C(pgbackrest info). V(false) with O(offsite=true) only checks that the bucket answers to the credentials,
        a pre-flight before pgBackRest is configured.
    type: bool
    default: true
  require_backup:
    description:
      - Fail when the repository holds no valid backup.
    type: bool
    default: false
  max_age:
    description:
      - Fail when the newest backup (of any type) ended more than this many seconds ago, or when there is none.
    type: int
  offsite:
    description:
      - Check the S3 repository with boto3 (see the description). Requires boto3 on the host the module runs on.
    type: bool
    default: false
  s3:
    description:
      - S3 settings for the off-site check; each one not given is read from the C(repoN-*) options of O(config).
    type: dict
    suboptions:
      endpoint:
        description: Endpoint host name (C(repo1-s3-endpoint)).
        type: str
      port:
        description: Endpoint port (C(repo1-storage-port)).
        type: int
      region:
        description: Region (C(repo1-s3-region)).
        type: str
      bucket:
        description: Bucket (C(repo1-s3-bucket)).
        type: str
      uri_style:
        description: V(host) or V(path) (C(repo1-s3-uri-style)).
        type: str
        choices: [host, path]
      key:
        description: Access key id (C(repo1-s3-key)).
        type: str
      key_secret:
        description: Secret access key (C(repo1-s3-key-secret)).
        type: str
      ca_file:
        description: CA bundle that signs the endpoint's certificate (C(repo1-storage-ca-file)).
        type: path
      verify_tls:
        description: Verify the endpoint's certificate (C(repo1-storage-verify-tls)).
        type: bool
      repo_path:
        description: Repository path, the prefix of its objects in the bucket (C(repo1-path)).
        type: str
  target_time:
    description:
      - A recovery target time with a zone offset, for example V(2025-05-01 12:00:00+00).
      - In range when not before the end of the oldest backup and not after the newest archived WAL segment (its
        upload time with O(offsite=true), otherwise the current time).
      - Mutually exclusive with O(target_lsn).
    type: str
  target_lsn:
    description:
      - A recovery target LSN, for example V(0/5000060). In range when not before the end of the oldest backup and
        not past the end of the newest archived WAL segment.
    type: str
  wal_segment_size:
    description:
      - WAL segment size of the cluster in bytes, to turn segment names into LSNs.
    type: int
    default: 16777216
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The module only reads; it runs the same in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - pgBackRest 2.x on the host (for O(info=true))
  - boto3 (for O(offsite=true))
notes:
  - Run it as the user pgBackRest runs as (C(become_user=postgres)) so it can read the configuration. The info call
    writes no log file (C(--log-level-file=off)).
  - S3 C(LastModified) is when the segment reached the bucket; WAL in it is at least that old, which makes it a
    safe upper bound for a recovery target time.
seealso:
  - name: pgBackRest info command
    description: The JSON this module reads.
    link: https://pgbackrest.org/command.html#command-info
"""

EXAMPLES = r"""
- name: Fail when the newest backup is more than 26 hours old
  neurondb.ha.pgbackrest_info:
    stanza: neurondb
    max_age: 93600
  become: true
  become_user: postgres

- name: Newest backup and WAL are really in the bucket
  neurondb.ha.pgbackrest_info:
    stanza: neurondb
    require_backup: true
    offsite: true
  become: true
  become_user: postgres
  register: repo

- name: Refuse a restore target outside what the repository holds
  neurondb.ha.pgbackrest_info:
    stanza: neurondb
    offsite: true
    target_time: "2025-05-01 12:00:00+00"
  become: true
  become_user: postgres

- name: Pre-flight of the bucket and credentials before pgBackRest is configured
  neurondb.ha.pgbackrest_info:
    stanza: neurondb
    info: false
    offsite: true
    s3:
      endpoint: s3.eu-central-1.amazonaws.com
      region: eu-central-1
      bucket: acme-pgbackrest
      key: "{{ vault_s3_key }}"
      key_secret: "{{ vault_s3_key_secret }}"
"""

RETURN = r"""
stanza:
  description: The stanza.
  returned: always
  type: str
  sample: neurondb
status:
  description: pgBackRest's status of the stanza (C(code) 0 is ok, 1 missing stanza path, 2 no valid backups, ...).
  returned: when O(info=true)
  type: dict
  sample: {"code": 0, "message": "ok"}
cipher:
  description: Repository cipher.
  returned: when O(info=true)
  type: str
  sample: aes-256-cbc
backups:
  description: Every backup, oldest first.
  returned: when O(info=true)
  type: list
  elements: dict
  contains:
    label:
      description: Backup label.
      type: str
      sample: 20250501-010002F
    type:
      description: V(full), V(diff) or V(incr).
      type: str
    start:
      description: Start time (ISO 8601, UTC).
      type: str
    stop:
      description: End time (ISO 8601, UTC).
      type: str
    duration_seconds:
      description: How long the backup took.
      type: int
    age_seconds:
      description: Seconds since the backup ended.
      type: float
    size:
      description: Size of the database in the backup, bytes.
      type: int
    delta:
      description: Bytes copied by this backup.
      type: int
    repo_size:
      description: Bytes in the repository (compressed) for the whole backup.
      type: int
    repo_delta:
      description: Bytes written to the repository by this backup.
      type: int
    lsn_start:
      description: Start LSN.
      type: str
    lsn_stop:
      description: Stop LSN (the earliest point a restore of this backup reaches).
      type: str
    wal_start:
      description: First WAL segment needed.
      type: str
    wal_stop:
      description: Last WAL segment needed.
      type: str
    prior:
      description: Label of the backup this one depends on (diff and incr).
      type: str
    error:
      description: Whether pgBackRest found page checksum errors in it.
      type: bool
last:
  description: The newest backup of each type (V(full), V(diff), V(incr)); null for a type with none.
  returned: when O(info=true)
  type: dict
newest:
  description: The newest backup of any type, null when there is none.
  returned: when O(info=true)
  type: dict
archive:
  description: Archived WAL of the current database (C(id), C(min), C(max) segment names, C(min_lsn), C(max_lsn)).
  returned: when O(info=true)
  type: dict
  sample: {"id": "17-1", "min": "000000010000000000000003", "max": "00000001000000000000000A",
           "min_lsn": "0/3000000", "max_lsn": "0/B000000"}
backup_running:
  description: Whether a backup or expire holds the stanza's lock.
  returned: when O(info=true)
  type: bool
offsite:
  description: Result of the S3 check.
  returned: when O(offsite=true)
  type: dict
  contains:
    bucket:
      description: Bucket checked.
      type: str
    reachable:
      description: The bucket answered to the credentials.
      type: bool
    manifest_key:
      description: Object key of the newest backup's manifest.
      type: str
    manifest_present:
      description: Whether it is in the bucket (null when there is no backup or O(info=false)).
      type: bool
    wal_key:
      description: Object key of the newest WAL segment pgBackRest reports.
      type: str
    wal_present:
      description: Whether it is in the bucket.
      type: bool
    newest_wal:
      description: Newest WAL segment found in the bucket (may be newer than pgBackRest's report).
      type: str
    newest_wal_time:
      description: When that segment reached the bucket (ISO 8601).
      type: str
    problems:
      description: What is missing.
      type: list
      elements: str
target:
  description: Verdict on O(target_time) or O(target_lsn).
  returned: when a target is given
  type: dict
  contains:
    in_range:
      description: Whether the target can be reached.
      type: bool
    earliest:
      description: Earliest reachable point (end of the oldest backup).
      type: str
    latest:
      description: Latest reachable point.
      type: str
    backup:
      description: Label of the newest backup that ended before the target (the one a restore starts from).
      type: str
    problem:
      description: Why the target cannot be reached; null when it can.
      type: str
"""

import importlib.util
import json
import time
import typing as t

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.neurondb.ha.plugins.module_utils.pgbackrest import (
    PgBackRestError,
    check_target,
    describe_s3_error,
    read_repo_settings,
    s3_client,
    s3_settings,
    select_stanza,
    summarize,
    verify_offsite,
)

# boto3 is imported where the off-site check needs it (module_utils.pgbackrest.s3_client).
HAS_BOTO3 = importlib.util.find_spec("boto3") is not None


def format_age(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def run_info(module: AnsibleModule, stanza: str) -> t.Any:
    p = module.params
    executable = p["executable"]
    if "/" not in executable:
        executable = module.get_bin_path(executable, required=True)
    argv = [
        executable,
        f"--config={p['config']}",
        f"--stanza={stanza}",
        f"--repo={p['repo']}",
        "--log-level-file=off",
        "--log-level-console=warn",
        "--output=json",
        "info",
    ]
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg=f"pgbackrest info failed (rc {rc}): {(err or out).strip()}", rc=rc, cmd=argv)
    try:
        return json.loads(out)
    except ValueError as exc:
        module.fail_json(msg=f"pgbackrest info printed no JSON ({exc}): {out[:500]}")


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            stanza=dict(type="str", required=True),
            config=dict(type="path", default="/etc/pgbackrest/pgbackrest.conf"),
            executable=dict(type="path", default="pgbackrest"),
            repo=dict(type="int", default=1),
            info=dict(type="bool", default=True),
            require_backup=dict(type="bool", default=False),
            max_age=dict(type="int"),
            offsite=dict(type="bool", default=False),
            s3=dict(
                type="dict",
                options=dict(
                    endpoint=dict(type="str"),
                    port=dict(type="int"),
                    region=dict(type="str"),
                    bucket=dict(type="str"),
                    uri_style=dict(type="str", choices=["host", "path"]),
                    key=dict(type="str", no_log=True),
                    key_secret=dict(type="str", no_log=True),
                    ca_file=dict(type="path"),
                    verify_tls=dict(type="bool"),
                    repo_path=dict(type="str"),
                ),
            ),
            target_time=dict(type="str"),
            target_lsn=dict(type="str"),
            wal_segment_size=dict(type="int", default=16777216),
        ),
        mutually_exclusive=[["target_time", "target_lsn"]],
        supports_check_mode=True,
    )
    p = module.params
    stanza = p["stanza"]
    now = time.time()
    problems: t.List[str] = []
    result: t.Dict[str, t.Any] = dict(changed=False, stanza=stanza)

    if not p["info"] and not p["offsite"]:
        module.fail_json(msg="info=false only makes sense with offsite=true")
    if p["info"] is False and (p["target_time"] or p["target_lsn"] or p["max_age"] is not None or p["require_backup"]):
        module.fail_json(msg="max_age, require_backup and recovery targets need info=true")

    summary = None
    if p["info"]:
        try:
            summary = summarize(select_stanza(run_info(module, stanza), stanza), now)
        except PgBackRestError as exc:
            module.fail_json(msg=str(exc))
        result.update(summary)
        code = summary["status"]["code"]
        if code not in (0, 2):
            problems.append(f"stanza {stanza} is not healthy: {summary['status']['message']} (status code {code})")
        newest = summary["newest"]
        if newest is None and (p["require_backup"] or p["max_age"] is not None):
            problems.append(f"the repository holds no backup of stanza {stanza}")
        if newest is not None and p["max_age"] is not None and newest["age_seconds"] > p["max_age"]:
            problems.append(
                f"the newest backup {newest['label']} ({newest['type']}) ended {format_age(newest['age_seconds'])} ago,"
                f" more than the {format_age(p['max_age'])} allowed"
            )

    if p["offsite"]:
        if not HAS_BOTO3:
            module.fail_json(msg=missing_required_lib("boto3", reason="for the off-site check (offsite=true)"))
        settings = s3_settings(read_repo_settings(p["config"], stanza, p["repo"]), p["s3"] or {})
        missing = [name for name in ("endpoint", "bucket", "key", "key_secret") if not settings.get(name)]
        if missing:
            module.fail_json(
                msg=f"S3 settings missing for the off-site check: {', '.join(missing)} (s3 option or {p['config']})"
            )
        try:
            offsite = verify_offsite(s3_client(settings), settings, stanza, summary)
        except Exception as exc:  # botocore raises many unrelated classes; each is described
            module.fail_json(msg=describe_s3_error(exc, settings), **result)
        result["offsite"] = offsite
        problems.extend(offsite["problems"])

    if summary is not None and (p["target_time"] or p["target_lsn"]):
        latest_time = now
        offsite_epoch = (result.get("offsite") or {}).get("newest_wal_epoch")
        if offsite_epoch is not None:
            latest_time = offsite_epoch
        try:
            target = check_target(
                summary, target_time=p["target_time"], target_lsn=p["target_lsn"], latest_time=latest_time
            )
        except PgBackRestError as exc:
            module.fail_json(msg=str(exc), **result)
        result["target"] = target
        if not target["in_range"]:
            problems.append(target["problem"])

    if problems:
        module.fail_json(msg="; ".join(problems), **result)

    newest = result.get("newest")
    if p["info"]:
        msg = (
            f"newest backup {newest['label']} ({newest['type']}), {format_age(newest['age_seconds'])} old"
            if newest
            else "no backup yet"
        )
    else:
        msg = f"bucket {result['offsite']['bucket']} answers to the credentials"
    module.exit_json(msg=msg, **result)


if __name__ == "__main__":
    main()
