"""What operators' commands do to a running daemon, and the gate its cycle asks before a deploy.

Every command runs on the daemon's loop and answers with what happened; each is logged as one
``control`` event (its journal MESSAGE_ID is fixed) naming the caller's uid, the command and the
versions before and after. Commands that change what runs (``rollback``, ``pin`` to another
version) wait for the cycle in flight and go through the daemon's own activation
(:meth:`dewy.daemon.Daemon.switch`): hooks, graceful restart or rolling update, report, prune; a
pin to a version not kept here fetches it from the registry and deploys it as the cycle deploys a new
release (:meth:`dewy.daemon.Daemon.deploy`: verified, and rolled back if it does not come up).
The others change the state file and take effect at once; ``deploy --now`` wakes the daemon and
answers once that poll is over. With ``"fleet": true``, ``pause``, ``resume`` and ``rollback``
apply to the whole fleet of a ``--rollout`` daemon: they change the fleet's shared document through
the daemon's coordinator (:mod:`dewy.fleet`), and every host follows at its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from dewy import log
from dewy.errors import AppStartError
from dewy.faults import describe
from dewy.registry import Release
from dewy.state import Deployed, Pause, Pin, State, Waiting
from dewy.targets import Candidate, DeployTarget
from dewy.versions import same_tag as _same_tag

if TYPE_CHECKING:
    from dewy.fleet.coordinator import Coordinator

GATES = ("pause", "pin")  # Waiting.gate of a release held back by an operator


class Refused(Exception):
    """A command that cannot be done as asked; its message is the answer."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Control:
    """The commands (one method each, named in :data:`COMMANDS`) and the cycle's gate (:meth:`holds`)."""

    fleet: Coordinator | None = None  # --rollout: the daemon's side of the fleet, for the --fleet commands

    def __init__(self, state: State, target: DeployTarget, switch: Callable[[Candidate], Awaitable[None]],
                 poll_now: asyncio.Event, lookup: Callable[[str], Awaitable[Release]],
                 deploy: Callable[[Release], Awaitable[None]]) -> None:
        self.state = state
        self.target = target
        self.switch = switch
        self.lookup = lookup  # a pin of a version not kept here asks the registry for it (Registry.release)
        self.deploy_release = deploy  # ... and deploys it as the cycle deploys a new release
        self.poll_now = poll_now
        self.lock = asyncio.Lock()  # one cycle or one switching command at a time
        self._asked: list[asyncio.Future] = []  # deploy --now callers, for the next cycle to answer

    async def serve(self, directory: Path) -> None:
        from dewy.control import socket_path
        from dewy.control.channel import serve

        await serve(socket_path(directory), self.handle)

    # -- the cycle's side ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """A cycle: commands that switch wait for it; ``deploy --now`` callers that asked before it get its outcome."""
        async with self.lock:
            asked, self._asked = self._asked, []
            try:
                yield
            finally:
                outcome = self._outcome()
                for future in asked:
                    if not future.done():
                        future.set_result(outcome)

    def _outcome(self) -> dict:
        state = self.state
        current = state.current.tag if state.current else None
        if state.last_error:
            return {"ok": False, "error": f"polled: {state.last_error}", "to": current}
        held = f"; {state.waiting.reason}" if state.waiting else ""
        return {"ok": True, "message": f"polled: {current or 'nothing'} is deployed{held}", "to": current}

    def holds(self, release: Release) -> bool:
        """Whether a pin or a pause keeps ``release`` (the registry's newest, not deployed here) from deploying.
        A pin made by a rollback ends when the registry names a release other than the one rolled back from."""
        state = self.state
        pin = state.pin
        if pin and pin.until and release.tag not in (pin.tag, pin.until):
            log.info("unpinned", f"{release.tag} is published after {pin.until} was rolled back: the pin on "
                     f"{pin.tag} ends", version=release.tag, previous_version=pin.tag)
            state.pin = None
        gate, held = self._hold()
        before = state.waiting
        if gate is None:
            if before and before.gate in GATES:  # what the schedule holds back is its own
                state.waiting = None
                state.save()
            return False
        seen = before.seen if before and before.key == release.cache_key else _now()
        state.waiting = Waiting(release.tag, release.cache_key, gate, f"{release.tag} waits: {held}", "", seen)
        changed = state.waiting != before
        if changed:
            state.save()
        # said once, then at every poll only in the debug log
        (log.info if changed else log.debug)("held", state.waiting.reason, version=release.tag, gate=gate)
        return True

    def status(self) -> list[str]:
        """For systemd's STATUS= line: what holds deploys back (what waits is the state's ``waiting``)."""
        gate, _ = self._hold()
        return [] if gate is None else ["paused" if gate == "pause" else f"pinned on {self.state.pin.tag}"]

    def _hold(self) -> tuple[str | None, str]:
        """The gate (one of GATES) that holds deploys back, and how it reads; None when none does."""
        if self.state.paused:
            return "pause", "paused (dewy resume NAME)"
        if self.state.pin:
            return "pin", f"pinned on {self.state.pin.tag} (dewy unpin NAME)"
        return None, ""

    # -- the commands ----------------------------------------------------------------------

    async def handle(self, request: dict, uid: int) -> dict:
        """Run one request from ``uid`` (root, checked by the channel) and log it as an audit event."""
        name = request["command"]
        before = self._current()
        commands = FLEET_COMMANDS if request.get("fleet") else COMMANDS
        command = commands.get(name)
        try:
            if command is None:
                raise Refused(f"unknown command {name!r}{' --fleet' if request.get('fleet') else ''} "
                              f"(known: {', '.join(commands)})")
            answer = {"ok": True, **await command(self, request, uid)}
        except Refused as exc:
            answer = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a switch that failed and was undone (what ran before serves on), a full disk
            answer = {"ok": False, "error": describe(exc)}
        answer.setdefault("from", before)
        answer.setdefault("to", self._current())
        said = answer.get("message") or answer.get("error")
        (log.info if answer["ok"] else log.warning)(
            "control", f"{name} by uid {uid}: {said}", uid=uid, command=name, from_version=answer["from"],
            to_version=answer["to"], outcome="ok" if answer["ok"] else "refused")
        return answer

    def _current(self) -> str | None:
        return self.state.current.tag if self.state.current else None

    async def pause(self, request: dict, uid: int) -> dict:
        if not self.state.paused:
            self.state.paused = Pause(_now(), uid)
            self.state.save()
        return {"message": f"paused: no deploys until dewy resume; {self._current() or 'nothing'} runs"}

    async def resume(self, request: dict, uid: int) -> dict:
        if not self.state.paused:
            raise Refused("not paused")
        self.state.paused = None
        self.state.save()
        self.poll_now.set()
        waited = self.state.waiting
        return {"message": "resumed: polling now" + (f" ({waited.version} waited)" if waited else "")}

    async def deploy(self, request: dict, uid: int) -> dict:
        future = asyncio.get_running_loop().create_future()
        self._asked.append(future)
        self.poll_now.set()
        return await future

    async def quarantine(self, request: dict, uid: int) -> dict:
        quarantined = self.state.quarantine
        clear = request.get("clear")
        if clear is None:
            listed = {key.partition("--")[0]: reason for key, reason in quarantined.items()}
            return {"message": f"{len(listed)} quarantined", "quarantined": listed}
        keys = [key for key in quarantined if _same_tag(key.partition("--")[0], clear)]
        if not keys:
            raise Refused(f"{clear} is not quarantined (quarantined: {_tags(quarantined) or 'none'})")
        for key in keys:
            del quarantined[key]
        self.state.save()
        self.poll_now.set()
        return {"message": f"{clear} is no longer quarantined: it may be deployed at the next poll",
                "quarantined": {key.partition("--")[0]: reason for key, reason in quarantined.items()}}

    async def unpin(self, request: dict, uid: int) -> dict:
        pin = self.state.pin
        if not pin:
            raise Refused("not pinned")
        self.state.pin = None
        self.state.save()
        self.poll_now.set()
        return {"message": f"unpinned from {pin.tag}: polling now"}

    async def pin(self, request: dict, uid: int) -> dict:
        tag = request.get("version")
        if not isinstance(tag, str) or not tag:
            raise Refused("pin needs a VERSION")
        async with self.lock:
            current = self.state.current
            if current and _same_tag(current.tag, tag):
                pinned, how = current.tag, ""
            else:
                try:
                    pinned, how = await self._pin_to(tag)
                except AppStartError as exc:  # undone: what ran before serves on
                    raise Refused(f"{tag} did not start and was rolled back: {exc}; {self._current() or 'nothing'} "
                                  f"keeps serving and {tag} is quarantined") from None
                how += f"switched from {current.tag if current else 'nothing'}; "
            self.state.pin = Pin(pinned, _now(), uid)
            self.state.save()
        return {"message": f"pinned on {pinned}: {how}no other version is deployed until dewy unpin"}

    async def _pin_to(self, tag: str) -> tuple[str, str]:
        """Switch to ``tag``: kept on this host, else fetched from the registry and deployed as a new release is
        (verified, hooks, activation, rolled back if it does not come up). Its tag, and how it came."""
        kept = next((d for d in reversed(self.state.history) if _same_tag(d.tag, tag)), None)
        if kept is not None:
            self._refuse_quarantined(kept.key, kept.tag)
            candidate = await self.target.recall(kept)
            if candidate is not None:
                await self._again(kept, candidate)
                return kept.tag, ""
        release = await self.lookup(tag)
        self._refuse_quarantined(release.cache_key, release.tag)
        await self.deploy_release(release)
        return release.tag, "fetched from the registry and "

    def _refuse_quarantined(self, key: str, tag: str) -> None:
        if key in self.state.quarantine:
            raise Refused(f"{tag} is quarantined ({self.state.quarantine[key]}); "
                          f"dewy quarantine NAME --clear {tag} first")

    async def rollback(self, request: dict, uid: int) -> dict:
        tag = request.get("version")
        async with self.lock:
            current = self.state.current
            if current is None:
                raise Refused("nothing is deployed: there is nothing to roll back")
            if tag and _same_tag(current.tag, tag):
                raise Refused(f"{current.tag} is what runs")
            entry = self._on_disk(tag) if tag else await self._previous(current)
            await self._switch_to(entry)
            self.state.quarantine[current.key] = f"rolled back by uid {uid} at {_now()[:19]} UTC"
            self.state.pin = Pin(entry.tag, _now(), uid, until=current.tag)
            self.state.save()
        return {"message": f"rolled back from {current.tag} to {entry.tag}: {current.tag} is quarantined and this "
                           f"host stays on {entry.tag} until a newer release is published or dewy unpin",
                "from": current.tag}

    # -- the fleet-wide commands -----------------------------------------------------------

    def _coordinator(self) -> Coordinator:
        if self.fleet is None:
            raise Refused("--fleet needs a daemon started with --rollout (a [rollout] table): this one deploys alone")
        return self.fleet

    async def pause_fleet(self, request: dict, uid: int) -> dict:
        from dewy.fleet.coordinator import describe_pause

        fleet = await self._coordinator().pause(uid)
        self.poll_now.set()  # this host says it is paused at once
        return {"message": f"the fleet is paused ({describe_pause(fleet.paused)}): no host is admitted to a new "
                           "release until dewy resume NAME --fleet; hosts deploying already finish"}

    async def resume_fleet(self, request: dict, uid: int) -> dict:
        from dewy.fleet.coordinator import describe_pause

        ended = await self._coordinator().resume()
        if ended is None:
            raise Refused("the fleet is not paused")
        self.poll_now.set()
        return {"message": f"the fleet is resumed (it was paused {describe_pause(ended)}): the rollout goes on at "
                           "the hosts' next polls"}

    async def rollback_fleet(self, request: dict, uid: int) -> dict:
        if request.get("version"):
            raise Refused("rollback --fleet takes no VERSION: the fleet goes back to its rollout's previous release")
        before, after, hosts = await self._coordinator().roll_back(uid)
        rollout = after.rollout
        if rollout is None:
            raise Refused("the fleet has no rollout to roll back (no release was rolled out through it yet)")
        tag, known = rollout.tag, before.quarantine.get(rollout.tag)
        if known and known.rollback:
            raise Refused(f"{tag} is rolled back for the fleet already ({known.reason})")
        back = after.quarantine[tag].previous
        on_it = sorted(name for name, host in hosts.items() if host.version == tag)
        self.poll_now.set()
        if not back or back["tag"] == tag:
            return {"message": f"{tag} is quarantined for the fleet: no other host deploys it; the fleet recorded no "
                               f"release before it, so the hosts on it stay ({', '.join(on_it) or 'none'}): dewy "
                               "rollback NAME on each", "from": tag, "to": tag}
        return {"message": f"rolled back the fleet from {tag} to {back['tag']}: {tag} is quarantined for the fleet "
                           f"and the {len(on_it)} host(s) on it go back at their next poll ({', '.join(on_it) or 'none'})",
                "from": tag, "to": back["tag"]}

    # -- helpers ---------------------------------------------------------------------------

    def _on_disk(self, tag: str) -> Deployed:
        entry = next((d for d in reversed(self.state.history) if _same_tag(d.tag, tag)), None)
        if entry is None:
            raise Refused(f"{tag} is not on this host (kept here: {self._kept() or 'nothing'}); "
                          f"a version that was never deployed here cannot be rolled back to (dewy pin NAME {tag} "
                          "fetches it)")
        return entry

    async def _previous(self, current: Deployed) -> Deployed:
        """The release deployed here most recently before the current one, still kept and not quarantined."""
        seen = {current.release}
        for entry in reversed(self.state.history):
            if entry.release in seen or entry.key in self.state.quarantine:
                continue
            seen.add(entry.release)
            if await self.target.recall(entry) is not None:
                return entry
        raise Refused(f"no earlier release is kept on this host to roll back to (kept: {self._kept() or 'nothing'})")

    def _kept(self) -> str:
        return ", ".join(dict.fromkeys(d.tag for d in reversed(self.state.history)))

    async def _switch_to(self, entry: Deployed) -> None:
        candidate = await self.target.recall(entry)
        if candidate is None:
            raise Refused(f"{entry.tag} is no longer on this host (pruned: --keep-releases)")
        await self._again(entry, candidate)

    async def _again(self, entry: Deployed, candidate: Candidate) -> None:
        log.info("deploying", f"deploying {entry.tag} again", version=entry.tag,
                 previous_version=self._current())
        await self.switch(candidate)


def _tags(quarantined: dict[str, str]) -> str:
    return ", ".join(key.partition("--")[0] for key in quarantined)


COMMANDS: dict[str, Callable[[Control, dict, int], Awaitable[dict]]] = {
    "rollback": Control.rollback,
    "pin": Control.pin,
    "unpin": Control.unpin,
    "pause": Control.pause,
    "resume": Control.resume,
    "deploy": Control.deploy,
    "quarantine": Control.quarantine,
}
FLEET_COMMANDS: dict[str, Callable[[Control, dict, int], Awaitable[dict]]] = {
    "rollback": Control.rollback_fleet,
    "pause": Control.pause_fleet,
    "resume": Control.resume_fleet,
}
