"""gs:// registry and artifacts against the GCS emulator, plus stand-ins for what the emulator cannot answer
(pages, access denied, credentials that fail to refresh)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

import dewy.registry
from dewy.artifacts import ARTIFACTS
from dewy.artifacts import deadline as deadline_module
from dewy.errors import ArtifactError, ArtifactNotReady, RegistryError, UsageError
from dewy.registry import REGISTRIES
from dewy.store import ArtifactStore
from dewy.urls import Url
from tests.conftest import host_artifact, tar_gz
from tests.objectstores import progress_of_download
from tests.objectstores import (StandIn, big_file, closed_port_url, deploy_two_versions, download_memory_growth,
                                gcs_emulator, release_files)
from tests.loopback import Trickle

PROJECT = "dewy-test"
GOOGLE_ENV = ("STORAGE_EMULATOR_HOST", "API_ENDPOINT_OVERRIDE", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT")


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator() as emulator:
        yield emulator


@pytest.fixture
def google_env(monkeypatch):
    for name in GOOGLE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # never ask a real metadata server
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    return monkeypatch


@pytest.fixture
def emulated(gcs, google_env):
    google_env.setenv("STORAGE_EMULATOR_HOST", gcs.host)
    return gcs


def registry(url: str, **kw):
    return REGISTRIES.load(REGISTRIES.url(url), **kw)


def current(url: str, **kw):
    return asyncio.run(registry(url, **kw).current())


def download(url: str) -> bytes:
    class Sink:
        data = b""

        def write(self, chunk: bytes) -> int:
            Sink.data += chunk
            return len(chunk)

    asyncio.run(ARTIFACTS.load(Url.parse(url)).download(Sink()))
    return Sink.data


def test_server_deploys_two_versions_with_zero_failed_requests(tmp_path, gcs) -> None:
    bucket = gcs.bucket()
    deploy_two_versions(tmp_path, gcs, bucket, "apps/web/", f"gs://{PROJECT}/{bucket}/apps/web",
                        {"STORAGE_EMULATOR_HOST": gcs.host})


def test_prerelease_filtering_and_slots(emulated) -> None:
    bucket = emulated.bucket()
    for tag in ("v1.0.0", "v1.1.0-rc.1", "v1.2.0+blue", "v1.3.0+green", "nightly", "v2.0.0-beta.1+blue"):
        emulated.publish(bucket, "rel/", tag)
    base = f"gs://{PROJECT}/{bucket}/rel"
    assert current(base).tag == "v1.3.0+green"
    assert current(base + "?pre-release=true").tag == "v2.0.0-beta.1+blue"
    blue = current(base, slot="blue")
    assert blue.tag == "v1.2.0+blue"
    assert blue.artifact_url == f"gs://{bucket}/rel/v1.2.0+blue/{host_artifact()}"
    assert download(blue.artifact_url).startswith(b"\x1f\x8b")
    only_rc = emulated.bucket()
    emulated.publish(only_rc, "", "v1.0.0-rc.1")
    with pytest.raises(RegistryError, match="pre-releases are skipped without pre-release=true"):
        current(f"gs://{PROJECT}/{only_rc}")


def test_upstreams_short_form_with_project_key_reads_the_same_releases(emulated) -> None:
    bucket = emulated.bucket()
    for tag in ("v1.0.0", "v1.1.0"):
        emulated.publish(bucket, "apps/web/", tag)
    long = current(f"gs://{PROJECT}/{bucket}/apps/web")
    short = current(f"gs://{bucket}/apps/web?project={PROJECT}")
    assert short == long and short.tag == "v1.1.0"
    assert current(f"gs://{bucket}/apps/web?project=").tag == "v1.1.0", "empty project=: the credentials' project"


def test_a_release_by_tag_is_an_older_version_prefix(emulated) -> None:
    bucket = emulated.bucket()
    for tag in ("v1.0.0", "v1.1.0", "v1.2.0"):
        emulated.publish(bucket, "rel/", tag, {host_artifact(): tag.encode(), "checksums.txt": b""})
    url = f"gs://{PROJECT}/{bucket}/rel"
    older = asyncio.run(registry(url).release("1.0.0"))
    assert (older.tag, older.checksums_url) == ("v1.0.0", f"gs://{bucket}/rel/v1.0.0/checksums.txt")
    assert download(older.artifact_url) == b"v1.0.0"
    with pytest.raises(RegistryError) as caught:
        asyncio.run(registry(url).release("v1.0.1"))
    assert str(caught.value) == f"{url} has no release v1.0.1"


def test_artifact_auto_match_and_explicit_name(emulated) -> None:
    bucket = emulated.bucket()
    files = {"app_windows_amd64.zip": b"w", "app_darwin_arm64.tar.gz": b"d", "site.tar.gz": b"s", **release_files("v1.0.0")}
    emulated.publish(bucket, "", "v1.0.0", files)
    auto = current(f"gs://{PROJECT}/{bucket}")
    assert (auto.artifact_name, auto.checksums_url) == (host_artifact(), f"gs://{bucket}/v1.0.0/checksums.txt")
    explicit = current(f"gs://{PROJECT}/{bucket}/?artifact=site.tar.gz")
    assert explicit.artifact_name == "site.tar.gz" and download(explicit.artifact_url) == b"s"


def test_upload_grace_counts_from_the_version_directory_objects(emulated, monkeypatch) -> None:
    bucket = emulated.bucket()
    emulated.publish(bucket, "", "v1.0.0")
    emulated.put(bucket, "v1.1.0/NOTES.txt", "uploading")
    with pytest.raises(ArtifactNotReady, match=r"release v1.1.0 has no archive .* yet \(published \d+s ago"):
        current(f"gs://{PROJECT}/{bucket}")
    monkeypatch.setattr(dewy.registry, "UPLOAD_GRACE", timedelta(0))
    with pytest.raises(RegistryError, match=r"has no archive .*\(it has NOTES.txt\)") as caught:
        current(f"gs://{PROJECT}/{bucket}")
    assert not isinstance(caught.value, ArtifactNotReady)


def test_audit_record(emulated) -> None:
    bucket = emulated.bucket()
    emulated.publish(bucket, "team/app/", "v1.0.0")
    reg = registry(f"gs://{PROJECT}/{bucket}/team/app")
    release = asyncio.run(reg.current())
    asyncio.run(reg.report(release, "server"))
    asyncio.run(reg.report(release, "server", error="did not start"))
    records = [k for k in emulated.keys(bucket) if "shipped_to_" in k]
    assert len(records) == 1 and records[0].startswith("team/app/v1.0.0/shipped_to_")
    assert emulated.client.bucket(bucket).blob(records[0]).download_as_text().startswith("shipped to ")
    assert asyncio.run(reg.current()).artifact_name == host_artifact()


def test_checksum_is_verified(tmp_path, emulated) -> None:
    bucket = emulated.bucket()
    data = tar_gz({"VERSION": "v1.0.0"})
    emulated.publish(bucket, "", "v1.0.0", {host_artifact(): data, "checksums.txt": f"{'0' * 64}  {host_artifact()}\n"})
    store = ArtifactStore(tmp_path / "cache")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        asyncio.run(store.fetch(current(f"gs://{PROJECT}/{bucket}")))
    emulated.put(bucket, "v1.0.0/checksums.txt", f"{hashlib.sha256(data).hexdigest()}  {host_artifact()}\n")
    assert asyncio.run(store.fetch(current(f"gs://{PROJECT}/{bucket}"))).read_bytes() == data


def paged_listing(method: str, path: str):
    """objects.list the way GCS pages it (the emulator answers everything at once): nextPageToken/pageToken."""
    query = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
    prefix, token = query.get("prefix", ""), query.get("pageToken")
    if prefix == "many/":
        page = {"prefixes": [f"many/v1.0.{i}/" for i in range(1000)], "nextPageToken": "p2"} if not token \
            else {"prefixes": ["many/v2.0.0/"]}
    elif prefix == "many/v2.0.0/":
        item = lambda name: {"kind": "storage#object", "name": f"many/v2.0.0/{name}", "bucket": "paged",
                             "timeCreated": "2024-05-01T12:00:00.000Z", "updated": "2024-05-01T12:00:00.000Z"}
        page = {"items": [item(f"shipped_to_h{i:04d}_server_at_x.txt") for i in range(1000)], "nextPageToken": "p2"} \
            if not token else {"items": [item("zz-site.tar.gz")]}
    else:
        return 404, {"Content-Type": "application/json"}, b'{"error": {"code": 404, "message": "Not Found"}}'
    return 200, {"Content-Type": "application/json"}, json.dumps({"kind": "storage#objects", **page}).encode()


def test_listings_follow_every_page(google_env) -> None:
    with StandIn(paged_listing) as stand_in:
        google_env.setenv("STORAGE_EMULATOR_HOST", stand_in.url)
        release = current(f"gs://{PROJECT}/paged/many?artifact=zz-site.tar.gz")
    assert (release.tag, release.artifact_name) == ("v2.0.0", "zz-site.tar.gz")
    assert sum("pageToken=p2" in path for _, path in stand_in.requests) == 2


def test_unchanged_newest_version_costs_one_request_per_poll(google_env) -> None:
    with StandIn(paged_listing) as stand_in:
        google_env.setenv("STORAGE_EMULATOR_HOST", stand_in.url)
        reg = registry(f"gs://{PROJECT}/paged/many?artifact=zz-site.tar.gz")
        first = asyncio.run(reg.current())
        before = len(stand_in.requests)
        assert asyncio.run(reg.current()) == first
        assert [path.split("?")[0] for _, path in stand_in.requests[before:]] == ["/storage/v1/b/paged/o"] * 2  # 2 pages


def one_line_error(url: str, error=RegistryError, *secrets: str) -> str:
    with pytest.raises(error) as caught:
        current(url) if error is RegistryError else download(url)
    text = str(caught.value)
    assert "\n" not in text and not any(secret in text for secret in secrets)
    return text


def test_missing_bucket_and_object(emulated) -> None:
    bucket = emulated.bucket()
    text = one_line_error(f"gs://{PROJECT}/no-such-bucket/rel")
    assert text == f"gs://{PROJECT}/no-such-bucket/rel: cannot list releases: bucket 'no-such-bucket' does not exist; check the bucket name in the URL"
    text = one_line_error(f"gs://{bucket}/v9/app.tar.gz", ArtifactError)
    assert text.startswith(f"gs://{bucket}/v9/app.tar.gz: cannot download: no such object")


def json_answer(status: int, body: dict):
    return lambda method, path: (status, {"Content-Type": "application/json"}, json.dumps(body).encode())


@pytest.mark.parametrize("answer, expected", [
    (json_answer(403, {"error": {"code": 403, "message": "dewy@p.iam.gserviceaccount.com does not have storage.objects.list access to the Google Cloud Storage bucket."}}),
     "access denied to bucket 'bkt' (dewy@p.iam.gserviceaccount.com does not have storage.objects.list access"),
    (lambda method, path: (200, {"Content-Type": "text/html"}, b"<html>Welcome to nginx!</html>"),
     "answered something that is not the Cloud Storage JSON API"),
    (json_answer(200, {"kind": "storage#objects", "prefixes": 7}), "answered something that is not the Cloud Storage JSON API"),
    (json_answer(401, {"error": {"code": 401, "message": "Anonymous caller does not have storage.objects.list access"}}),
     "demands credentials, but dewy sends none (anonymous: STORAGE_EMULATOR_HOST is set)"),
], ids=["access-denied", "not-json", "wrong-shape", "anonymous-refused"])
def test_answers_the_emulator_cannot_give(google_env, answer, expected) -> None:
    with StandIn(answer) as stand_in:
        google_env.setenv("STORAGE_EMULATOR_HOST", stand_in.url)
        text = one_line_error(f"gs://{PROJECT}/bkt/rel")
    assert text.startswith(f"gs://{PROJECT}/bkt/rel: cannot list releases: ") and expected in text


def test_unreachable_endpoint(google_env) -> None:
    endpoint = closed_port_url()
    google_env.setenv("STORAGE_EMULATOR_HOST", endpoint)
    assert f"cannot reach {endpoint}: connection refused" in one_line_error(f"gs://{PROJECT}/bkt/rel")


def test_server_busy_is_retried(google_env) -> None:
    answers = iter([json_answer(503, {"error": {"code": 503, "message": "Backend Error"}})])

    def busy_once(method: str, path: str):
        return next(answers, paged_listing)(method, path)

    with StandIn(busy_once) as stand_in:
        google_env.setenv("STORAGE_EMULATOR_HOST", stand_in.url)
        assert current(f"gs://{PROJECT}/paged/many?artifact=zz-site.tar.gz").tag == "v2.0.0"


@pytest.fixture
def service_account(tmp_path, google_env):
    """ADC from a service-account key whose token endpoint is a stand-in (the storage API too)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()

    def use(stand_in: StandIn) -> str:
        path = tmp_path / "key.json"
        path.write_text(json.dumps({
            "type": "service_account", "project_id": PROJECT, "private_key_id": "k1", "private_key": key,
            "client_email": f"dewy@{PROJECT}.iam.gserviceaccount.com", "client_id": "1",
            "token_uri": f"{stand_in.url}/token"}))
        google_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
        google_env.setenv("API_ENDPOINT_OVERRIDE", stand_in.url)
        return key.splitlines()[1]

    return use


