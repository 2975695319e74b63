"""Compile this plugin's BPF sources (clang, CO-RE) as part of the normal pip build."""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithBpf(build_py):  # type: ignore[misc]
    """Run jalki's clang driver over jalki_cpu/bpf/*.bpf.c before copying package data."""

    def run(self) -> None:
        from jalki_core.bpf_build import compile_package

        compile_package(HERE / "jalki_cpu")
        super().run()


setup(cmdclass={"build_py": BuildPyWithBpf})
