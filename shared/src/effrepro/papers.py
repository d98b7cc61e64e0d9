"""The seven paper projects, named in one place: ``papers.txt`` beside this module, which the Makefile, the root
conftest and the reproduce dispatcher all read."""

from __future__ import annotations

from importlib.resources import files

PAPERS: tuple[str, ...] = tuple(
    line.strip() for line in files("effrepro").joinpath("papers.txt").read_text().splitlines() if line.strip()
)
