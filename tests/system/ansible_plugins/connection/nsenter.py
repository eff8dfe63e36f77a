"""An Ansible connection into a booted nspawn machine (tests/system/nspawn.py) through nsenter.

The machines have no sshd, and ansible-playbook runs on the host from the test venv: each
command enters all the namespaces of the machine's init, as Machine.run does, and files go
in and out through ``cat``. Inventory: ``ansible_connection=nsenter ansible_nsenter_pid=PID``.
"""

from __future__ import annotations

import subprocess
from typing import BinaryIO

from ansible.errors import AnsibleConnectionFailure, AnsibleFileNotFound
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = """
    name: nsenter
    short_description: run commands in a container's namespaces with nsenter, as root
    description:
        - Runs every command with C(nsenter -t PID -a) in the namespaces of the container's init.
    author: dewy tests
    options:
        pid:
            description: The container's init process, as the host sees it.
            type: int
            required: true
            vars:
                - name: ansible_nsenter_pid
    extends_documentation_fragment:
        - connection_pipelining
"""

ENVIRONMENT = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "HOME": "/root"}


class Connection(ConnectionBase):
    transport = "nsenter"
    has_pipelining = True

    def _connect(self) -> Connection:
        self._connected = True
        return self

    def _nsenter(self, argv: list[str], stdin: bytes | BinaryIO | None = None,
                 stdout: BinaryIO | int = subprocess.PIPE) -> subprocess.CompletedProcess:
        cmd = ["nsenter", "-t", str(self.get_option("pid")), "-a", "--wdns=/", *argv]
        data = stdin if isinstance(stdin, bytes) else None
        source = None if isinstance(stdin, bytes) else stdin if stdin is not None else subprocess.DEVNULL
        return subprocess.run(cmd, input=data, stdin=source, stdout=stdout, stderr=subprocess.PIPE, env=ENVIRONMENT)

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        result = self._nsenter(["/bin/sh", "-c", cmd], in_data)
        return result.returncode, result.stdout, result.stderr

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        try:
            with open(in_path, "rb") as source:
                result = self._nsenter(["/bin/sh", "-c", 'cat > "$1"', "sh", out_path], source)
        except FileNotFoundError:
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}") from None
        if result.returncode:
            raise AnsibleConnectionFailure(f"cannot write {out_path} in the machine: {result.stderr.decode(errors='replace')}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        with open(out_path, "wb") as dest:
            result = self._nsenter(["cat", in_path], stdout=dest)
        if result.returncode:
            raise AnsibleConnectionFailure(f"cannot read {in_path} in the machine: {result.stderr.decode(errors='replace')}")

    def close(self) -> None:
        self._connected = False
