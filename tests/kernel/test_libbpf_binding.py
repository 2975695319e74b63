"""Kernel tests of the libbpf binding: real loads, attaches, maps and ring buffers.

They compile ``bpf/binding_test.bpf.c`` with clang into a temporary directory,
load it as root and drive it with ``getppid()`` calls from this process.
"""

from __future__ import annotations

import errno
import gc
import os
import platform
import select
import shutil
import struct
import subprocess
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jalki_core._libbpf import (
    BPF_NOEXIST,
    BpfLink,
    BpfObject,
    MapType,
    RingBufferReader,
    capture_libbpf_log,
    enable_stats,
    num_possible_cpus,
)
from jalki_core.errors import (
    BpfHandleClosedError,
    BpfLoadError,
    BpfMapError,
    BpfOpenError,
    JalkiError,
    RingBufferError,
)

pytestmark = pytest.mark.kernel

BPF_SOURCE = Path(__file__).parent / "bpf" / "binding_test.bpf.c"
EVENT = struct.Struct("<QII")  # struct binding_event {u64 seq; u32 tgid; u32 marker;}
MARKER = b"\x4a\x41\x4c\x4b"  # set through set_rodata as bytes
ZERO_KEY = bytes(4)
OPTIONAL_PROGRAMS = ("bad_prog", "fentry_vfs_read")
_ARCH = {"x86_64": "x86", "aarch64": "arm64", "ppc64le": "powerpc", "s390x": "s390", "riscv64": "riscv"}


def compile_bpf(out_dir: Path) -> Path:
    """Compile the test object like the project's build does (clang -g -O2 -target bpf)."""
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is not installed: cannot compile the test BPF object")
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        pytest.skip("libbpf headers (libbpf-dev) are not installed")
    machine = platform.machine()
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{machine}-linux-gnu"
    out = out_dir / "binding_test.bpf.o"
    cmd = [
        clang, "-g", "-O2", "-target", "bpf", f"-D__TARGET_ARCH_{_ARCH.get(machine, machine)}",
        f"-I/usr/include/{multiarch}", "-c", str(BPF_SOURCE), "-o", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"clang failed:\n{proc.stderr}")
    return out


@pytest.fixture(scope="module")
def bpf_object_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bpf(tmp_path_factory.mktemp("bpf"))


def open_configured(path: Path, *, enable: tuple[str, ...] = ()) -> BpfObject:
    """Open the test object with rodata set and the optional programs off unless named."""
    obj = BpfObject.open_file(path)
    obj.set_rodata("target_tgid", os.getpid())
    obj.set_rodata("marker", MARKER)
    for name in OPTIONAL_PROGRAMS:
        obj.programs[name].autoload = name in enable
    return obj


@pytest.fixture
def loaded(bpf_object_path: Path) -> Iterator[BpfObject]:
    obj = open_configured(bpf_object_path)
    obj.load()
    try:
        yield obj
    finally:
        obj.close()


def u64(raw: bytes | None) -> int:
    assert raw is not None
    return int.from_bytes(raw, "little")


def decode(batch: bytes) -> list[tuple[int, int, int]]:
    assert len(batch) % EVENT.size == 0
    return [EVENT.unpack_from(batch, off) for off in range(0, len(batch), EVENT.size)]


def drain(reader: RingBufferReader) -> bytes:
    out = b""
    while chunk := reader.consume():
        out += chunk
    return out


@pytest.mark.parametrize("how", ["attach", "attach_tracepoint"])
def test_tracepoint_counts_maps_and_ring_buffer(loaded: BpfObject, how: str) -> None:
    n = 257
    prog = loaded.programs["on_getppid"]
    assert prog.section == "tracepoint/syscalls/sys_enter_getppid"
    assert prog.fd >= 0
    reader = RingBufferReader(loaded.maps["events"], EVENT.size)
    assert reader.batch_bytes == 256 * 1024  # the ring's size, a multiple of 16
    assert reader.epoll_fd >= 0
    with enable_stats() as stats:
        assert stats.fd >= 0
        link = prog.attach() if how == "attach" else prog.attach_tracepoint("syscalls", "sys_enter_getppid")
        assert isinstance(link, BpfLink)
        for _ in range(n):
            os.getppid()
        link.destroy()
        link.destroy()  # idempotent
        run_time_ns, run_cnt = prog.stats()
    assert run_cnt >= n
    assert run_time_ns > 0
    os.getppid()  # detached: must not be counted

    ready, _, _ = select.select([reader.epoll_fd], [], [], 1.0)
    assert ready, "epoll fd did not become readable"
    records = decode(reader.poll(1000) + drain(reader))
    assert len(records) == n
    assert [r[0] for r in records] == list(range(n))
    assert {r[1] for r in records} == {os.getpid()}
    assert {r[2] for r in records} == {int.from_bytes(MARKER, "little")}
    assert reader.records_total == n
    assert reader.size_mismatches == 0
    assert reader.records_lost == 0
    assert reader.poll(0) == b""

    assert u64(loaded.maps["counter"].lookup(ZERO_KEY)) == n
    per_cpu = loaded.maps["percpu_counter"].lookup_per_cpu(ZERO_KEY)
    assert len(per_cpu) == num_possible_cpus()
    assert all(len(v) == 8 for v in per_cpu)
    assert sum(u64(v) for v in per_cpu) == n


