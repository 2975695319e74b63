"""``jalki new-probe NAME``: a new probe package, ready to build, run and test.

:func:`new_probe` renders ``DIR/jalki-NAME/`` from templates cut down from
``plugins/jalki_example``: a ``pyproject.toml`` using the core build hook, one
module (record layout, probe, plugin hook), one ``.bpf.c`` and one ``.h``
(a working program on the tracepoint ``sched:sched_process_exec``: one event
per program started, with the new program's process), a README and its own
tests (a decoder test, and a kernel test that starts a program and finds its
event). The package builds with ``pip install --no-build-isolation -e``,
shows in ``jalki plugins`` and runs with ``jalki run --plugin NAME``.
"""

from __future__ import annotations

import re
from importlib import metadata, util
from pathlib import Path
from typing import Annotated

import typer

from jalki_core.errors import UsageError

__all__ = ["new_probe", "package_files"]

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
"""A probe name: a lowercase identifier (it names the module, the C struct and the event type)."""

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=77", "jalki>=0.1"]  # jalki: the build hook (clang at install time) and BPF headers
build-backend = "setuptools.build_meta"

[project]
name = "jalki-@NAME@"
version = "0.1.0"
description = "jalki probe @NAME@: one event per program started (sched:sched_process_exec)"
readme = "README.md"
requires-python = ">=3.11"
license = "Apache-2.0"
dependencies = ["jalki>=0.1"]
entry-points.jalki = { @NAME@ = "jalki_@NAME@" }

[tool.setuptools]
packages = ["jalki_@NAME@"]
package-data = { jalki_@NAME@ = ["*.bpf.o", "*.bpf.c", "*.h", "*.json"] }
cmdclass = { build_py = "jalki_core.build_hook.build_py", sdist = "jalki_core.build_hook.sdist", \
bdist_wheel = "jalki_core.build_hook.bdist_wheel" }

[tool.pytest.ini_options]
markers = ["kernel: needs root and a real kernel (loads BPF programs)"]
"""

_README = """\
# jalki-@NAME@

A jalki probe package made by `jalki new-probe @NAME@`: one event
(`kernel.@NAME@.exec`) per program started with execve(), from the tracepoint
`sched:sched_process_exec`, with the new program's pid, command and cgroup.

    pip install --no-build-isolation -e .   # compiles jalki_@NAME@/@NAME@.bpf.c (clang)
    jalki plugins                           # lists @NAME@
    sudo jalki run --plugin @NAME@ --seconds 5
    sudo python -m pytest tests             # decoder test; kernel test as root

