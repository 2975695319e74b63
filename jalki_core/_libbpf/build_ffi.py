"""cffi builder for ``jalki_core._libbpf._bindings`` (out-of-line API mode).

setuptools runs it through ``cffi_modules=["jalki_core/_libbpf/build_ffi.py:ffibuilder"]``;
it can also be run directly (``python jalki_core/_libbpf/build_ffi.py``) to build
the extension in place for development. The C helpers live in ``shim.c`` and
``shim.h`` next to this file; paths are resolved from ``__file__`` so the build
works from the repository root, an sdist or a build directory.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent

# Only what the Python wrappers call. Enum-typed parameters and results are
# declared as int (ABI-identical); the C compiler checks the real prototypes.
LIBBPF_CDEF = """
struct bpf_object;
struct bpf_program;
struct bpf_map;
struct bpf_link;
struct ring_buffer;
struct bpf_object_open_opts;

enum bpf_stats_type { BPF_STATS_RUN_TIME, ... };

struct bpf_object *bpf_object__open_file(const char *path,
                                         const struct bpf_object_open_opts *opts);
const char *bpf_object__name(const struct bpf_object *obj);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj,
                                             struct bpf_program *prog);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj,
                                     const struct bpf_map *map);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj,
                                             const char *name);

const char *bpf_program__name(const struct bpf_program *prog);
const char *bpf_program__section_name(const struct bpf_program *prog);
_Bool bpf_program__autoload(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, _Bool autoload);
int bpf_program__fd(const struct bpf_program *prog);
struct bpf_link *bpf_program__attach(const struct bpf_program *prog);
struct bpf_link *bpf_program__attach_trace(const struct bpf_program *prog);
struct bpf_link *bpf_program__attach_raw_tracepoint(const struct bpf_program *prog,
                                                    const char *tp_name);
struct bpf_link *bpf_program__attach_tracepoint(const struct bpf_program *prog,
                                                const char *tp_category,
                                                const char *tp_name);

int bpf_link__fd(const struct bpf_link *link);
int bpf_link__destroy(struct bpf_link *link);

const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__type(const struct bpf_map *map);
uint32_t bpf_map__key_size(const struct bpf_map *map);
uint32_t bpf_map__value_size(const struct bpf_map *map);
uint32_t bpf_map__max_entries(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, uint32_t max_entries);
const void *bpf_map__initial_value(struct bpf_map *map, size_t *psize);

int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);

int ring_buffer__poll(struct ring_buffer *rb, int timeout_ms);
int ring_buffer__consume(struct ring_buffer *rb);
int ring_buffer__epoll_fd(const struct ring_buffer *rb);
void ring_buffer__free(struct ring_buffer *rb);

int bpf_enable_stats(int type);

/* BTF (libbpf 1.1 btf.h): reading a record struct's members for the layout check. */
struct btf;
struct btf_type { uint32_t name_off; uint32_t info; ...; };
struct btf_member { uint32_t name_off; uint32_t type; uint32_t offset; };
struct btf_array { uint32_t type; uint32_t index_type; uint32_t nelems; };
#define BTF_KIND_STRUCT ...
#define BTF_KIND_UNION ...
#define BTF_KIND_ARRAY ...
struct btf *bpf_object__btf(const struct bpf_object *obj);
int32_t btf__find_by_name_kind(const struct btf *btf, const char *type_name, uint32_t kind);
const struct btf_type *btf__type_by_id(const struct btf *btf, uint32_t id);
int64_t btf__resolve_size(const struct btf *btf, uint32_t type_id);
int btf__resolve_type(const struct btf *btf, uint32_t type_id);
const char *btf__name_by_offset(const struct btf *btf, uint32_t offset);
uint16_t btf_kind(const struct btf_type *t);
uint16_t btf_vlen(const struct btf_type *t);
struct btf_member *btf_members(const struct btf_type *t);
uint32_t btf_member_bit_offset(const struct btf_type *t, uint32_t member_idx);
uint32_t btf_member_bitfield_size(const struct btf_type *t, uint32_t member_idx);
struct btf_array *btf_array(const struct btf_type *t);
int libbpf_num_possible_cpus(void);

extern "Python" void jalki_py_print(int level, const char *msg);
"""


C_PARTS = ("shim", "recordjson")
"""The C helpers, each a ``.c`` with its ``.h`` next to this file: the libbpf shim, and the record to
NDJSON encoder (``jalki_core.recordjson``)."""


def _shim_cdef() -> str:
    """The helpers' headers without their preprocessor lines, which cffi's parser rejects."""
    text = "\n".join((HERE / f"{part}.h").read_text() for part in C_PARTS)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _pkg_config_flags() -> tuple[list[str], list[str], list[str]]:
    """Include dirs, library dirs and libraries from ``pkg-config libbpf``, if present."""
    include_dirs: list[str] = []
    library_dirs: list[str] = []
    libraries: list[str] = []
    if shutil.which("pkg-config") is None:
        return include_dirs, library_dirs, libraries
    try:
        out = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "libbpf"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return include_dirs, library_dirs, libraries
    for flag in shlex.split(out):
        if flag.startswith("-I"):
            include_dirs.append(flag[2:])
        elif flag.startswith("-L"):
            library_dirs.append(flag[2:])
        elif flag.startswith("-l"):
            libraries.append(flag[2:])
    return include_dirs, library_dirs, libraries


def _make_builder() -> cffi.FFI:
    builder = cffi.FFI()
    builder.cdef(LIBBPF_CDEF + _shim_cdef())
    include_dirs, library_dirs, libraries = _pkg_config_flags()
    for lib in ("bpf", "elf", "z"):
        if lib not in libraries:
            libraries.append(lib)
    builder.set_source(
        "jalki_core._libbpf._bindings",
        "\n".join((HERE / f"{part}.c").read_text() for part in C_PARTS),
        include_dirs=[str(HERE), *include_dirs],
        library_dirs=library_dirs,
        libraries=libraries,
        extra_compile_args=["-Wall", "-Wno-unused-function"],
    )
    return builder


ffibuilder = _make_builder()


if __name__ == "__main__":
    # Development build: put _bindings*.so next to this file.
    build_dir = os.environ.get("JALKI_CFFI_TMPDIR", "/tmp/jalki_cffi_build")
    so_path = ffibuilder.compile(tmpdir=build_dir, verbose=False)
    target = HERE / Path(so_path).name
    shutil.copy2(so_path, target)
    print(target)