TOKEN = "ya29.dewy-test-access-token"


def test_revoked_and_expired_credentials(service_account) -> None:
    def revoked(method, path):
        return 400, {"Content-Type": "application/json"}, b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}'

    with StandIn(revoked) as stand_in:
        key_line = service_account(stand_in)
        text = one_line_error(f"gs://{PROJECT}/bkt/rel", RegistryError, key_line)
    assert "the Google credentials could not be refreshed (invalid_grant: Invalid JWT Signature.)" in text

    def expired(method, path):  # a token is issued, but the storage API rejects it each time
        if path.startswith("/token"):
            return 200, {"Content-Type": "application/json"}, json.dumps({"access_token": TOKEN, "expires_in": 3600}).encode()
        return 401, {"Content-Type": "application/json"}, b'{"error": {"code": 401, "message": "Invalid Credentials"}}'

    with StandIn(expired) as stand_in:
        key_line = service_account(stand_in)
        text = one_line_error(f"gs://{PROJECT}/bkt/rel", RegistryError, key_line, TOKEN)
    assert "the Google credentials were rejected (expired or revoked); renew them" in text


def test_no_credentials(google_env, tmp_path) -> None:
    google_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    assert "no Google credentials found" in one_line_error(f"gs://{PROJECT}/bkt/rel")


