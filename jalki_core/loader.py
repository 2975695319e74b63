"""The attach ladder: load a probe by trying its program variants, best first.

For every rung the loader opens the probe's object afresh, switches autoload
on for exactly that rung's programs, checks the record layout against the
object's BTF field by field (names, offsets, sizes), loads, writes the run-time configuration, lets the probe fill
its maps (``Probe.prepare``), and attaches. The
first rung that loads and attaches is kept; each failed rung is recorded with
its errno name and an excerpt of the verifier/libbpf log, and a rung the
verifier rejected has its full verifier log written to a file
(:func:`verifier_log_dir`). The kernel's answer decides, never its version
number. ``ProbeOptions.rung`` forces one rung of every ladder (for testing a
fallback on a kernel that allows the best rung), as the kernel tests do.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from jalki_core.errors import (
    AttachLadderExhausted,
    BpfLoadError,
    LayoutMismatchError,
    LibbpfError,
    ProbeError,
    ProbeUnavailableError,
    UsageError,
)
from jalki_core.probe import AttachRung, Probe, ProbeResource, RecordLayout

if TYPE_CHECKING:
    from jalki_core._libbpf import BpfLink, BpfObject

log = logging.getLogger("jalki.loader")

DROP_CAUSES = ("ringbuf_full", "sampled", "tracking_full")
"""Kernel-side drop counters every probe has, in the order of ``enum jalki_drop_cause``."""

RECURSION_MISS = "recursion_miss"
"""Drop cause counted by the kernel per program (``bpf_prog_info.recursion_misses``), not in the drops map:
runs it skipped because a tracing program was already running on that CPU. Each may have been an event."""

MAX_EXTRA_DROP_CAUSES = 5
"""Probe-specific causes after the shared ones (``JALKI_DROP__MAX - JALKI_DROP_PROBE_BASE``)."""

CONFIG_STRUCT = struct.Struct("<IHHII")  # struct jalki_config: 16 bytes
CONFIG_FLAG_SAMPLING = 1
LOG_EXCERPT_LINES = 12
VERIFIER_TAIL_LINES = 4
_VERIFIER_STATISTICS = ("processed ", "verification time", "stack depth", "max_states_per_insn")


RING_MIB_MAX = 1024
"""Largest ``--ring-mib``: a ring buffer per probe, mapped into the process."""


def ring_bytes_from_mib(mib: int) -> int:
    """``--ring-mib N`` as ring-buffer bytes for :attr:`ProbeOptions.ring_buffer_bytes`.

    :raises UsageError: ``N`` is not a power of two from 1 to :data:`RING_MIB_MAX` (the kernel
        wants a power-of-two ring of whole pages).
    """
    if not 1 <= mib <= RING_MIB_MAX or mib & (mib - 1):
        raise UsageError(f"--ring-mib {mib} is not a power of two from 1 to {RING_MIB_MAX}",
                         hint="e.g. --ring-mib 8 (every probe's ring buffer then holds 8 MiB)")
    return mib << 20


@dataclass(frozen=True)
class ProbeOptions:
    """Run-time settings written into every probe's kernel-side config.

    :param filter_pid: only events owned by this process id (tgid); 0 = all.
    :param filter_port: only events whose source or destination port matches; 0 = all.
    :param sample_rate: fraction of events kept, in (0, 1]; sampled-out events are counted.
    :param self_tgid: the process to filter out (jalki itself).
    :param ring_buffer_bytes: override each probe's ring size (power of two), or ``None``.
    :param rung: try only the ladder rung of this name (``jalki run --rung``); a probe without it
        is not loaded (:class:`ProbeError` naming its rungs). ``None``: the whole ladder.
    :param verifier_log_dir: where full verifier logs of rejected rungs are written; ``None``:
        :func:`verifier_log_dir`.
    """

    filter_pid: int = 0
    filter_port: int = 0
    sample_rate: float = 1.0
    self_tgid: int = field(default_factory=os.getpid)
    ring_buffer_bytes: int | None = None
    rung: str | None = None
    verifier_log_dir: Path | None = None

    def config_bytes(self) -> bytes:
        """The packed ``struct jalki_config`` for these options."""
        if not 0.0 < self.sample_rate <= 1.0:
            raise ProbeError(f"sample rate {self.sample_rate} is outside (0, 1]")
        sampling = self.sample_rate < 1.0
        threshold = min(int(self.sample_rate * 0xFFFFFFFF), 0xFFFFFFFF) if sampling else 0xFFFFFFFF
        flags = CONFIG_FLAG_SAMPLING if sampling else 0
        return CONFIG_STRUCT.pack(self.filter_pid, self.filter_port, 0, threshold, flags)


@dataclass(frozen=True)
class RungFailure:
    """Why one rung of a ladder could not be used."""

    rung: str
    stage: str  # "load", "prepare" (Probe.prepare) or "attach"
    errno_name: str
    message: str
    log_excerpt: str = ""
    hint: str | None = None
    verifier_tail: str = ""
    """The verifier's last words when it rejected the rung: the lines before its statistics, for a terminal."""
    log_file: str | None = None
    """Where the verifier's whole log was written when it rejected the rung (None: no verifier log, or it
    could not be written)."""

    def one_line(self) -> str:
        """``rung: stage failed with ERRNO (hint)``."""
        line = f"{self.rung}: {self.stage} failed with {self.errno_name}"
        return f"{line} ({self.hint})" if self.hint else line


