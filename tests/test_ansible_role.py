"""The Ansible role's rendering (packaging/ansible/roles/dewy/filter_plugins/dewy.py) and its example playbook.

The role itself runs against a booted machine in tests/system/test_ansible.py; here is what
needs no machine: that every config dewy documents survives the trip through the TOML filter.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "packaging" / "ansible"
EXAMPLES = sorted((ROOT / "etc" / "dewy").glob("*.toml"))
AWKWARD = "quote \" backslash \\ newline \n tab \t DEL \x7f bell \x07 é 😀 ${HOME} 'single' #hash"


def ansible_playbook() -> Path:
    """The test venv's ansible-playbook (ansible-core is in the test extra)."""
    command = Path(sys.executable).with_name("ansible-playbook")
    if not command.exists():
        pytest.fail(f"{command} is missing: ansible-core is in the test extra (pip install -e '.[test]')")
    return command


def ansible_environment(workdir: Path) -> dict[str, str]:
    """ansible-playbook's environment: the role from this checkout, nothing from the host's or user's configuration."""
    (workdir / "ansible.cfg").write_text("")
    return {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": str(workdir), "ANSIBLE_CONFIG": str(workdir / "ansible.cfg"),
            "ANSIBLE_HOME": str(workdir / "home"), "ANSIBLE_LOCAL_TEMP": str(workdir / "tmp"),
            "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"), "ANSIBLE_NOCOLOR": "true", "ANSIBLE_RETRY_FILES_ENABLED": "false"}


def _filters() -> Any:
    """The role's filter plugin, loaded by path as Ansible loads it."""
    spec = importlib.util.spec_from_file_location("dewy_role_filters", ANSIBLE / "roles" / "dewy" / "filter_plugins" / "dewy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


filters = _filters()


def test_instance_settings_have_defaults_and_no_secrets() -> None:
    instances = [{"name": "shop", "env": {"GITHUB_TOKEN": "s3cret"}}, {"name": "docs.v2", "state": "absent", "config": {"mode": "assets"}}]
    assert filters.dewy_instance_settings(instances) == [{"name": "shop", "state": "started", "config": {}},
                                                         {"name": "docs.v2", "state": "absent", "config": {"mode": "assets"}}]


@pytest.mark.parametrize(("instances", "message"), [
    ([{"name": "../etc/passwd"}], "dewy_instances[0]: the name '../etc/passwd' must be letters"),
    ([{"config": {}}], "dewy_instances[0]: the name None must be letters"),
    ([{"name": "shop"}, {"name": "shop"}], "dewy_instances[1]: the name 'shop' is used twice"),
    ({"name": "shop"}, "dewy_instances: expected a list of instances, not a dict"),
])
def test_bad_instance_lists_are_one_clear_error(instances: Any, message: str) -> None:
    with pytest.raises(AnsibleFilterError) as error:
        filters.dewy_instance_settings(instances)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_every_example_config_renders_to_the_same_document(example: Path) -> None:
    """dewy reads its file with tomllib: the same document is the same settings."""
    document = tomllib.loads(example.read_text())
    assert tomllib.loads(filters.dewy_toml(document)) == document


def test_strings_keys_and_nesting_come_back_verbatim() -> None:
    document = {"registry": AWKWARD, "odd key": [1, 2.5, True, AWKWARD, {"inline": "table"}], "cache": None,
                "server": {"ports": [8000, "127.0.0.1:9000"], "health_path": None},
                "app": {"environment": {"GREETING": AWKWARD}}, "container": {}}
    rendered = filters.dewy_toml(document)
    assert tomllib.loads(rendered) == {"registry": AWKWARD, "odd key": [1, 2.5, True, AWKWARD, {"inline": "table"}],
                                       "server": {"ports": [8000, "127.0.0.1:9000"]},
                                       "app": {"environment": {"GREETING": AWKWARD}}, "container": {}}
    assert "[app]" not in rendered.splitlines(), "a table with only subtables needs no header"


def test_a_value_toml_cannot_hold_is_named_by_its_key() -> None:
    with pytest.raises(AnsibleFilterError, match=r"^dewy_toml: server\.ports\[1\]: a set has no TOML form"):
        filters.dewy_toml({"server": {"ports": [8000, {8001}]}})


def test_env_lines_escape_what_systemd_unescapes() -> None:
    rendered = filters.dewy_env({"TOKEN": 'a"b\\c$d`e f#g', "PORT": 8000, "UNSET": None})
    assert rendered == 'TOKEN="a\\"b\\\\c\\$d\\`e f#g"\nPORT="8000"\n'


@pytest.mark.parametrize(("variables", "message"), [
    ({"BAD-NAME": "s3cret-value"}, "'BAD-NAME' is not an environment variable name"),
    ({"TOKEN": ["s3cret-value"]}, "the value of TOKEN must be a string, not a list"),
    ({"TOKEN": "s3cret\0value"}, "the value of TOKEN contains a NUL byte"),
])
def test_env_errors_name_the_variable_never_the_value(variables: dict[str, Any], message: str) -> None:
    with pytest.raises(AnsibleFilterError) as error:
        filters.dewy_env(variables)
    assert message in str(error.value)
    assert "s3cret" not in str(error.value)


def test_the_example_playbook_passes_ansible_syntax_check(tmp_path: Path) -> None:
    result = subprocess.run([str(ansible_playbook()), "--syntax-check", "-i", "localhost,", str(ANSIBLE / "playbook.yml")],
                            env=ansible_environment(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
