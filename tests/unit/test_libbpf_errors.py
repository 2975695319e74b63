"""Unit tests of the libbpf binding that need no root: error mapping, log routing, closed handles.

Opening a BPF object does not touch the kernel, so handle checks run here on
the kernel tests' object (compiled with clang when it is installed).
"""

from __future__ import annotations

import errno
import logging
import platform
import shutil
import subprocess
import sysconfig
import threading
from pathlib import Path

import pytest

from jalki_core._libbpf import BpfObject, _check, capture_libbpf_log, recent_libbpf_lines
from jalki_core._libbpf._ffi import ffi
from jalki_core._libbpf.log import LIBBPF_DEBUG, LIBBPF_INFO, LIBBPF_WARN, _dispatch
from jalki_core.errors import (
    BpfAttachError,
    BpfHandleClosedError,
    BpfLoadError,
    BpfMapError,
    BpfOpenError,
    JalkiError,
    LibbpfError,
)

BPF_SOURCE = Path(__file__).resolve().parents[1] / "kernel" / "bpf" / "binding_test.bpf.c"
_ARCH = {"x86_64": "x86", "aarch64": "arm64", "ppc64le": "powerpc", "s390x": "s390", "riscv64": "riscv"}


@pytest.fixture(scope="module")
def bpf_object_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is not installed: cannot compile the test BPF object")
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        pytest.skip("libbpf headers (libbpf-dev) are not installed")
    machine = platform.machine()
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{machine}-linux-gnu"
    out = tmp_path_factory.mktemp("bpf") / "binding_test.bpf.o"
    cmd = [
        clang, "-g", "-O2", "-target", "bpf", f"-D__TARGET_ARCH_{_ARCH.get(machine, machine)}",
        f"-I/usr/include/{multiarch}", "-c", str(BPF_SOURCE), "-o", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"clang failed:\n{proc.stderr}")
    return out


# -- the checker ---------------------------------------------------------------


def test_rc_passes_non_negative_values() -> None:
    assert _check.rc(0, "op") == 0
    assert _check.rc(7, "op") == 7


def test_rc_raises_typed_error_with_errno_name_and_hint() -> None:
    with pytest.raises(BpfAttachError) as exc:
        _check.rc(-errno.ENOENT, "bpf_program__attach", BpfAttachError, obj="tcp", program="fexit_tcp_connect")
    err = exc.value
    assert isinstance(err, LibbpfError) and isinstance(err, JalkiError)
    assert err.errno == errno.ENOENT
    assert err.errno_name == "ENOENT"
    assert err.obj == "tcp" and err.program == "fexit_tcp_connect"
    assert err.hint and "lacks" in err.hint
    assert "bpf_program__attach failed: ENOENT" in str(err)
    assert "object tcp, program fexit_tcp_connect" in str(err)


def test_rc_passes_subclass_extras_and_custom_hint() -> None:
    with pytest.raises(BpfLoadError) as exc:
        _check.rc(-errno.EACCES, "bpf_object__load", BpfLoadError, verifier_log="R0 invalid", hint="fix it")
    assert exc.value.verifier_log == "R0 invalid"
    assert exc.value.hint == "fix it"
    assert exc.value.errno_name == "EACCES"


def test_libbpf_private_errnos_become_kernel_errnos() -> None:
    err = _check.error(BpfOpenError, "bpf_object__open_file", -4001, obj="x.bpf.o", detail="elf: bad")
    assert err.errno_name == "ENOEXEC"
    assert err.detail == "LIBBPF_ERRNO__FORMAT: not a valid BPF object file; elf: bad"
    assert _check.error(BpfLoadError, "load", -4007).errno_name == "EACCES"
    assert _check.error(BpfMapError, "op", 0).errno_name == "EINVAL"  # never "success"


def test_ptr_uses_c_errno_on_null() -> None:
    sentinel = ffi.new("int *")
    assert _check.ptr(sentinel, "op") is sentinel
    ffi.errno = errno.ESRCH
    with pytest.raises(BpfAttachError) as exc:
        _check.ptr(ffi.NULL, "bpf_program__attach_trace", BpfAttachError, program="fexit_x")
    assert exc.value.errno_name == "ESRCH"
    assert exc.value.program == "fexit_x"
    ffi.errno = 0
    with pytest.raises(BpfOpenError) as exc2:
        _check.ptr(ffi.NULL, "bpf_object__open_mem", BpfOpenError)
    assert exc2.value.errno_name == "EINVAL"


def test_closed_error() -> None:
    err = _check.closed("bpf_map_lookup_elem", obj="tcp", detail="map events is closed")
    assert isinstance(err, BpfHandleClosedError)
    assert isinstance(err, LibbpfError)
    assert err.errno_name == "EBADF"
    assert err.hint == "the handle is not open"
    assert "map events is closed" in err.one_line()