@dataclass
class LoadedProbe:
    """A probe attached to the kernel on one rung."""

    probe: Probe
    obj: BpfObject
    links: list[BpfLink]
    rung: AttachRung
    failures: list[RungFailure]
    programs: tuple[str, ...] = ()
    _recursion_misses: dict[str, int] = field(default_factory=dict, repr=False)
    """Each program's recursion misses as last read: a read that fails keeps it (a counter never goes back)."""

    @property
    def missing_optional(self) -> tuple[str, ...]:
        """The rung's optional programs this kernel could not run."""
        return tuple(name for name in self.rung.optional if name not in self.programs)

    def kernel_drops(self) -> dict[str, int]:
        """Kernel-side drop counters by cause, summed over CPUs, and the programs' recursion misses."""
        drops_map = self.obj.maps.get("jalki_drops")
        causes = (*DROP_CAUSES, *self.probe.extra_drop_causes)
        result = dict.fromkeys(causes, 0)
        result[RECURSION_MISS] = self.recursion_misses()
        if drops_map is None:
            return result
        for index, cause in enumerate(causes):
            try:
                values = drops_map.lookup_per_cpu(struct.pack("<I", index))
            except LibbpfError:
                continue
            result[cause] = sum(struct.unpack_from("<Q", value)[0] for value in values)
        return result

    def recursion_misses(self) -> int:
        """Runs of this probe's attached programs that the kernel skipped (recursion protection), summed."""
        seen = self._recursion_misses
        for name in self.programs:
            program = self.obj.programs.get(name)
            if program is None:
                continue
            try:
                seen[name] = program.recursion_misses()
            except LibbpfError as exc:
                if name not in seen:
                    log.warning("probe %s: program %s: recursion misses not readable: %s", self.probe.name, name, exc)
                seen.setdefault(name, 0)
        return sum(seen.values())

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """Per-program (run time ns, run count) from ``bpf_enable_stats``."""
        stats = {}
        for name in self.programs:
            program = self.obj.programs.get(name)
            if program is not None:
                try:
                    stats[name] = program.stats()
                except LibbpfError:
                    continue
        return stats

    def detach(self) -> None:
        """Destroy every link, last attached first (the programs stop firing); the object stays open.

        Reverse order matters: a ladder lists a pair's start program before its
        end program (issue before complete, syscall entry before exit), and a
        classic-tracepoint link takes tens of milliseconds to destroy. Ending
        the end program first means no end in that gap misses its start (a
        false "start unseen" drop); a start recorded after its end program is
        gone only leaves an entry in a map about to be freed.
        """
        for link in reversed(self.links):
            link.destroy()
        self.links.clear()

    def close(self) -> None:
        """Detach and free the object."""
        self.detach()
        self.obj.close()


def _log_excerpt(lines: list[str]) -> str:
    kept = [line.rstrip() for line in lines if line.strip()]
    return "\n".join(kept[-LOG_EXCERPT_LINES:])


def _verifier_tail(log_text: str) -> str:
    """The last :data:`VERIFIER_TAIL_LINES` lines of a verifier log, its closing statistics left out."""
    lines = [line.rstrip() for line in log_text.splitlines() if line.strip()]
    while lines and lines[-1].startswith(_VERIFIER_STATISTICS):
        lines.pop()
    return "\n".join(lines[-VERIFIER_TAIL_LINES:])


def forced_ladder(probe: Probe, rung: str | None) -> tuple[AttachRung, ...]:
    """``probe``'s ladder, or only its rung named ``rung`` (with that rung's optional variants).

    :raises ProbeError: ``probe`` has no rung of that name; the message names its rungs.
    """
    if rung is None:
        return tuple(probe.ladder)
    kept = tuple(step for step in probe.ladder if step.name == rung)
    if not kept:
        raise ProbeError(f"probe {probe.name} has no {rung!r} rung (its rungs: {rung_names(probe)})",
                         hint="pick one of its rungs, or leave --rung out for the whole ladder")
    return kept


def rung_names(probe: Probe) -> str:
    """The names of ``probe``'s rungs, best first, comma-separated."""
    return ", ".join(step.name for step in probe.ladder)


