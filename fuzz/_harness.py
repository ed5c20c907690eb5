"""Shared logic of the atheris harnesses (one tiny file per target imports it).

The invariant (h11's): a codec's ``decode`` returns a Message or NEED_DATA, or raises the
documented ``MetaProtocolError``; so do the other SPI methods the core calls on what was decoded
(lazy metadata included). Anything else escaping ``Target.test_one_input`` is a finding, as is a
decode that makes no progress (the core would spin), a frame or decompressed payload beyond the
configured limit, or the fast paths (``decode_run``, ``batch``, ``frame_replies``) framing the
same bytes differently from ``decode``.

Input layout of the codec targets: byte 0 picks the codec config (and client profile), byte 1
picks where the rest is split into reads and a few SPI arguments, bytes 2.. are the wire bytes.

Campaigns (``scripts/fuzz``) set ``FUZZ_IGNORE_KNOWN=1`` so that crashes already listed in
``fuzz/known_open.txt`` (and signatures in ``$FUZZ_IGNORE_FILE``) do not stop the search for new
ones; the signature of a new crash is written to ``$FUZZ_SIGNATURE_OUT`` before it is re-raised.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaprotocol.spi import ClientCodec, CodecFactory, Message, MetaProtocolError
from metaprotocol.testing.drive import Driver, Finding, mutations, split

__all__ = ["Finding", "Target", "Variant", "codec_target", "main", "minimize", "mutations"]

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent
KNOWN_OPEN = FUZZ_DIR / "known_open.txt"
REGRESSIONS = FUZZ_DIR / "regressions"
CORPUS = FUZZ_DIR / "corpus"

def vectors_dir() -> Path:
    """The shared golden vectors (``METAPROTOCOL_VECTORS`` overrides, as in tests/vectors.py)."""
    return Path(os.environ.get("METAPROTOCOL_VECTORS", ROOT.parent / "shared" / "testdata"))


def load_vectors(relative: str) -> list[dict[str, Any]]:
    """The vectors of one file; [] when the directory is absent (seeds are then hand-made only)."""
    path = vectors_dir() / relative
    if not path.exists():
        return []
    vectors: list[dict[str, Any]] = json.loads(path.read_text())["vectors"]
    return vectors


def corpus_files(name: str) -> list[bytes]:
    """Hand-made seeds committed under fuzz/corpus/<name>/."""
    folder = CORPUS / name
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()] if folder.is_dir() else []


# -- crash signatures ---------------------------------------------------------------------------


_TOPS = ("codecs", "metaprotocol_codecs", "metaprotocol", "aeraki_ctl", "metaprotocol_memcached")


def _where(filename: str) -> str | None:
    """``filename`` relative to the repo (``codecs/...`` also for an installed or copied tree);
    None for files outside it (stdlib, site-packages, the harness itself)."""
    parts = Path(filename).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in _TOPS and "site-packages" not in parts and "fuzz" not in parts[i - 1 : i]:
            top = "codecs" if parts[i] == "metaprotocol_codecs" else parts[i]
            return "/".join((top, *parts[i + 1 :]))
    return None


def signature(exc: BaseException) -> str:
    """``ExceptionType file:function`` of the innermost frame in the code under test (stable
    across line shifts, so a known defect still matches after unrelated edits)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, Finding) and frames:  # a broken invariant: named by the check that saw it
        fr = frames[-1]
        path = Path(fr.filename)
        rel = "/".join(path.parts[-2:]) if path.parent.name in ("fuzz", "testing") else path.name
        what = re.split(r"[\d'\"(\[{]", str(exc), maxsplit=1)[0].strip().rstrip(":,")
        return f"Finding {rel}:{fr.name}: {what}"
    if isinstance(exc, RecursionError):  # where the limit trips varies: name the recursive frame
        counts = Counter((_where(fr.filename), fr.name) for fr in frames if _where(fr.filename))
        if counts:
            (where, name), _ = counts.most_common(1)[0]
            return f"RecursionError {where}:{name}"
    for fr in reversed(frames):
        where = _where(fr.filename)
        if where is not None and not where.startswith("metaprotocol/testing/"):
            return f"{type(exc).__name__} {where}:{fr.name}"
    return f"{type(exc).__name__} ?"


