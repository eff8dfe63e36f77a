"""minisign verification against signatures made by the real minisign tool, legacy and prehashed."""

from __future__ import annotations

import mmap

import pytest

from dewy.signing import MinisignCheck, SignatureRefused, load_keys, parse_public_key, read_key_text, signature_url
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