def test_raw_tracepoint_and_tp_btf(loaded: BpfObject) -> None:
    raw = loaded.programs["raw_sys_enter"].attach_raw_tracepoint("sys_enter")
    btf = loaded.programs["tpbtf_sys_enter"].attach_trace()
    try:
        for _ in range(50):
            os.getppid()
    finally:
        raw.destroy()
        btf.destroy()
    hits = loaded.maps["hits"]
    assert u64(hits.lookup((0).to_bytes(4, "little"))) >= 50
    assert u64(hits.lookup((1).to_bytes(4, "little"))) >= 50


def test_map_round_trips(loaded: BpfObject) -> None:
    scratch = loaded.maps["scratch"]
    assert scratch.type == MapType.HASH
    assert (scratch.key_size, scratch.value_size, scratch.max_entries) == (4, 8, 16)
    assert not scratch.is_per_cpu
    assert loaded.maps["percpu_counter"].is_per_cpu
    assert scratch.keys() == []
    assert scratch.lookup(b"\x07\0\0\0") is None
    for k in range(5):
        scratch.update(k.to_bytes(4, "little"), (k * 100).to_bytes(8, "little"))
    keys = scratch.keys()
    assert sorted(int.from_bytes(k, "little") for k in keys) == list(range(5))
    assert u64(scratch.lookup((3).to_bytes(4, "little"))) == 300
    with pytest.raises(BpfMapError) as exc:
        scratch.update((3).to_bytes(4, "little"), bytes(8), BPF_NOEXIST)
    assert exc.value.errno_name == "EEXIST"
    scratch.delete((3).to_bytes(4, "little"))
    assert scratch.lookup((3).to_bytes(4, "little")) is None
    with pytest.raises(BpfMapError) as exc:
        scratch.delete((3).to_bytes(4, "little"))
    assert exc.value.errno_name == "ENOENT"
    assert len(scratch.keys()) == 4
    # Sizes are checked in Python before C sees the buffers.
    with pytest.raises(BpfMapError, match="key is 3 bytes"):
        scratch.lookup(b"abc")
    with pytest.raises(BpfMapError, match="value is 4 bytes"):
        scratch.update(ZERO_KEY, b"abcd")
    with pytest.raises(BpfMapError, match="per-CPU"):
        loaded.maps["percpu_counter"].lookup(ZERO_KEY)
    # Per-CPU update: one value is written to every CPU.
    pc = loaded.maps["percpu_counter"]
    pc.update(ZERO_KEY, (5).to_bytes(8, "little"))
    assert [u64(v) for v in pc.lookup_per_cpu(ZERO_KEY)] == [5] * num_possible_cpus()
    # ARRAY keys are all indexes.
    assert loaded.maps["hits"].keys() == [(0).to_bytes(4, "little"), (1).to_bytes(4, "little")]
    assert loaded.maps["events"].type == MapType.RINGBUF


def test_max_entries_settable_before_load_only(bpf_object_path: Path) -> None:
    with open_configured(bpf_object_path) as obj:
        obj.maps["scratch"].max_entries = 64
        obj.maps["events"].max_entries = 512 * 1024
        obj.load()
        assert obj.maps["scratch"].max_entries == 64
        assert RingBufferReader(obj.maps["events"], 16).batch_bytes == 512 * 1024
        with pytest.raises(BpfMapError) as exc:
            obj.maps["scratch"].max_entries = 8
        assert exc.value.errno_name == "EBUSY"