Make it yours: change the record in `jalki_@NAME@/@NAME@.h` and its Python
mirror `RECORD` (member for member: the loader checks them against the
object's BTF), the tracepoint and program in `@NAME@.bpf.c`, and `decode`.
After editing the C, rebuild in place with
`python -m jalki_core.build_hook .`. The jalki README's "Writing a probe
plugin" walks through a complete example (`plugins/jalki_example`).
"""

_INIT = '''\
"""jalki-@NAME@: one event per program started with execve() (``sched:sched_process_exec``).

Made by ``jalki new-probe @NAME@``; see README.md to make it yours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jalki_core import AttachRung, Event, EventContext, Probe, RecordLayout, hookimpl

if TYPE_CHECKING:
    from jalki_core import BoundProbeRegistry

__version__ = "0.1.0"

RECORD = RecordLayout.with_header(c_struct="@NAME@_event", fmt="II", fields=("tid", "cpu"), c_size=48)
"""``struct @NAME@_event`` (``@NAME@.h``): the shared header (the new program's process), then tid and cpu."""


class @CLASS@Probe(Probe):
    """One event per program started: ``process_data`` is its process, ``data`` its thread and CPU."""

    name = "@NAME@"
    observes = "sched:sched_process_exec"
    event_types = ("kernel.@NAME@.exec",)
    bpf_object = "@NAME@.bpf.o"
    layout = RECORD
    ladder = (AttachRung("tracepoint", ("tp_sched_process_exec",), "tracepoint/sched/sched_process_exec"),)

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        events = []
        for record in self.layout.struct.iter_unpack(batch):
            tid, cpu = record[5:]
            event = ctx.from_header("kernel.@NAME@.exec", record)
            event["data"] = {"tid": tid, "cpu": cpu}
            events.append(event)
        return events


@hookimpl
def jalki_register_probes(registry: BoundProbeRegistry) -> None:
    """Register the @NAME@ probe."""
    registry.register(@CLASS@Probe())
'''

_HEADER = """\
/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Record of the @NAME@ probe: the one definition (mirrored by RECORD in jalki_@NAME@/__init__.py). */
#ifndef JALKI_@UPPER@_H
#define JALKI_@UPPER@_H

#include "jalki/common.bpf.h"

struct @NAME@_event {
	struct jalki_event_header hdr; /* the new program's process: pid (tgid), comm, cgroup */
	__u32 tid;                     /* the thread that called execve() */
	__u32 cpu;
};
_Static_assert(sizeof(struct @NAME@_event) == 48, "@NAME@_event layout");

#endif /* JALKI_@UPPER@_H */
"""

_PROGRAM = """\
// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* @NAME@: one event per program started with execve() (tracepoint sched/sched_process_exec). */
#include "@NAME@.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(@NAME@_event); /* the record's type in the object's BTF, for the layout check */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

SEC("tracepoint/sched/sched_process_exec")
int tp_sched_process_exec(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	struct @NAME@_event *ev;

	if (jalki_is_self(tgid) || !jalki_pass_tgid_filter(tgid) || jalki_sampled_out())
		return 0;
	ev = jalki_reserve(sizeof(*ev)); /* zeroed; counts ringbuf_full when there is no room */
	if (!ev)
		return 0;
	jalki_fill_header_current(&ev->hdr); /* the current task: the new program */
	ev->tid = (__u32)pid_tgid;
	ev->cpu = bpf_get_smp_processor_id();
	bpf_ringbuf_submit(ev, 0);
	return 0;
}
"""

_TEST = '''\
"""jalki-@NAME@: the decoder (no root needed) and the probe on the real kernel (root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest
from jalki_@NAME@ import RECORD, @CLASS@Probe

from jalki_core.events import OWNER_KNOWN
from jalki_core.session import TraceSession
from jalki_core.testing import FakeRingBuffer, MemoryEmitter, decode_all, event_validator


def test_decoder() -> None:
    ring = FakeRingBuffer(RECORD)
    ring.push_values(ts_ns=1, cgroup_id=7, pid=42, flags=OWNER_KNOWN, comm=b"true", tid=43, cpu=1)
    [event] = decode_all(@CLASS@Probe(), ring)
    event_validator()(event)
    assert event["type"] == "kernel.@NAME@.exec"
    assert event["process_data"] == {"pid": 42, "command": "true", "cgroup_id": 7}
    assert event["data"] == {"tid": 43, "cpu": 1}


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="loads BPF programs: needs root")
def test_a_started_program_is_reported() -> None:
    emitter = MemoryEmitter()
    session = TraceSession([@CLASS@Probe()], [emitter], strict=True)
    session.start()
    thread = threading.Thread(target=session.run, daemon=True)
    thread.start()
    try:
        child = subprocess.Popen([shutil.which("true") or "/bin/true"])
        assert child.wait() == 0
    finally:
        session.request_stop()
        thread.join(timeout=10)
        session.stop()
    mine = [e for e in emitter.events if e["process_data"]["pid"] == child.pid]
    assert [(e["process_data"]["command"], e["data"]["tid"]) for e in mine] == [("true", child.pid)]
'''


def package_files(name: str) -> dict[str, str]:
    """The files of the package ``jalki-NAME``: path relative to its folder → text."""
    module = f"jalki_{name}"
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"{module}/__init__.py": _INIT,
        f"{module}/{name}.h": _HEADER,
        f"{module}/{name}.bpf.c": _PROGRAM,
        f"tests/test_{name}_probe.py": _TEST,
    }
    words = {"@NAME@": name, "@UPPER@": name.upper(),
             "@CLASS@": "".join(part.capitalize() for part in name.split("_"))}
    rendered = {}
    for path, text in files.items():
        for word, value in words.items():
            text = text.replace(word, value)
        rendered[path] = text
    return rendered


def _installed_plugin_names() -> set[str]:
    return {"core"} | {entry_point.name for entry_point in metadata.entry_points(group="jalki")}


def _check_name(name: str, target: Path) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"new-probe: {name!r} is not a probe name",
                         hint="use lowercase letters, digits and _, starting with a letter, "
                              "at most 32 characters, e.g. runq_wait")
    if name in _installed_plugin_names():
        raise UsageError(f"new-probe: a plugin named {name!r} is already installed",
                         hint="choose another name ('jalki plugins' lists the installed ones)")
    if util.find_spec(f"jalki_{name}") is not None:
        raise UsageError(f"new-probe: a module named jalki_{name} is already importable here",
                         hint="choose another name")
    try:
        metadata.distribution(f"jalki-{name}")
    except metadata.PackageNotFoundError:
        pass
    else:
        raise UsageError(f"new-probe: the distribution jalki-{name} is already installed",
                         hint=f"choose another name, or 'pip uninstall jalki-{name}' first")
    if not target.parent.is_dir():
        raise UsageError(f"new-probe: {target.parent} is not a directory", hint="pass an existing --path")
    if target.exists():
        raise UsageError(f"new-probe: {target} already exists", hint="choose another name or --path")


def new_probe(name: str, path: Path | str = ".") -> Path:
    """Write the probe package ``PATH/jalki-NAME/`` and return its folder.

    :raises UsageError: ``name`` is not a lowercase identifier, a plugin,
        module or distribution of that name is installed, ``path`` is not a
        directory, or ``PATH/jalki-NAME`` exists. Nothing is written then.
    """
    target = Path(path) / f"jalki-{name}"
    _check_name(name, target)
    for relative, text in package_files(name).items():
        file = target / relative
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
    return target


def new_probe_command(
    name: Annotated[str, typer.Argument(help="Probe name: lowercase letters, digits and _ (e.g. runq_wait).")],
    path: Annotated[Path, typer.Option("--path", help="Folder to create jalki-NAME/ in.")] = Path(),
) -> None:
    """Create a probe package PATH/jalki-NAME/ (a tracepoint probe in BPF C, its module and tests) to start from."""
    target = new_probe(name, path)
    typer.echo(f"created {target}; build it with: pip install --no-build-isolation -e {target}")
