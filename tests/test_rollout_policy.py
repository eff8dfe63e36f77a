"""``--rollout`` and the ``[rollout]`` table: one policy grammar, exit 2 and one line on bad input or a local cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from dewy.cli import parse
from dewy.config import load
from dewy.errors import UsageError
from dewy.fleet.policy import RolloutPolicy, parse_rollout

SHARED = ["-c", "redis://127.0.0.1:6379/0"]


def test_the_issue_s_example_and_defaults() -> None:
    settings = parse(["assets", "-r", "file:///srv/releases", *SHARED,
                      "--rollout", "canary=1,wave=25%,max-parallel=5,bake=10m"])
    assert settings.rollout == RolloutPolicy(canary=1, wave=0.25, max_parallel=5, bake=600.0)
    assert parse_rollout("wave=3,on-failure=rollback,bake=0,ttl=5s") == RolloutPolicy(
        wave_hosts=3, on_failure="rollback", bake=0.0, ttl=5.0)
    assert parse_rollout("wave=25%").wave_size(20) == 5
    assert parse_rollout("wave=25%").wave_size(2) == 1  # never an empty wave
    assert parse(["assets", "-r", "file:///srv/releases", *SHARED]).rollout is None


def test_the_config_table_takes_the_same_keys(tmp_path) -> None:
    path = tmp_path / "shop.toml"
    path.write_text(textwrap.dedent("""\
        mode = "assets"
        registry = "file:///srv/releases"
        cache = "consul://127.0.0.1:8500/dewy"

        [rollout]
        canary = 2
        wave = "25%"
        max-parallel = 5
        bake = "10m"
        on_failure = "rollback"
        """))
    assert load(path).rollout == RolloutPolicy(canary=2, wave=0.25, max_parallel=5, bake=600.0, on_failure="rollback")


@pytest.mark.parametrize("spec, expected", [
    ("canary", "'canary' is not KEY=VALUE"),
    ("canary=0", "canary: 0 must be at least 1"),
    ("wave=150%", "wave: '150%' is too large (at most 100%)"),
    ("wave=many", "wave: 'many' is not a whole number"),
    ("bake=soon", "bake: 'soon' is not a duration"),
    ("on-failure=retry", "on-failure: 'retry' is not one of halt, rollback"),
    ("waves=2", "unknown key 'waves' (known: canary, wave, max-parallel, bake, on-failure, ttl, bake-check)"),
])
def test_a_bad_policy_is_one_line(spec: str, expected: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse(["assets", "-r", "file:///srv/releases", *SHARED, "--rollout", spec])
    assert str(caught.value).startswith("argument --rollout: ") and expected in str(caught.value)


def test_a_table_error_names_its_line(tmp_path) -> None:
    path = tmp_path / "shop.toml"
    path.write_text('mode = "assets"\nregistry = "file:///srv/r"\ncache = "redis://h"\n[rollout]\ncanary = 1\nbake = "often"\n')
    with pytest.raises(UsageError, match=r"shop.toml:6: rollout.bake: 'often' is not a duration"):
        load(path)


@pytest.mark.parametrize("cache", [[], ["-c", "memory://"], ["-c", "file:///var/cache/dewy"]])
def test_a_local_cache_is_a_startup_error_exit_2(tmp_path, cache: list[str]) -> None:
    run = subprocess.run([sys.executable, "-m", "dewy", "assets", "-r", f"file://{tmp_path}", "-d", str(tmp_path),
                          *cache, "--rollout", "canary=1"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert run.stderr.splitlines() == ["dewy: error: --rollout: a rollout coordinates the hosts of a fleet through a "
                                       "shared cache: add --cache redis://HOST or consul://HOST (cache = \"...\" in a config file)"]


def test_a_local_cache_in_a_config_file_names_the_table(tmp_path) -> None:
    path = tmp_path / "shop.toml"
    path.write_text('mode = "assets"\nregistry = "file:///srv/r"\n\n[rollout]\ncanary = 1\n')
    with pytest.raises(UsageError, match=r"shop.toml:4: rollout: a rollout coordinates the hosts"):
        load(path)


def test_bake_check_is_its_own_flag_and_needs_a_rollout(tmp_path) -> None:
    command = "curl -fs 'http://prometheus:9090/api/v1/query?query=errors,5m'"
    settings = parse(["assets", "-r", "file:///srv/releases", *SHARED, "--rollout", "bake=5m", "--bake-check", command])
    assert settings.rollout.bake_check == command  # commas and all
    with pytest.raises(UsageError, match="--bake-check needs --rollout"):
        parse(["assets", "-r", "file:///srv/releases", *SHARED, "--bake-check", command])
    path = tmp_path / "shop.toml"
    path.write_text(f'mode = "assets"\nregistry = "file:///srv/r"\ncache = "redis://h"\n[rollout]\nbake_check = "{command}"\n')
    assert load(path).rollout.bake_check == command