@pytest.mark.parametrize("url, expected", [
    ("gs://proj/bkt/rel?pre-relese=true", "unknown query key 'pre-relese'; did you mean 'pre-release'?"),
    ("gs://proj/bkt/rel?endpoint=http://h", "unknown query key 'endpoint'"),
    ("gs://my-project", "expected gs://PROJECT/BUCKET/PREFIX"),
    ("gs://my-project/Bad_Bucket/rel", "'Bad_Bucket' is not a bucket name"),
    ("gs://9project/bucket/rel", "'9project' is not a project id"),
    ("gs://bucket/rel?project=9project", "'9project' is not a project id"),
    ("gs://Bad_Bucket/rel?project=p-1", "'Bad_Bucket' is not a bucket name; expected gs://BUCKET/PREFIX?project=PROJECT"),
])
def test_bad_urls_are_usage_errors(url, expected) -> None:
    with pytest.raises(UsageError) as caught:
        registry(url)
    assert expected in str(caught.value)


@pytest.mark.parametrize("url, expected", [
    ("gs://bucket", "names no object"),
    ("gs://bucket/dir/", "names no object"),
    ("gs://bucket/a.tgz?generation=1", "unknown query key 'generation'"),
])
def test_bad_artifact_urls(url, expected) -> None:
    with pytest.raises(UsageError) as caught:
        ARTIFACTS.load(Url.parse(url))
    assert expected in str(caught.value)


