"""The control loop: watch a directory of resources, translate, publish snapshots over ADS.

Changes are seen through ``watchfiles`` (inotify on Linux), debounced so that an editor's burst
of writes is one sync; a ZooKeeper registry, when configured, is polled; an extra source (such as
``sources.kubernetes``) calls the loop's ``changed`` hook, and a burst of its changes is one sync
too (debounced by ``quiet``). Each sync goes through
the ``Ledger`` (``lifecycle.py``): an invalid object is rejected alone and its last valid version
keeps serving. Translation is incremental (``incremental.py``: only the hosts a change reaches are
retranslated) and so is the snapshot (``xds.snapshot.SnapshotBuilder``: only their resources are
packed again, and the server pushes only what changed). A sync that fails unexpectedly is logged
with its traceback and the last published snapshot keeps serving; the loop goes on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aeraki_ctl.envoy.snapshot import EnvoySnapshotBuilder
from aeraki_ctl.incremental import IncrementalTranslator
from aeraki_ctl.lifecycle import ACCEPTED, Ledger, ObjectStatus
from aeraki_ctl.resources import Problem, Resource, ResourceSet, load_directory, load_text
from aeraki_ctl.sources import Source
from aeraki_ctl.sources.zookeeper import ZooKeeperSource, resources_from_registry
from aeraki_ctl.sidecar import ScopeRules
from aeraki_ctl.translate import Options
from aeraki_ctl.xds.server import ENVOY, AdsServer
from aeraki_ctl.xds.snapshot import Snapshot, SnapshotBuilder

log = logging.getLogger(__name__)
FREEZE_AFTER = 1000  # hosts retranslated by one sync that make it large (the heap is then frozen)


class Controller:
    """Keeps the ADS server's snapshot in step with the resources in ``directory`` (if any), the
    ZooKeeper registry (if any) and the extra ``sources`` (each started by ``run`` and closed when
    it ends)."""

    def __init__(
        self,
        directory: str | Path | None,
        ads: AdsServer,
        options: Options | None = None,
        poll: float = 0.2,
        quiet: float = 0.2,
        zookeeper: ZooKeeperSource | None = None,
        sources: Sequence[Source] = (),
        initial_sync_timeout: float = 30.0,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.sources = list(sources)
        self.initial_sync_timeout = initial_sync_timeout  # how long the first sync waits for the sources' first lists
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
        self.translator = IncrementalTranslator(self.options)
        self.builder = SnapshotBuilder()
        self.envoy_builder: EnvoySnapshotBuilder | None = None  # made when the first Envoy node connects
        self._envoy_pending: set[str] = set()  # hosts whose Envoy rendering failed, redone next sync
        self._envoy_scopes_pending: ScopeRules | None = None  # Sidecar rules an Envoy rendering that failed did not take
        ads.on_data_plane.append(self._data_plane_connected)
        self._files = _FileCache()
        self.objects: dict[str, ObjectStatus] = {}
        self.on_sync: list[Callable[[dict[str, ObjectStatus]], None]] = []  # called after each sync, before it yields (k8s_status)
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
        """The directory's resources plus the registry's services and the extra sources' objects."""
        out = self._files.load(self.directory) if self.directory is not None else ResourceSet()
        for source in self.sources:
            extra_resources, extra_problems = source.resources()
            out.resources.extend(extra_resources)
            out.problems.extend(extra_problems)
        if self.zookeeper is not None:
            extra, problems = resources_from_registry(self.registry, self.zookeeper.source)
            out.resources.extend(extra)
            out.problems.extend(problems)
        return out

    async def sync(self) -> None:
        """Translate the sources now and publish the result; an invalid object is rejected alone
        (its last valid version keeps serving). The cyclic garbage collector is paused during a
        sync (what a sync makes is freed by reference counting), and after a large one (the
        first, a global change) the heap is frozen: the long-lived objects of tens of thousands
        of resources are then never scanned again, so that a full collection in the middle of a
        one-object sync does not cost hundreds of milliseconds."""
        enabled = gc.isenabled()
        gc.disable()
        redone = self.translator.retranslated
        try:
            await self._sync()
        finally:
            if enabled:
                gc.enable()
        if self.translator.retranslated - redone >= FREEZE_AFTER:
            gc.freeze()

    async def _sync(self) -> None:
        result = self.ledger.sync(self.resources(), self.translator)
        changed = {ref: s for ref, s in result.status.items() if s is not self.objects.get(ref) and _summary(s) != _summary(self.objects.get(ref))}
        for s in changed.values():
            if s.state != ACCEPTED:
                log.error("%s %s: %s", s.ref, s.state, "; ".join(s.problems))
            elif s.problems:
                log.warning("%s: %s", s.ref, "; ".join(s.problems))
        self.objects = result.status
        refs = set(result.status)
        file_problems = [str(p) for p in result.unread + result.translation.problems if p.obj not in refs]
        for text in file_problems:  # like object problems: logged when they appear, not every sync
            if text not in self.file_problems:
                log.warning("%s", text)
        self.file_problems = file_problems
        touched, sidecars_changed = self.translator.take_changes()
        try:
            scopes = ScopeRules(result.translation.sidecars) if sidecars_changed else None
            snapshot = self.builder.build(self.translator.outputs, touched, scopes)
        except BaseException:
            self.translator.give_back(touched, sidecars_changed)  # the next sync packs them
            self._after_sync()
            raise
        envoy = self._render_envoy(touched, scopes) if self.envoy_builder is not None else None
        self._after_sync()  # before any await: the hooks read the sources' caches as this sync did
        await self.ads.set_snapshot(snapshot)
        if envoy is not None:
            await self.ads.set_snapshot(envoy, ENVOY)
        self.applied += 1
        self.last_sync = time.time()
        self.ready = True

    def _data_plane_connected(self, data_plane: str) -> None:
        """The first Envoy node: from now on every sync also renders the Envoy snapshot (made
        here from every host, before that node's first response)."""
        if data_plane != ENVOY or self.envoy_builder is not None:
            return
        builder = EnvoySnapshotBuilder(port_offset=self.options.envoy_port_offset, identity_dir=self.options.identity_dir)
        try:
            self.ads.install(builder.build(self.translator.outputs, list(self.translator.outputs), self.builder.snapshot.scopes), ENVOY)
        except Exception:  # noqa: BLE001 - an Envoy node must not stop serving our proxies
            self._envoy_pending, self._envoy_scopes_pending = set(self.translator.outputs), self.builder.snapshot.scopes
            log.exception("cannot render the configuration for Envoy; Envoy nodes get nothing until the next sync")
        self.envoy_builder = builder
        self._after_sync()  # the objects' Envoy status, now

    def _render_envoy(self, touched: set[str], scopes: ScopeRules | None) -> Snapshot | None:
        """The Envoy snapshot of this sync; a failure is logged and leaves Envoy nodes on the last
        one (the hosts and Sidecar rules are redone next time), never our proxies without theirs."""
        assert self.envoy_builder is not None  # noqa: S101 - called only once an Envoy node connected
        hosts, self._envoy_pending = self._envoy_pending | touched, set()
        scopes = scopes if scopes is not None else self._envoy_scopes_pending
        self._envoy_scopes_pending = None
        try:
            return self.envoy_builder.build(self.translator.outputs, hosts, scopes)
        except Exception:  # noqa: BLE001 - Envoy's rendering must not fail our proxies' sync
            self._envoy_pending, self._envoy_scopes_pending = hosts, scopes
            log.exception("cannot render the configuration for Envoy; Envoy nodes keep the last one")
            return None

    def _after_sync(self) -> None:
        """Each object's Envoy status (once an Envoy node connected), then the after-sync hooks."""
        if self.envoy_builder is not None:
            try:
                envoy = self.envoy_builder.statuses(self.translator.owner_of)
            except Exception:  # noqa: BLE001 - a status step never stops serving
                log.exception("cannot say what Envoy nodes get of each object")
                envoy = {}
            for ref, s in self.objects.items():
                s.envoy = envoy.get(ref)
        for hook in self.on_sync:
            try:
                hook(self.objects)
            except Exception:  # noqa: BLE001 - a status hook never stops serving
                log.exception("after-sync hook failed")

    def envoy_problems(self) -> list[Problem]:
        """What Envoy nodes cannot be given, per object (empty until an Envoy node connected)."""
        return self.envoy_builder.problems(self.translator.owner_of) if self.envoy_builder is not None else []

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
        """Per-object status for the admin API (``/status``); ``envoy``: per object, what Envoy
        nodes cannot be given or get approximated."""
        envoy: dict[str, list[str]] = {}
        for p in self.envoy_problems():
            envoy.setdefault(p.obj, []).append(f"{'error' if p.fatal else 'warning'}: {p.path + ': ' if p.path else ''}{p.reason}")
        return {
            "objects": {ref: s.as_dict() for ref, s in sorted(self.objects.items())},
            "envoy": envoy,
            "file_problems": list(self.file_problems),
            "syncs": self.applied,
            "sync_failures": self.failures,
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        """Sync once, then on every change of the directory (debounced), the registry or an extra
        source (debounced)."""
        changed = asyncio.Event()
        notified = [False]

        def source_changed() -> None:  # the hook extra sources call (on the loop's thread)
            notified[0] = True
            changed.set()

        watcher: asyncio.Future[None] | None = None
        try:
            for source in self.sources:
                await source.start(source_changed)
            for source in self.sources:
                if not await source.wait_synced(self.initial_sync_timeout):
                    log.warning("%s has not listed everything after %.0fs; serving what it has", getattr(source, "name", source), self.initial_sync_timeout)
            self.registry = await self._read_registry()
            notified[0] = False
            changed.clear()
            await self._guarded_sync()
            if self.directory is not None:
                import watchfiles

                watcher = asyncio.ensure_future(_watch(self.directory, changed, self.quiet, watchfiles.awatch))
            while True:
                try:
                    await asyncio.wait_for(changed.wait(), timeout=self.poll if self.zookeeper is not None else None)
                except TimeoutError:
                    pass
                if watcher is not None and watcher.done():  # the watcher died: surface it to the supervisor
                    watcher.result()
                sources_changed = notified[0]
                if sources_changed:  # debounce: wait for a quiet moment (bounded) so a burst is one sync
                    deadline = time.monotonic() + 10 * self.quiet
                    while time.monotonic() < deadline:
                        changed.clear()
                        try:
                            await asyncio.wait_for(changed.wait(), timeout=self.quiet)
                        except TimeoutError:
                            break
                files_changed = changed.is_set() or sources_changed
                changed.clear()
                notified[0] = False
                registry = await self._read_registry()
                registry_changed = registry != self.registry
                self.registry = registry
                if files_changed or registry_changed:
                    log.info("%s changed; translating", "resources" if files_changed else "registry")
                    await self._guarded_sync()
        finally:
            if watcher is not None:
                watcher.cancel()
            for source in self.sources:
                await source.close()


async def _watch(directory: Path, changed: asyncio.Event, quiet: float, awatch: Callable[..., object]) -> None:
    """Set ``changed`` after each debounced burst of YAML file changes under ``directory``."""

    def yaml_only(_change: object, path: str) -> bool:
        return path.endswith((".yaml", ".yml"))

    debounce_ms = max(1, int(quiet * 1000))
    async for _ in awatch(directory, watch_filter=yaml_only, debounce=debounce_ms, step=min(50, debounce_ms), recursive=True):  # type: ignore[attr-defined]
        changed.set()


class _FileCache:
    """The directory read again at each sync, a file parsed again only when its size or
    modification time changed (the objects of the others are the same objects, so the
    incremental translator sees them unchanged at the cost of a look)."""

    def __init__(self) -> None:
        self._files: dict[Path, tuple[tuple[int, int], ResourceSet]] = {}

    def load(self, directory: Path) -> ResourceSet:
        if not directory.is_dir():
            return load_directory(directory)
        out = ResourceSet()
        refs: dict[str, Resource] = {}
        seen: dict[Path, tuple[tuple[int, int], ResourceSet]] = {}
        for file in sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()):
            try:
                st = file.stat()
            except OSError:
                continue
            stamp = (st.st_mtime_ns, st.st_size)
            cached = self._files.get(file)
            if cached is None or cached[0] != stamp:
                one = ResourceSet()
                try:
                    load_text(file.read_text(encoding="utf-8"), str(file), one)
                except (OSError, UnicodeDecodeError) as exc:
                    one.problems.append(Problem(str(file), "-", f"cannot be read: {exc}"))
                    stamp = (-1, -1)  # read it again next time
                cached = (stamp, one)
            seen[file] = cached
            _merge(out, cached[1], refs)
        self._files = seen
        return out


def _merge(out: ResourceSet, one: ResourceSet, refs: dict[str, Resource]) -> None:
    """One file's objects into ``out``, an object defined again (in another file) reported as
    ``load_directory`` reports it."""
    for r in one.resources:
        first = refs.get(r.ref)
        if first is not None:
            where = f"{first.source}:{first.line}" if first.line else first.source
            out.problems.append(Problem(r.source, r.ref, f"defined twice (first at {where}); this one is ignored", line=r.line))
            continue
        refs[r.ref] = r
        out.resources.append(r)
    out.problems.extend(one.problems)


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