def test_rodata_and_btf(bpf_object_path: Path) -> None:
    with BpfObject.open_file(bpf_object_path) as obj:
        assert obj.name == "binding_test"
        assert obj.btf_struct_size("binding_event") == 16
        assert obj.btf_struct_size("no_such_struct") is None
        with pytest.raises(BpfMapError) as exc:
            obj.set_rodata("no_such_var", 1)
        assert exc.value.errno_name == "ENOENT"
        with pytest.raises(BpfMapError):
            obj.set_rodata("target_tgid", 1 << 40)  # does not fit in a __u32
        with pytest.raises(BpfMapError):
            obj.set_rodata("marker", b"\x01\x02")  # wrong size
        obj.set_rodata("target_tgid", 1)
        for name in OPTIONAL_PROGRAMS:
            obj.programs[name].autoload = False
        obj.load()
        with pytest.raises(BpfMapError) as exc:
            obj.set_rodata("target_tgid", 2)  # .rodata is frozen after load
        assert exc.value.errno_name == "EBUSY"


def test_open_memory(bpf_object_path: Path) -> None:
    with BpfObject.open_memory(bpf_object_path.read_bytes(), "from_memory") as obj:
        assert obj.name == "from_memory"
        assert set(obj.programs) >= {"on_getppid", *OPTIONAL_PROGRAMS}
        for name in OPTIONAL_PROGRAMS:
            obj.programs[name].autoload = False
        obj.set_rodata("target_tgid", os.getpid())
        obj.load()
        assert obj.loaded
        assert obj.programs["on_getppid"].fd >= 0


def test_autoload_toggling(bpf_object_path: Path) -> None:
    # Off: the object loads, the skipped program has no fd.
    with open_configured(bpf_object_path) as obj:
        assert obj.programs["bad_prog"].autoload is False
        obj.load()
        with pytest.raises(BpfHandleClosedError, match="not loaded"):
            _ = obj.programs["bad_prog"].fd
        with pytest.raises(BpfLoadError) as exc:
            obj.programs["bad_prog"].autoload = True  # too late: a JalkiError, not a crash
        assert exc.value.errno_name == "EBUSY"
        with pytest.raises(BpfLoadError):
            obj.load()  # libbpf allows one load per object
    # On: the verifier rejects it, and its log is quoted.
    with open_configured(bpf_object_path, enable=("bad_prog",)) as obj:
        assert obj.programs["bad_prog"].autoload is True
        with capture_libbpf_log() as lines, pytest.raises(BpfLoadError) as exc:
            obj.load()
        err = exc.value
        assert err.errno_name in {"EACCES", "EINVAL"}
        assert err.program == "bad_prog"
        assert "invalid mem access" in err.verifier_log
        assert "map_value_or_null" in err.verifier_log
        assert obj.programs["bad_prog"].verifier_log == err.verifier_log
        assert obj.programs["on_getppid"].verifier_log == ""
        assert err.detail and "invalid mem access" in err.detail
        assert any("BEGIN PROG LOAD LOG" in line for line in lines)


def test_fentry_refused_or_loads(bpf_object_path: Path) -> None:
    with open_configured(bpf_object_path, enable=("fentry_vfs_read",)) as obj:
        try:
            obj.load()
        except BpfLoadError as err:
            # This project's kernel refuses fentry before the verifier runs.
            assert err.errno_name == "EPERM"
            assert err.program == "fentry_vfs_read"
            assert err.hint
            assert "fentry_vfs_read" in obj.programs["fentry_vfs_read"].verifier_log
        else:
            link = obj.programs["fentry_vfs_read"].attach_trace()
            link.destroy()


def test_batch_full_loses_nothing(loaded: BpfObject) -> None:
    n = 1000
    reader = RingBufferReader(loaded.maps["events"], EVENT.size, batch_bytes=3 * EVENT.size + 5)
    assert reader.batch_bytes == 3 * EVENT.size  # rounded down to whole records
    link = loaded.programs["on_getppid"].attach()
    for _ in range(n):
        os.getppid()
    link.destroy()
    batches = []
    while batch := reader.consume():
        assert len(batch) <= 3 * EVENT.size
        batches.append(batch)
    assert len(batches) == (n + 2) // 3
    records = decode(b"".join(batches))
    assert [r[0] for r in records] == list(range(n))
    assert reader.records_total == n
    assert reader.records_lost == 0
    # poll() respects the same bound.
    link = loaded.programs["on_getppid"].attach()
    for _ in range(7):
        os.getppid()
    link.destroy()
    assert len(reader.poll(100)) == 3 * EVENT.size
    assert [r[0] for r in decode(reader.poll(100) + reader.poll(100))] == list(range(n + 3, n + 7))