def test_bad_url_stops_dewy_at_startup_with_exit_2(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "dewy", "assets", "--registry", "gs://proj/bkt/rel?artifcat=x"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dewy: error: gs://proj/bkt/rel?artifcat=x: unknown query key 'artifcat'; did you mean 'artifact'?"]


def test_download_streams_with_flat_memory(tmp_path, gcs) -> None:
    bucket = gcs.bucket()
    size = 96 << 20
    gcs.client.bucket(bucket).blob("v1.0.0/big.tar.gz").upload_from_filename(str(big_file(tmp_path / "big", size)))
    grew = download_memory_growth(f"gs://{bucket}/v1.0.0/big.tar.gz", tmp_path / "out", {"STORAGE_EMULATOR_HOST": gcs.host})
    assert (tmp_path / "out").stat().st_size == size
    assert grew < 24 << 20, f"peak RSS grew by {grew >> 20} MiB for a {size >> 20} MiB download"


def test_a_trickling_download_is_abandoned_at_its_total_deadline(google_env) -> None:
    google_env.setattr(deadline_module, "DOWNLOAD_FLOOR", 0.5)
    with Trickle() as server:  # a byte every 50 ms: no read ever times out
        google_env.setenv("STORAGE_EMULATOR_HOST", server.origin)
        started = time.monotonic()
        with pytest.raises(ArtifactError) as raised:
            asyncio.run(asyncio.wait_for(ARTIFACTS.load(Url.parse("gs://bucket/v1/app.tar.gz")).download(io.BytesIO()), 5))
    assert time.monotonic() - started < 3
    message = str(raised.value)
    assert message.startswith("gs://bucket/v1/app.tar.gz: the download stalled (")
    assert message.endswith("after the first 0.5 s); dewy retries")



def test_the_download_announces_its_size_so_progress_shows_how_much_is_left(tmp_path, emulated) -> None:
    bucket = emulated.bucket()
    emulated.put(bucket, "v1.0.0/app.tar.gz", os.urandom(3 << 20))
    assert progress_of_download(f"gs://{bucket}/v1.0.0/app.tar.gz", tmp_path).startswith(
        "downloading v1.0.0: 3 MiB of 3 MiB")
