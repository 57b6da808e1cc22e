"""``cachegate doctor``'s checks of the shared tiers: each parent (reachable, our token
accepted) and the S3 store (bucket reachable, a test write).  Blocking, bounded by the
doctor's timeout."""

from __future__ import annotations

import http.client
import os
from pathlib import Path
from urllib.parse import urlsplit

from gateway.cache.tiers import bearer
from gateway.config import Config

TOKEN_FIX = "put the same secret in [cluster] token_file on the children and the parents"


def check_tiers(config: Config, timeout: float) -> list:
    """Nothing when neither tier is configured (one host alone needs no such line)."""
    checks = [check_parent(config, url, timeout) for url in config.cluster.parents]
    return checks + ([check_s3(config, timeout)] if config.s3.endpoint else [])


def check_parent(config: Config, url: str, timeout: float):  # type: ignore[no-untyped-def]
    """Ask the parent for its CA certificate (served from memory: no upstream fetch) with
    our token: 200 means reachable and the token is accepted."""
    from gateway.ops.doctor import Check
    title = f"parent {url}"
    try:
        token = Path(config.cluster.token_file).read_text().strip()
    except OSError as e:
        return Check(False, title, f"cannot read {config.cluster.token_file}: {e.strerror}",
                     TOKEN_FIX)
    parts = urlsplit(url)
    name = config.dns.local_names[0] if config.dns.local_names else "cachegate.internal"
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        connection.request("GET", f"http://{name}/ca.crt",
                           headers={"Host": name, "Proxy-Authorization": bearer(token)})
        status = connection.getresponse().status
    except OSError as e:
        return Check(False, title, f"unreachable: {e}", "start cachegate there with "
                     "[cluster] listen set; meanwhile misses skip it (next parent, upstream)")
    finally:
        connection.close()
    if status == 403:
        return Check(False, title, "refuses our token (403)", TOKEN_FIX)
    if status != 200:
        return Check(False, title, f"answered {status}", "is it a cachegate [cluster] listen port?")
    return Check(True, title, "reachable, token accepted")


def check_s3(config: Config, timeout: float):  # type: ignore[no-untyped-def]
    from gateway.ops.doctor import Check
    s3 = config.s3
    title = "S3 store"
    if not s3.endpoint:
        return Check(None, title, "[store.s3] endpoint is not set")
    title = f"S3 store {s3.endpoint}/{s3.bucket}"
    try:
        from gateway.cache.s3 import make_client
        client = make_client(s3.endpoint, s3.region, s3.credentials_file, min(timeout, s3.timeout))
        client.head_bucket(Bucket=s3.bucket)
        key = f"{s3.prefix}doctor/{os.uname().nodename}-{os.getpid()}"
        client.put_object(Bucket=s3.bucket, Key=key, Body=b"cachegate doctor\n")
        client.delete_object(Bucket=s3.bucket, Key=key)
    except Exception as e:  # noqa: BLE001 - botocore's errors are many; each is a verdict
        return Check(False, title, f"{e.__class__.__name__}: {e}",
                     "check the endpoint, bucket and credentials_file; meanwhile the "
                     "upstream serves as if there were no S3")
    return Check(True, title, "bucket reachable, test write ok")
