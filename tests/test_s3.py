"""s3:// registry and artifacts against a real S3 protocol server (moto), plus a stand-in for what moto cannot answer."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

import dewy.registry
from dewy.artifacts import ARTIFACTS
from dewy.artifacts import deadline as deadline_module
from dewy.artifacts import s3 as s3_module
from dewy.errors import ArtifactError, ArtifactNotReady, RegistryError, UsageError
from dewy.registry import REGISTRIES
from dewy.store import ArtifactStore
from dewy.urls import Url
from tests.conftest import host_artifact, tar_gz
from tests.objectstores import progress_of_download
from tests.objectstores import (AWS_ENV, AWS_SECRET, AWS_UNSET, REGION, StandIn, big_file, closed_port_url,
                                deploy_two_versions, download_memory_growth, moto_server, release_files, start_dewy)
from tests.harness import ClientLoop, free_port, get
from tests.loopback import Trickle


@pytest.fixture(scope="module")
def moto():
    with moto_server() as server:
        yield server


@pytest.fixture
def aws(monkeypatch):
    """The test credentials in this process's environment, and nothing from the host's AWS setup."""
    for name in AWS_UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)


def registry(url: str, **kw):
    return REGISTRIES.load(REGISTRIES.url(url), **kw)


def current(url: str, **kw):
    return asyncio.run(registry(url, **kw).current())


def url_of(moto, bucket: str, prefix: str = "", query: str = "") -> str:
    return f"s3://{REGION}/{bucket}/{prefix}?endpoint={moto.endpoint}{query}"


def download(url: str) -> bytes:
    class Sink:
        data = b""

        def write(self, chunk: bytes) -> int:
            Sink.data += chunk
            return len(chunk)

    asyncio.run(ARTIFACTS.load(Url.parse(url)).download(Sink()))
    return Sink.data


def test_server_deploys_two_versions_with_zero_failed_requests(tmp_path, moto) -> None:
    """AWS_ENDPOINT_URL (path-style) instead of endpoint=, credentials from the environment, never logged."""
    bucket = moto.bucket()
    env = {**AWS_ENV, "AWS_ENDPOINT_URL": moto.endpoint}
    seen = deploy_two_versions(tmp_path, moto, bucket, "apps/web/", f"s3://{REGION}/{bucket}/apps/web", env)
    assert AWS_SECRET not in json.dumps(seen)


def test_prerelease_filtering_and_slots(moto, aws) -> None:
    bucket = moto.bucket()
    for tag in ("v1.0.0", "v1.1.0-rc.1", "v1.2.0+blue", "v1.3.0+green", "latest", "v2.0.0-beta.1+blue"):
        moto.publish(bucket, "rel/", tag)
    assert current(url_of(moto, bucket, "rel")).tag == "v1.3.0+green"
    assert current(url_of(moto, bucket, "rel", "&pre-release=true")).tag == "v2.0.0-beta.1+blue"
    blue = current(url_of(moto, bucket, "rel"), slot="blue")
    assert blue.tag == "v1.2.0+blue"
    assert download(blue.artifact_url).startswith(b"\x1f\x8b"), "a key with '+' survives the artifact URL"
    with pytest.raises(RegistryError, match=r"none for slot 'red'"):
        current(url_of(moto, bucket, "rel"), slot="red")

    only_rc = moto.bucket()
    moto.publish(only_rc, "", "v1.0.0-rc.1")
    with pytest.raises(RegistryError, match="pre-releases are skipped without pre-release=true") as caught:
        current(url_of(moto, only_rc))
    assert str(caught.value).startswith(f"s3://{REGION}/{only_rc}/?endpoint=")


def test_constraint_and_calver_keys_choose_as_on_every_registry(moto, aws) -> None:
    bucket = moto.bucket()
    for tag in ("v1.4.2", "v1.5.0", "v2.0.0", "2024.01.3", "2024.02.1"):
        moto.publish(bucket, "rel/", tag)
    assert current(url_of(moto, bucket, "rel", "&constraint=~1.4")).tag == "v1.4.2"
    assert current(url_of(moto, bucket, "rel", "&calver=YYYY.0M.MICRO")).tag == "2024.02.1"


def test_a_release_by_tag_is_an_older_version_prefix(moto, aws) -> None:
    bucket = moto.bucket()
    for tag in ("v1.0.0", "v1.1.0", "v1.2.0"):
        moto.publish(bucket, "rel/", tag, {host_artifact(): tag.encode(), "checksums.txt": b""})
    url = url_of(moto, bucket, "rel")
    older = asyncio.run(registry(url).release("v1.0.0"))
    assert older.tag == "v1.0.0" and download(older.artifact_url) == b"v1.0.0"
    assert older.checksums_url.endswith("/rel/v1.0.0/checksums.txt?endpoint=" + moto.endpoint)
    with pytest.raises(RegistryError) as caught:
        asyncio.run(registry(url).release("v1.0.1"))
    assert str(caught.value) == f"{url} has no release v1.0.1"


def test_artifact_auto_match_and_explicit_name(moto, aws) -> None:
    bucket = moto.bucket()
    files = {"app_windows_amd64.zip": b"w", "app_darwin_arm64.tar.gz": b"d", "site.tar.gz": b"s",
             "checksums.txt": b"", **release_files("v1.0.0")}
    moto.publish(bucket, "", "v1.0.0", files)
    auto = current(url_of(moto, bucket))
    assert auto.artifact_name == host_artifact()
    assert auto.artifact_url == f"s3://{REGION}/{bucket}/v1.0.0/{host_artifact()}?endpoint={moto.endpoint}"
    assert auto.checksums_url.endswith("/v1.0.0/checksums.txt?endpoint=" + moto.endpoint)
    explicit = current(url_of(moto, bucket, query="&artifact=site.tar.gz"))
    assert explicit.artifact_name == "site.tar.gz" and download(explicit.artifact_url) == b"s"
    with pytest.raises(ArtifactNotReady, match="has no artifact 'other.tar.gz' yet"):
        current(url_of(moto, bucket, query="&artifact=other.tar.gz"))


def test_listings_past_1000_keys_are_paginated(moto, aws) -> None:
    """1001 version directories (the newest on the second page), and 1000 audit records in the newest one."""
    bucket = moto.bucket()
    keys = [f"many/v1.0.{i}/app.txt" for i in range(1000)] + [f"many/v2.0.0/shipped_to_h{i:04d}_server_at_x.txt" for i in range(1000)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: moto.put(bucket, key, "x"), keys))
    moto.put(bucket, "many/v2.0.0/zz-site.tar.gz", "site")  # after the audit records: on the second page
    release = current(url_of(moto, bucket, "many", "&artifact=zz-site.tar.gz"))
    assert (release.tag, release.artifact_name) == ("v2.0.0", "zz-site.tar.gz")


def test_unchanged_newest_version_costs_one_request_per_poll(moto, aws) -> None:
    bucket = moto.bucket()
    moto.publish(bucket, "", "v1.0.0")
    reg = registry(url_of(moto, bucket))
    first = asyncio.run(reg.current())
    requests: list[str] = []
    reg.client.get().meta.events.register("before-send.s3", lambda request, **_: requests.append(request.url))
    assert asyncio.run(reg.current()) == first
    assert len(requests) == 1 and "delimiter=%2F" in requests[0]
    moto.publish(bucket, "", "v1.1.0")
    assert asyncio.run(reg.current()).tag == "v1.1.0"  # a new newest version is listed afresh


def test_upload_grace_counts_from_the_version_directory_objects(moto, aws, monkeypatch) -> None:
    bucket = moto.bucket()
    moto.publish(bucket, "", "v1.0.0")
    moto.put(bucket, "v1.1.0/", "")  # a "folder" made in the console: not a file, but its time counts
    moto.put(bucket, "v1.1.0/NOTES.txt", "uploading")
    with pytest.raises(ArtifactNotReady, match=r"release v1.1.0 has no archive .* yet \(published \d+s ago"):
        current(url_of(moto, bucket))
    monkeypatch.setattr(dewy.registry, "UPLOAD_GRACE", timedelta(0))  # as if the directory were 30 minutes old
    with pytest.raises(RegistryError, match=r"release v1.1.0 has no archive .*\(it has NOTES.txt\)") as caught:
        current(url_of(moto, bucket))
    assert not isinstance(caught.value, ArtifactNotReady)


def test_audit_record_and_release_time(moto, aws) -> None:
    bucket = moto.bucket()
    moto.publish(bucket, "team/app/", "v1.0.0")
    reg = registry(url_of(moto, bucket, "team/app/"))
    release = asyncio.run(reg.current())
    assert abs(release.created_at - datetime.now(timezone.utc)) < timedelta(minutes=5)
    asyncio.run(reg.report(release, "assets"))
    asyncio.run(reg.report(release, "assets", error="did not start"))  # failures leave no record
    records = [k for k in moto.keys(bucket) if "shipped_to_" in k]
    assert len(records) == 1 and records[0].startswith("team/app/v1.0.0/shipped_to_")
    body = moto.s3.get_object(Bucket=bucket, Key=records[0])["Body"].read().decode()
    assert body.startswith("shipped to ") and " assets at " in body
    assert asyncio.run(reg.current()).artifact_name == host_artifact()


def test_checksum_is_verified(tmp_path, moto, aws) -> None:
    bucket = moto.bucket()
    data = tar_gz({"VERSION": "v1.0.0"})
    moto.publish(bucket, "", "v1.0.0", {host_artifact(): data, "checksums.txt": f"{'0' * 64}  {host_artifact()}\n"})
    store = ArtifactStore(tmp_path / "cache")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        asyncio.run(store.fetch(current(url_of(moto, bucket))))
    moto.put(bucket, "v1.0.0/checksums.txt", f"{hashlib.sha256(data).hexdigest()}  {host_artifact()}\n")
    path = asyncio.run(store.fetch(current(url_of(moto, bucket))))
    assert path.read_bytes() == data
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]


def one_line_error(url: str, error=RegistryError) -> str:
    with pytest.raises(error) as caught:
        current(url) if error is RegistryError else download(url)
    text = str(caught.value)
    assert "\n" not in text and AWS_SECRET not in text
    return text


def test_missing_bucket_and_object(moto, aws) -> None:
    bucket = moto.bucket()
    text = one_line_error(url_of(moto, "no-such-bucket", "rel"))
    assert text.startswith(f"s3://{REGION}/no-such-bucket/rel?endpoint=") and "bucket 'no-such-bucket' does not exist" in text
    text = one_line_error(f"s3://{REGION}/{bucket}/v9/app.tar.gz?endpoint={moto.endpoint}", ArtifactError)
    assert "cannot download: no such object" in text


def test_unreachable_endpoint_and_missing_credentials(aws, monkeypatch) -> None:
    endpoint = closed_port_url()
    text = one_line_error(f"s3://{REGION}/bucket/rel?endpoint={endpoint}")
    assert f"cannot reach {endpoint}: connection failed" in text
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert "no AWS credentials found" in one_line_error(f"s3://{REGION}/bucket/rel?endpoint={endpoint}")


@pytest.fixture(scope="module")
def moto_iam():
    """A moto server enforcing IAM: a user with no policy, and a reader allowed to list and get but not put."""
    import boto3

    with moto_server() as server:
        bucket = server.bucket("guarded")
        server.publish(bucket, "", "v1.0.0")
        iam = boto3.client("iam", region_name=REGION, endpoint_url=server.endpoint,
                           aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS_SECRET)
        keys = {}
        for user in ("nobody", "reader"):
            iam.create_user(UserName=user)
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
        policy = {"Version": "2012-10-17",
                  "Statement": [{"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"], "Resource": "*"}]}
        iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(policy))
        server.enforce_iam()
        yield server, keys


def test_access_denied_and_rejected_credentials(moto_iam, aws, monkeypatch) -> None:
    server, keys = moto_iam
    url = f"s3://{REGION}/guarded/?endpoint={server.endpoint}"

    def as_user(key_id: str, secret: str) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    as_user(keys["nobody"]["AccessKeyId"], keys["nobody"]["SecretAccessKey"])
    text = one_line_error(url)
    assert "cannot list releases: access denied to bucket 'guarded' (AccessDenied); give dewy's credentials s3:ListBucket" in text

    as_user(keys["reader"]["AccessKeyId"], AWS_SECRET)  # a real key id with the wrong secret
    assert "the AWS secret key does not match the access key id" in one_line_error(url)
    as_user("AKIANOTKNOWNANYWHERE", AWS_SECRET)
    assert "the AWS access key id is not known" in one_line_error(url)

    as_user(keys["reader"]["AccessKeyId"], keys["reader"]["SecretAccessKey"])
    reg = registry(url)
    release = asyncio.run(reg.current())
    assert download(release.artifact_url).startswith(b"\x1f\x8b")
    with pytest.raises(RegistryError, match="cannot write audit record shipped_to_.*: access denied to bucket 'guarded'"):
        asyncio.run(reg.report(release, "server"))


def s3_error(status: int, code: str, message: str):
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>4442587FB7D0A2F9</RequestId></Error>").encode()
    return lambda method, path: (status, {"Content-Type": "application/xml"}, body)


@pytest.mark.parametrize("answer, expected", [
    (s3_error(400, "ExpiredToken", "The provided token has expired."), "the AWS credentials have expired; refresh them"),
    (s3_error(503, "SlowDown", "Please reduce your request rate."), "is unavailable (SlowDown: Please reduce your request rate.)"),
    (lambda method, path: (200, {"Content-Type": "text/html"}, b"<html><body>Welcome to nginx!</body></html>"),
     "answered something that is not an S3 ListObjectsV2 result; is the endpoint an S3 service?"),
], ids=["expired-token", "unavailable", "not-s3"])
def test_answers_moto_cannot_give(aws, answer, expected) -> None:
    """Expired session tokens, throttling and a wrong endpoint, from a stand-in answering like S3 does."""
    with StandIn(answer) as stand_in:
        text = one_line_error(f"s3://{REGION}/bucket/rel?endpoint={stand_in.url}")
    assert text.startswith(f"s3://{REGION}/bucket/rel?endpoint={stand_in.url}: cannot list releases: ")
    assert expected in text


@pytest.mark.parametrize("url, expected", [
    ("s3://us-east-1/bucket/rel?endpont=http://h", "unknown query key 'endpont'; did you mean 'endpoint'?"),
    ("s3://us-east-1/bucket/rel?pre-release=sure", "not a boolean"),
    ("s3://us-east-1", "expected s3://REGION/BUCKET/PREFIX"),
    ("s3://my-bucket/releases", "'my-bucket' is not an AWS region (like us-east-1)"),
    ("s3://us-east-1/bucket/rel?endpoint=ftp://h", "endpoint='ftp://h' is not an http(s):// URL"),
    ("s3://us_east/bucket/rel?endpoint=http://h", "'us_east' is not a region name"),
    ("s3://us-east-1/b!d/rel", "'b!d' is not a bucket name"),
    ("s3://key:secret@us-east-1/bucket/rel", "credentials do not belong in an s3:// URL"),
])
def test_bad_urls_are_usage_errors(url, expected, aws) -> None:
    with pytest.raises(UsageError) as caught:
        registry(url)
    assert expected in str(caught.value)
    assert "secret" not in str(caught.value).replace("credentials", "")


def test_bad_url_stops_dewy_at_startup_with_exit_2(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "dewy", "assets", "--registry", "s3://us-east-1/b/rel?artefact=x"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dewy: error: s3://us-east-1/b/rel?artefact=x: unknown query key 'artefact'; did you mean 'artifact'?"]


def test_sdks_are_imported_only_for_their_scheme() -> None:
    code = """
