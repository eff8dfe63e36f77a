"""Write dewy(8) to stdout, generated from the CLI's argparse parser (dewy.cli.build_parser).

    python3 packaging/manpage.py > dewy.8

Every option, its metavar, choices and help text come from the parser, so the man page cannot
drift from ``dewy --help``; the sections argparse does not know (files, environment, signals,
exit status) are written here. The date is SOURCE_DATE_EPOCH's (reproducible builds).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dewy import __version__  # noqa: E402
from dewy.cli import build_parser  # noqa: E402


def roff(text: str) -> str:
    """Escape text for a roff line: backslashes, hyphens, and a leading control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def option_line(action: argparse.Action) -> str:
    names = ", ".join(f"\\fB{roff(name)}\\fR" for name in action.option_strings)
    if action.nargs == 0:
        return names
    if action.choices:
        value = "|".join(roff(str(c)) for c in action.choices)
    else:
        value = roff(action.metavar or action.dest.upper())
    return f"{names} \\fI{value}\\fR"


def options(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if not action.option_strings:           # a positional argument
            out += [".TP", f"\\fI{roff(action.metavar or action.dest)}\\fR"]
        else:
            out += [".TP", option_line(action)]
        help_text = action.help or ""
        if action.required:
            help_text = f"{help_text} (required)".strip()
        out.append(roff(help_text) if help_text else "")
    return out


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def usage(name: str, parser: argparse.ArgumentParser) -> str:
    """The parser's own usage line if it has one, else: required options, [options], positionals."""
    if parser.usage:
        return " ".join(parser.usage.split())
    words = [f"dewy {name}"]
    for action in parser._actions:
        if action.required and action.option_strings:
            words.append(f"{action.option_strings[-1]} {action.metavar or action.dest.upper()}")
    words.append("[options]")
    for action in parser._actions:
        if not action.option_strings and action.help != argparse.SUPPRESS:
            words.append(f"[{action.metavar or action.dest}]" if action.nargs == "?" else action.metavar or action.dest)
    return " ".join(words)


STATIC_TOP = r"""
.SH DESCRIPTION
\fBdewy\fR polls a registry (GitHub Releases, S3, Google Cloud Storage, a gRPC service, or a
directory) for the newest semantic version of an application and deploys it:
\fBdewy server\fR runs a server app and restarts it without dropping a request, because dewy
holds the listening sockets and hands them to each app generation;
\fBdewy assets\fR swaps static files atomically;
\fBdewy container\fR rolls an OCI image out replica by replica on Podman or Docker.
A release that fails to start or to become healthy is rolled back and quarantined.
.PP
On a host, dewy runs as the systemd template service \fBdewy@\fR\fINAME\fR\fB.service\fR, which
reads \fI/etc/dewy/NAME.toml\fR (\fBdewy \-\-config\fR) and secrets from \fI/etc/dewy/NAME.env\fR.
Each app generation runs in its own transient unit \fBdewy\-\fR\fINAME\fR\fB\-g\fR\fIN\fR\fB.scope\fR
in \fBdewy.slice\fR; restarting or upgrading dewy leaves the app serving and re\-adopts it.
"""

STATIC_BOTTOM = r"""
.SH URLS
Registries: \fBghr://\fR\fIOWNER/REPO\fR, \fBs3://\fR\fIREGION/BUCKET/PREFIX\fR,
\fBgs://\fR\fIPROJECT/BUCKET/PREFIX\fR, \fBgrpc://\fR\fIHOST:PORT\fR, \fBfile://\fR\fI/DIR\fR,
\fBimg://\fR\fIHOST/REPO\fR (container mode),
with \fBpre\-release=true\fR and \fBartifact=\fR\fINAME\fR query options.
Caches: \fBfile://\fR\fI/DIR\fR, \fBmemory://\fR, \fBredis://\fR\fIHOST:PORT/DB\fR\fB?ttl=\fR,
\fBconsul://\fR\fIHOST:PORT/PREFIX\fR\fB?ttl=\fR.
Notifiers: \fBslack://\fR\fICHANNEL\fR, \fBmail://\fR\fIHOST:PORT/TO\fR.
See /usr/share/doc/dewy/README.md for every option.
.SH FILES
.TP
.I /etc/dewy/NAME.toml
settings of \fBdewy@NAME.service\fR; examples: \fI/etc/dewy/example\-server.toml\fR,
\fI/etc/dewy/example\-assets.toml\fR
.TP
.I /etc/dewy/NAME.env
secrets for \fBdewy@NAME.service\fR (mode 0600), see \fI/etc/dewy/example.env\fR
.TP
.I /var/lib/dewy/NAME/
releases, \fIcurrent\fR and \fI.dewy/state.json\fR of \fBdewy@NAME.service\fR
.TP
.I /var/cache/dewy/NAME/
downloaded artifacts of \fBdewy@NAME.service\fR
.TP
.I /run/dewy/NAME/control
the control socket of \fBdewy@NAME.service\fR (root only): \fBdewy rollback\fR, \fBpin\fR, \fBpause\fR, ...;
\fIDIR/.dewy/control.sock\fR for a dewy started by hand
.SH ENVIRONMENT
.TP
.B DEWY_CACHEDIR
default cache directory
.TP
.BR GITHUB_TOKEN ", " GH_TOKEN ", " GITHUB_API_URL
GitHub Releases (and GitHub Enterprise)
.TP
.BR AWS_ACCESS_KEY_ID ", " AWS_SECRET_ACCESS_KEY ", " AWS_ENDPOINT_URL ", ..."
S3, through the standard AWS credential chain
.TP
.BR GOOGLE_APPLICATION_CREDENTIALS ", " STORAGE_EMULATOR_HOST
Google Cloud Storage (Application Default Credentials)
.TP
.BR GRPC_DEFAULT_SSL_ROOTS_FILE_PATH ", " SSL_CERT_FILE ", " SSL_CERT_DIR
trusted CAs other than the system store
.TP
.BR REDIS_PASSWORD ", " CONSUL_HTTP_TOKEN
shared caches
.TP
.BR SLACK_TOKEN ", " SLACK_API_URL ", " MAIL_USERNAME ", " MAIL_PASSWORD ", " MAIL_FROM
notifiers
.SH SIGNALS
\fBSIGUSR1\fR restarts the app gracefully; \fBSIGHUP\fR is ignored; \fBSIGINT\fR, \fBSIGTERM\fR
and \fBSIGQUIT\fR stop the app gracefully and exit 0.
.SH EXIT STATUS
0: clean stop; 1: unexpected internal error; 2: usage or configuration error.
.SH EXAMPLES
.nf
cp /etc/dewy/example\-server.toml /etc/dewy/shop.toml      # then edit
systemctl enable \-\-now dewy@shop
journalctl \-u dewy@shop DEWY_EVENT=deployed
systemctl kill \-s USR1 dewy@shop
dewy status shop; dewy history shop
dewy rollback shop; dewy unpin shop
dewy pause shop; dewy resume shop
.fi
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1),
.BR systemd.resource\-control (5)
"""


def manpage() -> str:
    parser = build_parser()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    commands = subcommands(parser)
    lines = [
        f'.TH DEWY 8 "{date}" "dewy {__version__}" "System Administration"',
        ".SH NAME",
        "dewy \\- pull\\-based deployment agent: deploys the newest semantic version of an app",
        ".SH SYNOPSIS",
    ]
    for name, _, sub in commands:
        lines += [".PP", roff(usage(name, sub))]
    lines += [".PP", "\\fBdewy \\-\\-config\\fR \\fI/etc/dewy/NAME.toml\\fR",
              ".PP", "\\fBdewy \\-v\\fR | \\fB\\-\\-version\\fR"]
    lines += STATIC_TOP.strip("\n").splitlines()
    lines += [".SH OPTIONS", *options(parser)]
    lines.append(".SH COMMANDS")
    for name, help_text, sub in commands:
        lines += [f'.SS "dewy {name}"', roff(sub.description or help_text)]
        lines += options(sub)
    lines += STATIC_BOTTOM.strip("\n").splitlines()
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(manpage())