_default_log_dir: Path | None = None


def verifier_log_dir() -> Path:
    """Where full verifier logs go by default: ``$XDG_RUNTIME_DIR/jalki``, else a private temp folder.

    The fallback is made once per process with :func:`tempfile.mkdtemp` (mode
    0700, unpredictable name): a fixed name under ``/tmp`` written by root could
    be a link planted by another user.
    """
    global _default_log_dir
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        path = Path(runtime) / "jalki"
        path.mkdir(mode=0o700, exist_ok=True)
        return path
    if _default_log_dir is None or not _default_log_dir.is_dir():
        _default_log_dir = Path(tempfile.mkdtemp(prefix="jalki-verifier-"))
    return _default_log_dir


def write_verifier_log(directory: Path | None, probe: str, rung: str, text: str) -> str | None:
    """Write ``text`` to ``DIR/verifier-PROBE-RUNG.log`` (replaced if there); the path, or None on failure."""
    try:
        folder = directory if directory is not None else verifier_log_dir()
        name = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"verifier-{probe}-{rung}.log")
        path = folder / name
        # O_NOFOLLOW: never write through a link someone left at that name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text if text.endswith("\n") else text + "\n")
    except OSError as exc:
        log.warning("cannot write the verifier log of probe %s rung %s: %s", probe, rung, exc)
        return None
    return str(path)


class ProbeLoader:
    """Loads probes with their attach ladders, under one set of :class:`ProbeOptions`."""

    def __init__(self, options: ProbeOptions | None = None) -> None:
        self.options = options or ProbeOptions()
        self._config = self.options.config_bytes()

    def load(self, probe: Probe) -> LoadedProbe:
        """Attach ``probe`` on the first rung that works.

        :raises AttachLadderExhausted: every rung failed; ``.failures`` lists why.
        :raises LayoutMismatchError: the Python layout disagrees with the object's BTF.
        """
        from jalki_core._libbpf import capture_libbpf_log

        try:
            reason = probe.unavailable_reason()
        except ProbeUnavailableError as exc:  # raising it is the same answer as returning a reason
            reason = exc.message
        if reason is not None:
            raise _unavailable(probe, reason)
        warn_if_stale(probe)
        data = ProbeResource.of(probe, "bpf_object").read_bytes()
        failures: list[RungFailure] = []
        for rung in forced_ladder(probe, self.options.rung):
            for programs in rung.variants():
                label = rung.name if programs == rung.programs else f"{rung.name}+{'+'.join(rung.optional)}"
                with capture_libbpf_log() as log_lines:
                    try:
                        return self._try_rung(probe, data, rung, programs, failures)
                    except LibbpfError as exc:
                        failures.append(self._failure(probe, label, exc, log_lines))
                        log.info("probe %s: rung %s failed: %s", probe.name, label, exc.one_line())
                    except ProbeUnavailableError as exc:  # from rodata() or prepare(): no other rung can help
                        raise _unavailable(probe, exc.message, exc.hint) from None
        raise AttachLadderExhausted(
            f"probe {probe.name}: every attach rung failed ("
            + "; ".join(failure.one_line() for failure in failures)
            + ")",
            failures=failures,
            hint="run 'jalki doctor' to see which attach types this kernel allows",
        )

    def _failure(self, probe: Probe, label: str, exc: LibbpfError, log_lines: list[str]) -> RungFailure:
        verifier_log = exc.verifier_log if isinstance(exc, BpfLoadError) else ""
        log_file = None
        if verifier_log.strip():
            log_file = write_verifier_log(self.options.verifier_log_dir, probe.name, label, verifier_log)
        return RungFailure(
            rung=label,
            stage=exc.stage,
            errno_name=exc.errno_name,
            message=exc.message,
            log_excerpt=_log_excerpt([*log_lines, *verifier_log.splitlines()]),
            hint=exc.hint,
            verifier_tail=_verifier_tail(verifier_log),
            log_file=log_file,
        )

    def _try_rung(
        self, probe: Probe, data: bytes, rung: AttachRung, programs: tuple[str, ...], failures: list[RungFailure]
    ) -> LoadedProbe:
        from jalki_core._libbpf import BpfObject

        obj = BpfObject.open_memory(data, probe.name)
        try:
            self._prepare(probe, obj, rung, programs)
            try:
                obj.load()
            except LibbpfError as exc:
                exc.stage = "load"
                raise
            config_map = obj.maps.get("jalki_config")
            if config_map is not None:
                config_map.update(struct.pack("<I", 0), self._config)
            try:
                probe.prepare(obj.maps)
            except LibbpfError as exc:
                exc.stage = "prepare"
                raise
            links: list[BpfLink] = []
            try:
                for name in programs:
                    links.append(obj.programs[name].attach())
            except LibbpfError as exc:
                for link in links:
                    link.destroy()
                exc.stage = "attach"
                raise
            return LoadedProbe(probe, obj, links, rung, list(failures), programs)
        except BaseException:
            obj.close()
            raise

    def _prepare(self, probe: Probe, obj: BpfObject, rung: AttachRung, programs: tuple[str, ...]) -> None:
        missing = [name for name in (*rung.programs, *rung.optional) if name not in obj.programs]
        if missing:
            raise ProbeError(
                f"probe {probe.name}: rung {rung.name} names programs missing from "
                f"{ProbeResource.of(probe, 'bpf_object').filename}: {', '.join(missing)}"
            )
        self._check_layout(probe, obj)
        if probe.ring_buffer not in obj.maps:
            raise ProbeError(f"probe {probe.name}: no ring buffer map named {probe.ring_buffer!r}")
        wanted = set(programs)
        for name, program in obj.programs.items():
            program.autoload = name in wanted
        obj.maps[probe.ring_buffer].max_entries = (
            self.options.ring_buffer_bytes or probe.ring_buffer_bytes
        )
        if "jalki_self_tgid" in _rodata_vars(obj):
            obj.set_rodata("jalki_self_tgid", self.options.self_tgid)
        for var, value in probe.rodata().items():
            try:
                obj.set_rodata(var, value)
            except LibbpfError as exc:
                raise ProbeError(f"probe {probe.name}: cannot set {var!r} in .rodata: {exc.one_line()}",
                                 hint="the probe's rodata() must name const volatile globals of its object, "
                                      "with values of their size") from exc


    @staticmethod
    def _check_layout(probe: Probe, obj: BpfObject) -> None:
        """Check the probe's Python record layouts against their C structs in the object's BTF, field by field."""
        for layout in probe.record_kinds()[0].values():
            ProbeLoader._check_one_layout(probe, obj, layout)

    @staticmethod
    def _check_one_layout(probe: Probe, obj: BpfObject, layout: RecordLayout) -> None:
        members = obj.btf_struct_members(layout.c_struct)
        c_size = obj.btf_struct_size(layout.c_struct)
        if members is None or c_size is None:
            if layout.c_struct not in _UNCHECKED_WARNED:
                _UNCHECKED_WARNED.add(layout.c_struct)
                log.warning("probe %s: struct %s is not in the BTF of %s, so its layout is not checked "
                            "(add JALKI_BTF_EXPORT(%s); to the C source)", probe.name, layout.c_struct,
                            ProbeResource.of(probe, 'bpf_object').filename, layout.c_struct)
            return
        try:
            layout.check_btf(members, c_size, c_side=f"BTF of {ProbeResource.of(probe, 'bpf_object').filename}")
        except LayoutMismatchError as exc:
            raise LayoutMismatchError(f"probe {probe.name}: {exc.message}", hint=exc.hint) from None