import sys
import dewy.cli, dewy.daemon, dewy.registry, dewy.artifacts, dewy.store, dewy.registry.file, dewy.registry.objectstore
assert "boto3" not in sys.modules and "google.cloud.storage" not in sys.modules, "imported too early"
import dewy.registry.s3
assert "boto3" in sys.modules and "google.cloud.storage" not in sys.modules
import dewy.registry.gs
assert "google.cloud.storage" in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_download_streams_with_flat_memory(tmp_path, moto) -> None:
    bucket = moto.bucket()
    size = 96 << 20
    moto.s3.upload_file(str(big_file(tmp_path / "big", size)), bucket, "v1.0.0/big.tar.gz")
    grew = download_memory_growth(f"s3://{REGION}/{bucket}/v1.0.0/big.tar.gz?endpoint={moto.endpoint}",
                                  tmp_path / "out", AWS_ENV)
    assert (tmp_path / "out").stat().st_size == size
    assert grew < 24 << 20, f"peak RSS grew by {grew >> 20} MiB for a {size >> 20} MiB download"


def test_registry_failure_keeps_the_running_version_serving(tmp_path) -> None:
    """Credentials revoked under a running dewy: one clear line per failed poll, the app keeps serving."""
    with moto_server() as server:
        bucket = server.bucket()
        server.publish(bucket, "", "v1.0.0")
        port = free_port()
        dewy = start_dewy(tmp_path, port, f"s3://{REGION}/{bucket}?endpoint={server.endpoint}", AWS_ENV)
        try:
            dewy.wait_for("deployed", version="v1.0.0")
            with ClientLoop(port) as client:
                server.enforce_iam()  # from now on the test key is unknown to the server
                failed = dewy.wait_for("deploy-failed")
                assert get(port)[1] == "v1.0.0"
            assert client.failures == [] and client.ok > 0
            assert failed["level"] == "error" and "\n" not in failed["msg"]
            assert failed["msg"].startswith(f"s3://{REGION}/{bucket}?endpoint={server.endpoint}: cannot list releases:"
                                            " the AWS access key id is not known to the server")
            assert dewy.process.poll() is None
            assert dewy.stop() == 0
            assert AWS_SECRET not in json.dumps(dewy.seen)
        finally:
            dewy.kill()