# -- libbpf print routing --------------------------------------------------------


def test_print_routing_levels_and_capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="jalki.libbpf")
    with capture_libbpf_log() as outer:
        with capture_libbpf_log(include_debug=True) as inner:
            _dispatch(LIBBPF_WARN, "libbpf: prog 'p': failed\nsecond line\n")
            _dispatch(LIBBPF_INFO, "libbpf: info line\n")
            _dispatch(LIBBPF_DEBUG, "libbpf: debug line\n")
        _dispatch(LIBBPF_WARN, "after inner\n")
    _dispatch(LIBBPF_WARN, "outside any capture\n")
    assert inner == ["prog 'p': failed", "second line", "info line", "debug line"]
    assert outer == ["prog 'p': failed", "second line", "info line", "after inner"]
    levels = {r.getMessage(): r.levelno for r in caplog.records if r.name == "jalki.libbpf"}
    assert levels["prog 'p': failed\nsecond line"] == logging.WARNING
    assert levels["info line"] == logging.INFO
    assert levels["debug line"] == logging.DEBUG
    recent = recent_libbpf_lines()
    assert recent[-1] == "outside any capture"
    assert "debug line" not in recent
    assert recent_libbpf_lines(2) == ["after inner", "outside any capture"]


def test_capture_is_per_thread() -> None:
    seen: list[str] = []

    def other() -> None:
        _dispatch(LIBBPF_WARN, "from another thread")

    with capture_libbpf_log() as lines:
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        _dispatch(LIBBPF_WARN, "from this thread")
        seen = list(lines)
    assert seen == ["from this thread"]


def test_real_libbpf_messages_are_captured(tmp_path: Path) -> None:
    with capture_libbpf_log() as lines, pytest.raises(BpfOpenError) as exc:
        BpfObject.open_file(tmp_path / "missing.bpf.o")
    assert exc.value.errno_name == "ENOENT"
    assert any("missing.bpf.o" in line for line in lines)
    assert exc.value.detail and "failed to open" in exc.value.detail


# -- handles (no kernel needed: opening does not load) ---------------------------


def test_garbage_memory_object() -> None:
    with pytest.raises(BpfOpenError) as exc:
        BpfObject.open_memory(b"definitely not ELF", "junk")
    assert exc.value.errno_name == "ENOEXEC"
    assert exc.value.obj == "junk"
    with pytest.raises(BpfOpenError):
        BpfObject.open_memory(b"", "empty")


def test_null_handle_never_reaches_c() -> None:
    with pytest.raises(BpfHandleClosedError):
        BpfObject(ffi.NULL)


def test_open_object_without_kernel(bpf_object_path: Path) -> None:
    with BpfObject.open_file(bpf_object_path) as obj:
        assert obj.name == "binding_test"
        assert not obj.loaded
        prog = obj.programs["on_getppid"]
        assert prog.section == "tracepoint/syscalls/sys_enter_getppid"
        assert prog.autoload is True
        prog.autoload = False
        assert prog.autoload is False
        counter = obj.maps["counter"]
        assert (counter.key_size, counter.value_size, counter.max_entries) == (4, 8, 1)
        assert obj.btf_struct_size("binding_event") == 16
        obj.set_rodata("target_tgid", 42)
        # Not loaded yet: fd-based calls refuse before reaching C.
        with pytest.raises(BpfHandleClosedError, match="not loaded"):
            counter.lookup(bytes(4))
        with pytest.raises(BpfHandleClosedError, match="not loaded"):
            prog.attach()


def test_handles_after_close(bpf_object_path: Path) -> None:
    obj = BpfObject.open_file(bpf_object_path)
    prog = obj.programs["on_getppid"]
    bpf_map = obj.maps["events"]
    obj.close()
    obj.close()
    assert obj.closed
    assert obj.name == "binding_test"  # still known for messages
    for call in (
        lambda: prog.autoload,
        lambda: prog.fd,
        lambda: prog.attach_tracepoint("syscalls", "sys_enter_getppid"),
        lambda: bpf_map.type,
        lambda: bpf_map.max_entries,
        lambda: bpf_map.lookup(bytes(0)),
        lambda: obj.maps,
        lambda: obj.set_rodata("target_tgid", 1),
        lambda: obj.load(),
    ):
        with pytest.raises(BpfHandleClosedError) as exc:
            call()
        assert exc.value.errno_name == "EBADF"
        assert exc.value.obj == "binding_test"
    with pytest.raises(BpfHandleClosedError):
        prog.autoload = True
    with pytest.raises(BpfHandleClosedError):
        bpf_map.max_entries = 4
