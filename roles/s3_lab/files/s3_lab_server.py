#!/usr/bin/python3
# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The lab's S3 endpoint: moto's S3 server (plain HTTP on loopback, behind
Nginx for TLS), credentials enforced.

moto keeps every object in memory: a restart of this service empties the
buckets (they are created again, empty, at start). Lab use only.

Configuration from the environment (the unit's EnvironmentFile):
  S3_LAB_ADDRESS, S3_LAB_PORT       where to listen (HTTP)
  S3_LAB_REGION                     region of the buckets
  S3_LAB_BUCKETS                    comma-separated bucket names created at start
  S3_LAB_ACCESS_KEY, S3_LAB_SECRET_KEY
                                    the only credentials accepted (an IAM user
                                    seeded in moto with an s3:* policy)
  S3_LAB_ENFORCE_AUTH               "true": requests must be signed with them
"""

from __future__ import annotations

import json
import os
import sys
from urllib.parse import quote, unquote

from werkzeug.serving import run_simple


def encode_signed_query(access_control: object) -> None:
    """moto rebuilds the request it checks a signature against from the decoded
    URL, so a query value such as prefix=a%2Fb is canonicalised as prefix=a/b and
    a correct SigV4 signature (pgBackRest's, boto3's) does not match. Encode the
    query again as SigV4 requires (RFC 3986, unreserved characters kept)."""
    base = access_control.IAMRequestBase  # type: ignore[attr-defined]
    original = base._create_aws_request

    def create_aws_request(self):  # type: ignore[no-untyped-def]
        path, sep, query = self._path.partition("?")
        if sep:
            pairs = []
            for pair in query.split("&"):
                name, eq, value = pair.partition("=")
                pairs.append(quote(unquote(name), safe="-_.~") + eq + quote(unquote(value), safe="-_.~"))
            self._path = path + "?" + "&".join(pairs)
        return original(self)

    base._create_aws_request = create_aws_request


def main() -> int:
    # moto reads some settings at import time.
    os.environ.setdefault("S3_IGNORE_SUBDOMAIN_BUCKETNAME", "true")
    from moto import settings
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam import access_control
    from moto.iam.models import iam_backends
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.s3.models import s3_backends

    encode_signed_query(access_control)
    env = os.environ
    region = env.get("S3_LAB_REGION", "us-east-1")
    access_key = env["S3_LAB_ACCESS_KEY"]
    secret_key = env["S3_LAB_SECRET_KEY"]

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    iam.create_user(region_name=region, user_name="s3lab")
    key = iam.create_access_key("s3lab")
    key.access_key_id = access_key
    key.secret_access_key = secret_key
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy("s3lab", "s3-all", json.dumps(policy))

    s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for bucket in filter(None, (b.strip() for b in env.get("S3_LAB_BUCKETS", "").split(","))):
        s3.create_bucket(bucket, region)

    # From the first request on, every call must carry a valid signature of
    # the seeded key: wrong credentials get S3's 403 answers.
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0 if env.get("S3_LAB_ENFORCE_AUTH", "true") == "true" else float("inf")

    app = DomainDispatcherApplication(create_backend_app)
    # TLS is Nginx's: Werkzeug ends bodiless answers by closing the TLS
    # connection without close_notify, which pgBackRest rightly rejects.
    run_simple(env.get("S3_LAB_ADDRESS", "127.0.0.1"), int(env.get("S3_LAB_PORT", "9001")), app, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
