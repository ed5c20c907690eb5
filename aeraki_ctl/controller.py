"""The control loop: watch a directory of resources, translate, publish snapshots over ADS.

Changes are seen through ``watchfiles`` (inotify on Linux), debounced so that an editor's burst
of writes is one sync; a ZooKeeper registry, when configured, is polled. Each sync goes through
the ``Ledger`` (``lifecycle.py``): an invalid object is rejected alone and its last valid version
keeps serving. A sync that fails unexpectedly is logged with its traceback and the last published
snapshot keeps serving; the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aeraki_ctl.lifecycle import ACCEPTED, Ledger, ObjectStatus
from aeraki_ctl.resources import ResourceSet, load_directory
from aeraki_ctl.sources.zookeeper import ZooKeeperSource, resources_from_registry
from aeraki_ctl.translate import Options, translate
from aeraki_ctl.xds.server import AdsServer
from aeraki_ctl.xds.snapshot import snapshot_of

log = logging.getLogger(__name__)


class Controller:
    """Keeps the ADS server's snapshot in step with the resources in ``directory``."""

    def __init__(
        self,
        directory: str | Path,
        ads: AdsServer,
        options: Options | None = None,
        poll: float = 0.2,
        quiet: float = 0.2,
        zookeeper: ZooKeeperSource | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.ads = ads
        self.options = options or Options()
        self.poll = poll  # how often the ZooKeeper registry is read
        self.quiet = quiet  # debounce: a sync waits for this long without a file change
        self.zookeeper = zookeeper
        self.registry: dict[str, list[str]] = {}
        self.applied = 0
        self.failures = 0  # syncs that raised (the last good snapshot kept serving)
        self.last_error = ""
        self.last_sync = 0.0
        self.ledger = Ledger()
        self.objects: dict[str, ObjectStatus] = {}
        self.file_problems: list[str] = []
        self.ready = False

    async def _read_registry(self) -> dict[str, list[str]]:
        if self.zookeeper is None:
            return {}
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self.zookeeper.read)
        except Exception as exc:  # noqa: BLE001 - keep the last registry view while ZooKeeper is away
            log.warning("cannot read ZooKeeper at %s: %s", self.zookeeper.hosts, exc)
            return self.registry

    def resources(self) -> ResourceSet:
        """The directory's resources plus the registry's services."""
        out = load_directory(self.directory)
        if self.zookeeper is not None:
            extra, problems = resources_from_registry(self.registry, self.zookeeper.source)
            out.resources.extend(extra)
            out.problems.extend(problems)
        return out

    async def sync(self) -> None:
        """Translate the sources now and publish the result; an invalid object is rejected alone
        (its last valid version keeps serving)."""
        result = self.ledger.sync(self.resources(), lambda rs: translate(rs, self.options))
        changed = {ref: s for ref, s in result.status.items() if _summary(s) != _summary(self.objects.get(ref))}
        for s in changed.values():
            if s.state != ACCEPTED:
                log.error("%s %s: %s", s.ref, s.state, "; ".join(s.problems))
            elif s.problems:
                log.warning("%s: %s", s.ref, "; ".join(s.problems))
        self.objects = result.status
        refs = set(result.status)
        self.file_problems = [str(p) for p in result.unread + result.translation.problems if p.obj not in refs]
        for text in self.file_problems:
            log.warning("%s", text)
        await self.ads.set_snapshot(snapshot_of(result.translation.bootstrap))
        self.applied += 1
        self.last_sync = time.time()
        self.ready = True

    async def _guarded_sync(self) -> None:
        """``sync``, with an unexpected failure logged and survived: the last good snapshot
        keeps serving and the next change tries again."""
        try:
            await self.sync()
        except Exception as exc:  # noqa: BLE001 - supervision: the loop must go on
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("sync failed; the last published configuration keeps serving")

    def status(self) -> dict[str, object]:
        """Per-object status for the admin API (``/status``)."""
        return {
            "objects": {ref: s.as_dict() for ref, s in sorted(self.objects.items())},
            "file_problems": list(self.file_problems),
            "syncs": self.applied,
            "sync_failures": self.failures,
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        """Sync once, then on every change of the directory (debounced) or the registry."""
        import watchfiles

        self.registry = await self._read_registry()
        await self._guarded_sync()
        changed = asyncio.Event()
        watcher = asyncio.ensure_future(_watch(self.directory, changed, self.quiet, watchfiles.awatch))
        try:
            while True:
                try:
                    await asyncio.wait_for(changed.wait(), timeout=self.poll if self.zookeeper is not None else None)
                except TimeoutError:
                    pass
                if watcher.done():  # the watcher died: surface it to the supervisor
                    watcher.result()
                files_changed = changed.is_set()
                changed.clear()
                registry = await self._read_registry()
                registry_changed = registry != self.registry
                self.registry = registry
                if files_changed or registry_changed:
                    log.info("%s changed; translating", "resources" if files_changed else "registry")
                    await self._guarded_sync()
        finally:
            watcher.cancel()


async def _watch(directory: Path, changed: asyncio.Event, quiet: float, awatch: Callable[..., object]) -> None:
    """Set ``changed`` after each debounced burst of YAML file changes under ``directory``."""

    def yaml_only(_change: object, path: str) -> bool:
        return path.endswith((".yaml", ".yml"))

    debounce_ms = max(1, int(quiet * 1000))
    async for _ in awatch(directory, watch_filter=yaml_only, debounce=debounce_ms, step=min(50, debounce_ms), recursive=True):  # type: ignore[attr-defined]
        changed.set()


def _summary(s: ObjectStatus | None) -> tuple[str, tuple[str, ...]] | None:
    return (s.state, tuple(s.problems)) if s is not None else None


async def supervise(run: Callable[[], Awaitable[None]], on_fatal: Callable[[BaseException], None]) -> None:
    """Run the controller loop; if it ever ends with an exception (it should not: syncs are
    guarded), log it with its traceback and call ``on_fatal`` so the process exits non-zero
    and a supervisor restarts it rather than serving a frozen snapshot."""
    try:
        await run()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - the last line of defence
        log.critical("controller loop died; exiting", exc_info=exc)
        on_fatal(exc)