def test_size_mismatches_are_counted(loaded: BpfObject) -> None:
    reader = RingBufferReader(loaded.maps["events"], 24)
    link = loaded.programs["on_getppid"].attach()
    for _ in range(10):
        os.getppid()
    link.destroy()
    assert drain(reader) == b""
    assert reader.size_mismatches == 10
    assert reader.records_total == 0


def test_ring_buffer_reader_rejects_bad_maps(bpf_object_path: Path, loaded: BpfObject) -> None:
    with pytest.raises(RingBufferError) as exc:
        RingBufferReader(loaded.maps["counter"], 16)
    assert exc.value.errno_name == "EINVAL"
    with pytest.raises(RingBufferError):
        RingBufferReader(loaded.maps["events"], 0)
    with pytest.raises(BpfHandleClosedError):
        RingBufferReader(None, 16)  # type: ignore[arg-type]
    with open_configured(bpf_object_path) as unloaded, pytest.raises(BpfHandleClosedError, match="not loaded"):
        RingBufferReader(unloaded.maps["events"], 16)


def test_use_after_close_raises(bpf_object_path: Path) -> None:
    obj = open_configured(bpf_object_path)
    obj.load()
    prog = obj.programs["on_getppid"]
    link = prog.attach()
    counter = obj.maps["counter"]
    reader = RingBufferReader(obj.maps["events"], EVENT.size)
    obj.close()
    obj.close()  # idempotent
    assert link.destroyed and reader.closed
    link.destroy()  # still idempotent
    calls: list[Callable[[], object]] = [
        lambda: counter.lookup(ZERO_KEY),
        lambda: counter.update(ZERO_KEY, bytes(8)),
        lambda: counter.keys(),
        lambda: counter.fd,
        lambda: prog.fd,
        lambda: prog.attach(),
        lambda: prog.stats(),
        lambda: prog.autoload,
        lambda: link.fd,
        lambda: reader.poll(0),
        lambda: reader.consume(),
        lambda: reader.epoll_fd,
        lambda: obj.load(),
        lambda: obj.set_rodata("target_tgid", 1),
        lambda: obj.btf_struct_size("binding_event"),
        lambda: obj.programs,
    ]
    for call in calls:
        with pytest.raises(BpfHandleClosedError) as exc:
            call()
        assert exc.value.errno_name == "EBADF"
        assert isinstance(exc.value, JalkiError)
    os.getppid()  # the detached program must not crash anything


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(BpfOpenError) as exc:
        BpfObject.open_file(tmp_path / "missing.bpf.o")
    assert exc.value.errno_name == "ENOENT"
    assert exc.value.errno == errno.ENOENT
    garbage = tmp_path / "garbage.bpf.o"
    garbage.write_bytes(b"\x7fELF this is not an object" * 10)
    with pytest.raises(BpfOpenError) as exc:
        BpfObject.open_file(garbage)
    assert exc.value.errno_name.startswith("E")
    assert exc.value.errno_name != f"E{exc.value.errno}"  # a real errno name, not a number
    with pytest.raises(BpfOpenError):
        BpfObject.open_memory(b"not an ELF file", "junk")


def test_garbage_collection_without_close(bpf_object_path: Path) -> None:
    obj = open_configured(bpf_object_path)
    obj.load()
    link = obj.programs["on_getppid"].attach()
    reader = RingBufferReader(obj.maps["events"], EVENT.size)
    del obj, link, reader
    gc.collect()
    for _ in range(10):
        os.getppid()  # the links were destroyed with the object; nothing crashes


def test_close_waits_for_a_running_poll(loaded: BpfObject) -> None:
    reader = RingBufferReader(loaded.maps["events"], EVENT.size)
    results: list[bytes | BaseException] = []

    def poll() -> None:
        try:
            results.append(reader.poll(300))
        except BaseException as exc:  # reported below
            results.append(exc)

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.05)
    reader.close()  # blocks until poll() returned, then frees the ring buffer
    thread.join()
    # Either poll ran first and timed out empty, or close won the race; never a crash.
    assert len(results) == 1
    assert results[0] == b"" or isinstance(results[0], BpfHandleClosedError)
    with pytest.raises(BpfHandleClosedError):
        reader.poll(0)
