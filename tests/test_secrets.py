"""Credentials in URLs never show: masking works on the text, whether or not the URL parses as intended."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dewy.urls import redact

# (where the URL goes, the URL, the secret it holds)
HOSTILE = [
    ("registry", "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY@us-east-1/bucket/app", "wJalrXUtnFEMI"),
    ("registry", "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY@us-east-1/bucket/app", "K7MDENG"),
    ("registry", "s3://us-east-1/bucket/app?endpoint=http://KEYID:Sup3rSecretValue@127.0.0.1:9000", "Sup3rSecretValue"),
    ("registry", "s3://us-east-1/bucket/app?endpoint=http%3A%2F%2FKEYID%3ASup3rSecretValue%40127.0.0.1", "Sup3rSecretValue"),
    ("registry", "s3://us-east-1/bucket/app?endpoint=http://KEYID:Sup3r/SecretValue@127.0.0.1:9000", "SecretValue"),
    ("registry", "ghr://user:GhSecretValue@[oops", "GhSecretValue"),
    ("registry", "gs://user:GsSecretValue@my-project/bucket", "GsSecretValue"),
    ("registry", "grpc://user:GrpcSecretValue@127.0.0.1:9000", "GrpcSecretValue"),
    ("registry", "grpc://user:Grpc/SecretValue@127.0.0.1:9000", "SecretValue"),
    ("cache", "redis://user:pa/ssRedisSecret@127.0.0.1:6379/0", "ssRedisSecret"),
    ("cache", "redis://user:RedisSecretValue@[::1", "RedisSecretValue"),
    ("cache", "redis://user:pa?RedisSecretValue@127.0.0.1", "RedisSecretValue"),
    ("cache", "consul://user:ConsulSecretValue@127.0.0.1:8500", "ConsulSecretValue"),
    ("notifier", "mail://user:MailSecretValue@[::1/ops@example.com", "MailSecretValue"),
    ("notifier", "mail://smtp.example.com:587/ops@example.com?password=MailSecretValue&tls=maybe", "MailSecretValue"),
]
FLAGS = {"registry": "-r", "cache": "-c", "notifier": "--notifier"}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dewy", *args], capture_output=True, text=True, timeout=30, cwd=cwd)


@pytest.mark.parametrize("where, url, secret", HOSTILE)
def test_redact_masks_whatever_the_shape(where: str, url: str, secret: str) -> None:
    assert secret not in redact(url)
    assert "***" in redact(url)


@pytest.mark.parametrize("where, url, secret", HOSTILE)
def test_flags_refuse_without_printing_the_secret(tmp_path: Path, where: str, url: str, secret: str) -> None:
    settings = {"registry": "file:///srv/releases", "cache": "memory://", where: url}
    args = ["assets", "-d", str(tmp_path / "site")] + [a for key, value in settings.items() for a in (FLAGS[key], value)]
    result = run(args, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("dewy: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert secret not in result.stderr


@pytest.mark.parametrize("where, url, secret", HOSTILE)
def test_config_file_refuses_without_printing_the_secret(tmp_path: Path, where: str, url: str, secret: str) -> None:
    lines = ['mode = "assets"', f'dir = "{tmp_path / "site"}"',
             f'registry = "{url}"' if where == "registry" else 'registry = "file:///srv/releases"']
    if where == "cache":
        lines.append(f'cache = "{url}"')
    if where == "notifier":
        lines.append(f'notifiers = ["{url}"]')
    path = tmp_path / "demo.toml"
    path.write_text("\n".join(lines) + "\n")
    result = run(["--config", str(path)], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"dewy: error: {path}:") and result.stderr.count("\n") == 1, result.stderr
    assert secret not in result.stderr


def test_endpoint_credentials_from_the_environment_are_refused_unprinted(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": "http://KEYID:Sup3rSecretValue@127.0.0.1:9000"}
    result = subprocess.run([sys.executable, "-m", "dewy", "assets", "-r", "s3://us-east-1/bucket/app", "-d",
                             str(tmp_path / "site"), "-c", "memory://"], capture_output=True, text=True, timeout=30,
                            cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "AWS_ENDPOINT_URL=http://KEYID:***@127.0.0.1:9000: credentials do not belong" in result.stderr
    assert "Sup3rSecretValue" not in result.stderr
