"""The control loop: watch a directory of resources, translate, publish snapshots over ADS."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aeraki_ctl.resources import ResourceSet, load_directory
from aeraki_ctl.sources.zookeeper import ZooKeeperSource, resources_from_registry
from aeraki_ctl.translate import Options, translate
from aeraki_ctl.xds.server import AdsServer
from aeraki_ctl.xds.snapshot import snapshot_of

log = logging.getLogger(__name__)


def fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a resource file is added, removed or written."""
    out = []
    for p in sorted(directory.rglob("*")):
        if p.suffix in (".yaml", ".yml") and p.is_file():
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


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
        self.poll = poll
        self.quiet = quiet
        self.zookeeper = zookeeper
        self.registry: dict[str, list[str]] = {}
        self.applied = 0

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
        """Translate the sources now and publish the result."""
        result = translate(self.resources(), self.options)
        for p in result.problems:
            (log.error if p.fatal else log.warning)("%s", p)
        await self.ads.set_snapshot(snapshot_of(result.bootstrap))
        self.applied += 1

    async def run(self) -> None:
        """Sync once, then on every change (debounced: after ``quiet`` seconds without change)."""
        last = fingerprint(self.directory)
        self.registry = await self._read_registry()
        await self.sync()
        while True:
            await asyncio.sleep(self.poll)
            registry = await self._read_registry()
            if registry != self.registry:
                self.registry = registry
                log.info("registry changed; translating")
                await self.sync()
            current = fingerprint(self.directory)
            if current == last:
                continue
            while True:  # wait for the writes to settle
                await asyncio.sleep(self.quiet)
                settled = fingerprint(self.directory)
                if settled == current:
                    break
                current = settled
            last = current
            log.info("resources changed; translating")
            await self.sync()
