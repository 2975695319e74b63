"""Emitters: where events go (stdout, files, and plugins' sinks)."""
