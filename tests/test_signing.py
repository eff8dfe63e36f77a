"""minisign verification against signatures made by the real minisign tool, legacy and prehashed."""

from __future__ import annotations

import asyncio
import gzip
import mmap
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from dewy.archive import extract
from dewy.errors import ArtifactNotReady
from dewy.registry import REGISTRIES, Release
from dewy.releases import Releases
from dewy.store import ArtifactStore
from dewy.signing import MinisignCheck, SignatureRefused, load_keys, parse_public_key, read_key_text, signature_url
from tests.conftest import host_artifact, publish
from tests.github_server import GitHubServer
from tests.minisign_tool import generate, sign

FORMS = [pytest.param(False, id="prehashed"), pytest.param(True, id="legacy")]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    return generate(directory, "first"), generate(directory, "second")


def artifact(tmp_path, data: bytes = b"release bytes " * 50_000, name: str = "app_linux_amd64.tar.gz"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_bytes(data)
    return path


def check(path, signature, trusted) -> str:
    """Verify ``path`` as the store does: the bytes streamed in chunks, the whole file mapped for the legacy form."""
    verifier = MinisignCheck(signature.read_bytes(), load_keys(str(k.public) for k in trusted), path.name, "v1.0.0")
    with path.open("rb") as stream:
        while chunk := stream.read(65536):
            verifier.update(chunk)
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as whole:
            return str(verifier.verify(whole))


@pytest.mark.parametrize("legacy", FORMS)
def test_a_good_signature_verifies_and_names_key_and_comment(tmp_path, keys, legacy) -> None:
    path = artifact(tmp_path)
    signature = sign(keys[0], path, legacy=legacy, comment="built by CI run 42")
    assert check(path, signature, keys[:1]) == f"minisign key {keys[0].id} (built by CI run 42)"


@pytest.mark.parametrize("legacy", FORMS)
def test_altered_bytes_are_refused(tmp_path, keys, legacy) -> None:
    path = artifact(tmp_path)
    signature = sign(keys[0], path, legacy=legacy)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(SignatureRefused, match=f"^v1.0.0: refused: its minisign signature does not match the downloaded"
                                               f" bytes \\(key {keys[0].id}\\); the artifact was not deployed$"):
        check(path, signature, keys[:1])


@pytest.mark.parametrize("legacy", FORMS)
def test_a_signature_by_an_untrusted_key_is_refused_before_any_byte(tmp_path, keys, legacy) -> None:
    path = artifact(tmp_path)
    signature = sign(keys[1], path, legacy=legacy)
    with pytest.raises(SignatureRefused, match=f"signed by minisign key {keys[1].id}, which is not trusted \\(trusted: {keys[0].id}\\)"):
        MinisignCheck(signature.read_bytes(), load_keys([str(keys[0].public)]), path.name, "v1.0.0")


def test_an_altered_trusted_comment_is_refused(tmp_path, keys) -> None:
    path = artifact(tmp_path)
    signature = sign(keys[0], path, comment="v1.0.0 for staging")
    signature.write_text(signature.read_text().replace("for staging", "for production"))
    with pytest.raises(SignatureRefused, match="trusted comment of app_linux_amd64.tar.gz.minisig was altered"):
        check(path, signature, keys[:1])


def test_a_signature_made_for_another_file_is_refused(tmp_path, keys) -> None:
    """minisign's default trusted comment names the file: the same signed bytes under another name are refused."""
    other = artifact(tmp_path, name="old_linux_amd64.tar.gz")
    signature = sign(keys[0], other)
    path = artifact(tmp_path)
    with pytest.raises(SignatureRefused, match="made for 'old_linux_amd64.tar.gz', not 'app_linux_amd64.tar.gz'"):
        check(path, signature, keys[:1])
    assert check(other, signature, keys[:1]).startswith(f"minisign key {keys[0].id} (timestamp:")


def test_either_of_two_trusted_keys_verifies(tmp_path, keys) -> None:
    for key in keys:
        path = artifact(tmp_path / key.id)
        assert check(path, sign(key, path), keys).startswith(f"minisign key {key.id} ")


def test_an_unreadable_signature_is_refused(tmp_path, keys) -> None:
    with pytest.raises(SignatureRefused, match="its signature x.tgz.minisig is unreadable: not a minisign signature"):
        MinisignCheck(b"<html>Not Found</html>", load_keys([str(keys[0].public)]), "x.tgz", "v1.0.0")


def test_a_trusted_key_is_a_file_the_key_itself_or_a_credential(tmp_path, keys, monkeypatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "minisign.pub").write_bytes(keys[1].public.read_bytes())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.chdir(tmp_path)
    loaded = load_keys([str(keys[0].public), keys[0].line, "minisign.pub"])
    assert [k.id for k in loaded] == [keys[0].id, keys[0].id, keys[1].id]
    with pytest.raises(ValueError, match="^nothing.pub: cannot read the key file: No such file or directory$"):
        load_keys(["nothing.pub"])
    (tmp_path / "cosign.pub").write_text("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="^cosign.pub: not a minisign public key"):
        load_keys(["cosign.pub"])
    assert read_key_text(keys[0].line, {}) == keys[0].line
    assert parse_public_key(keys[0].public.read_text()).id == keys[0].id


def test_the_signature_lies_beside_the_artifact() -> None:
    assert signature_url("file:///srv/reg/v1/app.tgz") == "file:///srv/reg/v1/app.tgz.minisig"
    assert signature_url("ghr://o/r/tag/v1/app.tgz?asset=12") == "ghr://o/r/tag/v1/app.tgz.minisig"
    assert (signature_url("s3://eu-west-1/b/p/v1/app.tgz?endpoint=http://127.0.0.1:9000")
            == "s3://eu-west-1/b/p/v1/app.tgz.minisig?endpoint=http://127.0.0.1:9000")
    assert signature_url("gs://bucket/p/v1/app%20x.tgz") == "gs://bucket/p/v1/app%20x.tgz.minisig"



def test_a_github_release_asset_is_verified_against_the_asset_beside_it(tmp_path, keys, monkeypatch) -> None:
    """The ghr:// registry names the .minisig asset; the store checks it, and re-checks a stored archive
    against the keys trusted now (a key rotated out no longer vouches for what it signed)."""
    path = artifact(tmp_path, name=host_artifact())
    signature = sign(keys[0], path, comment="release v1.0.0")
    with GitHubServer() as github:
        monkeypatch.setenv("GITHUB_API_URL", github.url)
        github.add_release("acme", "app", "v1.0.0", {path.name: path.read_bytes(), signature.name: signature.read_bytes()})
        first, second = load_keys([str(keys[0].public)]), load_keys([str(keys[1].public)])
        release = ghr_release()
        asset = next(a for a in github.release("acme", "app", "v1.0.0").assets if a.name == signature.name)
        assert release.signature_url == f"ghr://acme/app/tag/v1.0.0/{signature.name}?asset={asset.id}"
        store = ArtifactStore(tmp_path / "cache", first)
        stored = asyncio.run(store.fetch(release))
        assert stored.read_bytes() == path.read_bytes()
        assert str(store.signed[release.cache_key]) == f"minisign key {keys[0].id} (release v1.0.0)"
        with pytest.raises(SignatureRefused, match=f"signed by minisign key {keys[0].id}, which is not trusted"):
            asyncio.run(ArtifactStore(tmp_path / "cache", second).fetch(release))
        github.add_release("acme", "app", "v1.1.0", {path.name: path.read_bytes()},
                           published_at=datetime.now(timezone.utc) - timedelta(hours=1))
        unsigned = ghr_release()
        assert unsigned.tag == "v1.1.0" and unsigned.signature_url is None
        with pytest.raises(SignatureRefused, match="the release has no signature"):
            asyncio.run(store.fetch(unsigned))
        assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [release.cache_key]


def test_a_young_release_without_signature_is_waited_for(tmp_path, keys) -> None:
    registry = tmp_path / "reg"
    publish(registry, "v1.0.0", {"a": "1"})
    release = asyncio.run(REGISTRIES.load(REGISTRIES.url(registry.as_uri())).current())
    with pytest.raises(ArtifactNotReady, match=r"has no signature app_\S+.minisig yet \(published \d+s ago"):
        ArtifactStore(tmp_path / "cache", load_keys([keys[0].line])).check_ready(release)
    ArtifactStore(tmp_path / "cache").check_ready(release)  # nothing to wait for without verify=


def ghr_release() -> Release:
    async def run() -> Release:
        registry = REGISTRIES.load(REGISTRIES.url("ghr://acme/app"))
        try:
            found = await registry.current()
        finally:
            await registry.aclose()
        return found

    return asyncio.run(run())


def dewy(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dewy", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("query, keys_given, error", [
    ("?verify=minisign", False, r"verify=minisign needs the publisher's public key: --trusted-key FILE\|KEY"),
    ("", True, "trusted keys are set but the registry URL has no verify=minisign: add it, or nothing is verified"),
    ("?verify=cosign", True, "verify='cosign' cannot be used here: archives are verified with verify=minisign"),
    ("?verify=gpg", True, "verify='gpg' cannot be used here"),
])
def test_verification_settings_that_do_not_fit_are_usage_errors(tmp_path, keys, query, keys_given, error) -> None:
    (tmp_path / "reg").mkdir()
    args = ["--trusted-key", str(keys[0].public)] if keys_given else []
    result = dewy("assets", "-r", (tmp_path / "reg").as_uri() + query, "-d", str(tmp_path / "site"), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert re.fullmatch(f"dewy: error: file://{tmp_path}/reg{re.escape(query)}: {error}.*\n", result.stderr), result.stderr


def test_trusted_keys_from_a_config_file_and_flags_are_read_at_startup(tmp_path, keys) -> None:
    """Read when dewy starts (not by ``dewy status``, which has no systemd credentials): a bad one is one line, exit 2."""
    (tmp_path / "reg").mkdir()
    registry = (tmp_path / "reg").as_uri() + "?verify=minisign"
    config = tmp_path / "site.toml"
    config.write_text(f'mode = "assets"\nregistry = "{registry}"\n'
                      f'dir = "{tmp_path / "site"}"\ntrusted_keys = ["{keys[0].public}", "missing.pub"]\n')
    result = dewy("--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (f"dewy: error: {config}:2: registry: {registry}: verify=minisign: trusted key missing.pub:"
                             " cannot read the key file: No such file or directory\n")
    result = dewy("assets", "-r", registry, "-d", str(tmp_path / "site"), "--trusted-key", "RWQnotakey", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (f"dewy: error: {registry}: verify=minisign: trusted key RWQnotakey: cannot read the key file:"
                             " No such file or directory\n")


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar"])
@pytest.mark.parametrize("legacy", FORMS)
def test_the_signature_is_checked_as_the_release_extracts_and_a_refusal_leaves_nothing(tmp_path, keys, legacy,
                                                                                         suffix) -> None:
    """One pass: the signature is one of the store's verifiers, fed the bytes the extraction reads; the legacy form
    is checked over the spooled file after the last byte (a plain .tar otherwise goes from memory into its release).
    Bytes other than the signed ones store and name nothing."""
    registry = tmp_path / "reg"
    archive = publish(registry, "v1.0.0", {"index.html": "x" * 200_000}, name=host_artifact(suffix=suffix))
    if suffix == ".tar":
        archive.write_bytes(gzip.decompress(archive.read_bytes()))
    good = sign(keys[0], archive, legacy=legacy, comment="CI run 7")
    releases = Releases(tmp_path / "site")

    async def deploy(store: ArtifactStore) -> None:
        release = await REGISTRIES.load(REGISTRIES.url(registry.as_uri())).current()
        name = releases.new_name()
        with releases.building(name) as partial:
            await store.fetch(release, lambda reader: extract(reader, partial))
            releases.complete(name)

    other = artifact(tmp_path / "other", data=archive.read_bytes()[::-1], name=archive.name)
    sign(keys[0], other, legacy=legacy).replace(good)  # a valid signature, but of other bytes
    store = ArtifactStore(tmp_path / "cache", load_keys([str(keys[0].public)]))
    with pytest.raises(SignatureRefused, match="does not match the downloaded bytes"):
        asyncio.run(deploy(store))
    assert list((tmp_path / "cache").iterdir()) == [] and list(releases.directory.iterdir()) == []

    sign(keys[0], archive, legacy=legacy, comment="CI run 7")
    asyncio.run(deploy(store))
    (built,) = releases.directory.iterdir()
    assert (built / "index.html").read_text() == "x" * 200_000
    assert list(store.signed.values())[0].comment == "CI run 7"
