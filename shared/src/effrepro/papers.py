"""The seven paper projects, named in one place: ``papers.txt`` beside this module, which the Makefile, the root
conftest and the reproduce dispatcher all read."""

from __future__ import annotations

from importlib.resources import files

PAPERS: tuple[str, ...] = tuple(
    line.strip() for line in files("effrepro").joinpath("papers.txt").read_text().splitlines() if line.strip()
)

# A change under one of these touches every paper (the shared package, the pins, the build).
SHARED_PATHS = ("shared/", "Makefile", "constraints.txt", "conftest.py", "pytest.ini",
                ".github/workflows/reproduce.yml")


def affected_papers(changed: list[str]) -> list[str]:
    """The papers whose reproduction a change to ``changed`` (repository-relative paths) can move: every paper
    for a shared path, else the papers whose folder (or reference results) changed."""
    if any(path.startswith(SHARED_PATHS) for path in changed):
        return list(PAPERS)
    hit = {paper for paper in PAPERS for path in changed
           if path.startswith(f"{paper}/") or path.startswith(f"results/reference/{paper}/")}
    return [paper for paper in PAPERS if paper in hit]


if __name__ == "__main__":  # python -m effrepro.papers [changed paths on stdin] -> JSON list for a CI matrix
    import json
    import sys

    if sys.argv[1:] == ["all"]:
        print(json.dumps(list(PAPERS)))
    else:
        print(json.dumps(affected_papers([line.strip() for line in sys.stdin if line.strip()])))