def test_a_trickling_download_is_abandoned_at_its_total_deadline(aws, monkeypatch) -> None:
    monkeypatch.setattr(deadline_module, "DOWNLOAD_FLOOR", 0.5)
    monkeypatch.setattr(s3_module, "CHUNK", 64)  # the deadline allows for the chunk in flight: keep that short
    with Trickle() as server:  # a byte every 50 ms: no read ever times out
        url = f"s3://{REGION}/bucket/app.tar.gz?endpoint={server.origin}"
        started = time.monotonic()
        with pytest.raises(ArtifactError) as raised:
            asyncio.run(asyncio.wait_for(ARTIFACTS.load(Url.parse(url)).download(io.BytesIO()), 5))
    assert time.monotonic() - started < 3
    message = str(raised.value)
    assert message.startswith(f"{url}: the download stalled (") and message.endswith("after the first 0.5 s); dewy retries")
    assert AWS_SECRET not in message


def test_a_slow_but_steady_download_gets_time_for_its_bytes(aws, monkeypatch) -> None:
    monkeypatch.setattr(deadline_module, "DOWNLOAD_FLOOR", 0.3)
    monkeypatch.setattr(deadline_module, "MIN_DOWNLOAD_RATE", 25)  # bytes/s; the server sends 50 a second, for a second
    monkeypatch.setattr(s3_module, "CHUNK", 4)
    with Trickle(size=50, pause=0.02) as server:
        out = io.BytesIO()
        url = f"s3://{REGION}/bucket/app.tar.gz?endpoint={server.origin}"
        asyncio.run(asyncio.wait_for(ARTIFACTS.load(Url.parse(url)).download(out), 5))
    assert out.getvalue() == b" " * 50


def test_a_deadline_passed_before_the_body_arrives_is_the_same_one_line(aws, monkeypatch) -> None:
    monkeypatch.setattr(deadline_module, "DOWNLOAD_FLOOR", 0.0)  # gone by the time the answer's headers are in
    monkeypatch.setattr(s3_module, "CHUNK", 64)
    with Trickle() as server:
        url = f"s3://{REGION}/bucket/app.tar.gz?endpoint={server.origin}"
        with pytest.raises(ArtifactError) as raised:
            asyncio.run(asyncio.wait_for(ARTIFACTS.load(Url.parse(url)).download(io.BytesIO()), 5))
    assert str(raised.value).startswith(f"{url}: the download stalled (0 bytes in ")


def test_the_download_announces_its_size_so_progress_shows_how_much_is_left(tmp_path, moto, aws) -> None:
    bucket = moto.bucket()
    moto.put(bucket, "v1.0.0/app.tar.gz", os.urandom(3 << 20))
    assert progress_of_download(f"s3://{REGION}/{bucket}/v1.0.0/app.tar.gz?endpoint={moto.endpoint}", tmp_path) \
        .startswith("downloading v1.0.0: 3 MiB of 3 MiB")