def stack_top(exc: BaseException) -> str:
    """``file:line ExceptionType: message`` of the innermost frame, for reports."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return f"{type(exc).__name__}: {exc}"
    fr = next((f for f in reversed(frames) if _where(f.filename)), frames[-1])
    return f"{_where(fr.filename) or fr.filename}:{fr.lineno} {type(exc).__name__}: {str(exc)[:120]}"


@dataclass(frozen=True)
class KnownOpen:
    """One line of fuzz/known_open.txt: a committed reproducer of a still-open defect."""

    reproducer: str  # <target>/<name> under fuzz/regressions
    signature: str  # as made by signature()
    note: str


def known_open() -> list[KnownOpen]:
    """Parse fuzz/known_open.txt: ``<target>/<name> | <ExcType> <file>:<func> | note``."""
    out = []
    if KNOWN_OPEN.exists():
        for line in KNOWN_OPEN.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in line.split("|")]
            out.append(KnownOpen(parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
    return out


def _ignored_signatures() -> frozenset[str]:
    if os.environ.get("FUZZ_IGNORE_KNOWN") != "1":
        return frozenset()
    sigs = {k.signature for k in known_open()}
    extra = os.environ.get("FUZZ_IGNORE_FILE")
    if extra and Path(extra).exists():
        sigs.update(line.strip() for line in Path(extra).read_text().splitlines() if line.strip())
    return frozenset(sigs)


# -- hangs --------------------------------------------------------------------------------------

HANG_SECONDS = float(os.environ.get("FUZZ_HANG_SECONDS", "3"))
"""CPU seconds one input may take. A CPU-time timer (SIGVTALRM: libFuzzer's own -timeout uses
SIGALRM) turns a hang into an exception raised where the code loops, so a hang gets a signature,
can be listed as known and skipped, and cannot stall the smoke test."""


class Hang(BaseException):  # not an Exception: a codec's ``except Exception`` must not swallow it
    """An input ran past HANG_SECONDS of CPU time."""


def _on_hang(signum: int, frame: object) -> None:
    raise Hang(f"one input ran past {HANG_SECONDS:g} s of CPU")


def _arm() -> bool:
    """Start the hang timer (main thread only: signal handlers live there)."""
    if HANG_SECONDS <= 0 or threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGVTALRM) is not _on_hang:
        signal.signal(signal.SIGVTALRM, _on_hang)
    signal.setitimer(signal.ITIMER_VIRTUAL, HANG_SECONDS)
    return True


# -- targets ------------------------------------------------------------------------------------


@dataclass
class Target:
    """One fuzz target: ``run`` raises on a finding; ``expected`` exceptions are the documented
    ones; ``seeds`` builds the seed corpus at run time (from the shared vectors)."""

    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    documented: tuple[str, ...] = ()
    """Other documented exceptions, as ``module:Name`` (resolved on first use, so that the module
    is imported under atheris' instrumentation first)."""
    instrument: tuple[str, ...] = ()
    """Package prefixes given coverage hooks under atheris."""
    imports: tuple[str, ...] = ()
    """Modules imported (so instrumented) before fuzzing starts."""
    _ignored: frozenset[str] | None = field(default=None, repr=False)
    _expected: tuple[type[BaseException], ...] | None = field(default=None, repr=False)

    @property
    def expected(self) -> tuple[type[BaseException], ...]:
        """MetaProtocolError and the ``documented`` exception types."""
        if self._expected is None:
            extra = []
            for path in self.documented:
                module, _, name = path.partition(":")
                extra.append(getattr(importlib.import_module(module), name))
            self._expected = (MetaProtocolError, *extra)
        return self._expected

    def test_one_input(self, data: bytes) -> None:
        """The libFuzzer entry point: documented exceptions pass, anything else propagates."""
        armed = _arm()
        try:
            self.run(data)
        except self.expected:
            pass
        except (Exception, Hang) as exc:
            if self._ignored is None:
                self._ignored = _ignored_signatures()
            sig = signature(exc)
            if sig in self._ignored:
                return
            out = os.environ.get("FUZZ_SIGNATURE_OUT")
            if out:
                Path(out).write_text(f"{sig}\n{stack_top(exc)}\n")
            raise
        finally:
            if armed:
                signal.setitimer(signal.ITIMER_VIRTUAL, 0)


@dataclass(frozen=True)
class Variant:
    """A codec configuration a fuzz input can select, and the client profile to use."""

    config: Mapping[str, object]
    profile: Hashable = None
    limit: int | None = None  # largest raw frame the config admits (None: not checked)


class CodecHarness:
    """One side of one codec: byte 0 picks the variant, byte 1 the reads and SPI arguments; the
    driving itself is metaprotocol.testing.drive's (the conformance kit runs the same code)."""

    def __init__(
        self,
        factory_path: str,
        variants: Sequence[Variant],
        side: str,
        prime: Callable[[CodecFactory, ClientCodec, int], None] | None = None,
        check: Callable[[Message, Variant], None] | None = None,
    ) -> None:
        self.factory_path = factory_path
        self.variants = list(variants)
        self.side = side
        self.prime = prime
        self.check = check
        self._factories: dict[int, CodecFactory] = {}

    def factory(self, index: int) -> tuple[CodecFactory, Variant]:
        index %= len(self.variants)
        variant = self.variants[index]
        f = self._factories.get(index)
        if f is None:
            module, _, name = self.factory_path.partition(":")
            cls = getattr(importlib.import_module(module), name)
            f = self._factories[index] = cls(dict(variant.config))
        return f, variant

    def run(self, data: bytes) -> None:
        if len(data) < 2:
            return
        factory, variant = self.factory(data[0])
        prime, check = self.prime, self.check
        driver = Driver(
            factory,
            variant.limit,
            None if check is None else (lambda m: check(m, variant)),
            None if prime is None else (lambda c: prime(factory, c, data[0])),
            lower_case_keys=True,
        )
        chunks = split(data[2:], data[1])
        if self.side == "server":
            driver.server(chunks, data[1])
        else:
            driver.client(chunks, data[1], variant.profile)


def codec_seeds(frames: Iterable[bytes], variants: int, spread: int = 2) -> list[bytes]:
    """Seeds for a codec target: each frame behind a config byte and a split byte; frame ``i``
    is given under config 0 and ``spread - 1`` other configs (so every config gets seeds)."""
    out = []
    for i, frame in enumerate(frames):
        for j in range(spread):
            cfg = 0 if j == 0 else (i * spread + j) % variants
            out.append(bytes([cfg, 0x80 if j == 0 else (i * 37 + 5) & 0x7F]) + frame)
    return out


def codec_target(
    name: str,
    factory_path: str,
    side: str,
    variants: Sequence[Variant],
    frames: Callable[[], Iterable[bytes]],
    *,
    prime: Callable[[CodecFactory, ClientCodec, int], None] | None = None,
    check: Callable[[Message, Variant], None] | None = None,
    instrument: tuple[str, ...] = (),
) -> Target:
    """A codec target; ``frames`` gives the raw seed frames (read at run time)."""
    harness = CodecHarness(factory_path, variants, side, prime, check)
    module = factory_path.partition(":")[0]
    package = module.rpartition(".")[0] or module
    # Hand-made seeds under fuzz/corpus/<name>/ are whole inputs (config and split bytes included).
    return Target(
        name, harness.run, lambda: codec_seeds(frames(), len(variants)) + corpus_files(name), instrument=instrument or (package,), imports=(module,)
    )


# -- minimizing a crash ------------------------------------------------------------------------


def minimize(target: Target, data: bytes, sig: str, rounds: int = 2000) -> bytes:
    """Shrink ``data`` while it still fails with ``sig`` (delta debugging, then byte by byte)."""

    def fails(candidate: bytes) -> bool:
        armed = _arm()
        try:
            target.run(candidate)
        except target.expected:
            return False
        except (Exception, Hang) as exc:
            return signature(exc) == sig
        finally:
            if armed:
                signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        return False

    if not fails(data):
        return data
    best = data
    tries = 0
    chunk = max(1, len(best) // 2)
    while chunk >= 1 and tries < rounds:
        i = 0
        progressed = False
        while i < len(best) and tries < rounds:
            candidate = best[:i] + best[i + chunk :]
            tries += 1
            if candidate != best and fails(candidate):
                best = candidate
                progressed = True
            else:
                i += chunk
        if not progressed:
            chunk //= 2
    return best


# -- running under atheris ----------------------------------------------------------------------


def main(target: Target, argv: list[str] | None = None) -> None:
    """``python fuzz/<name>.py [corpus dirs] [libFuzzer flags]``: run the target under atheris,
    with the code under test imported (and so instrumented) after atheris is set up."""
    import atheris

    # The packages under test are first imported here (the harness imports only the SPI, whose
    # exception classes must stay the ones the codecs raise), so their code gets coverage hooks.
    with atheris.instrument_imports(include=list(target.instrument)):
        for module in target.imports:
            importlib.import_module(module)
        _ = target.expected
    atheris.Setup(argv if argv is not None else sys.argv, target.test_one_input)
    atheris.Fuzz()