_UNCHECKED_WARNED: set[str] = set()
_STALE_WARNED: set[str] = set()


def warn_if_stale(probe: Probe) -> None:
    """Log one warning when the probe's ``.bpf.o`` is older than the ``.bpf.c``/``.h`` next to it.

    That happens only in an editable or development install, where the C
    sources sit beside the object: the C was edited but not rebuilt, so the
    loaded object is not what the sources say. Once per object per process.
    """
    from importlib import resources

    from jalki_core.bpf_build import stale_sources

    resource = ProbeResource.of(probe, "bpf_object")
    if not isinstance(resource, ProbeResource):  # a file of its own (tests): no package to look beside
        return
    try:
        path = resources.files(resource.package).joinpath(resource.filename)
    except (ModuleNotFoundError, TypeError):
        return
    if not isinstance(path, Path) or str(path) in _STALE_WARNED:
        return
    stale = stale_sources(path)
    if stale:
        _STALE_WARNED.add(str(path))
        log.warning("%s is older than %s next to it; rebuild it: python -m jalki_core.build_hook %s",
                    path, ", ".join(source.name for source in stale), path.parent)


def _unavailable(probe: Probe, reason: str, hint: str | None = None) -> ProbeUnavailableError:
    """The one form of "this probe cannot run here", whether returned by ``unavailable_reason`` or raised."""
    prefix = f"probe {probe.name} is unavailable here: "
    return ProbeUnavailableError(reason if reason.startswith(prefix) else prefix + reason,
                                 hint=hint or "nothing is faked: this probe needs what this machine lacks")


def _rodata_vars(obj: BpfObject) -> set[str]:
    # set_rodata raises when the variable is absent; probes built on
    # common.bpf.h always have it, so only guard against foreign objects.
    try:
        return {"jalki_self_tgid"} if any(m.endswith(".rodata") for m in obj.maps) else set()
    except LibbpfError:
        return set()
