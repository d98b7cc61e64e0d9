"""Seed sets of a pre-registered confirmatory study: each must be new, i.e. share no seed with an earlier set (a
replication on seeds the pilot already saw would not be independent of the pilot it confirms)."""

from __future__ import annotations

from collections.abc import Iterable

from effrepro.errors import UsageError


def require_new_seeds(**groups: Iterable[int]) -> None:
    """Raise :class:`UsageError` if a seed set repeats seeds of an earlier one.

    ``groups`` maps each setting's name to its seeds, in the order the sets were drawn (pilot first). The first
    overlap found, taking the later sets in order, is reported in one line naming both settings, e.g.
    ``confirm_seeds repeats seeds [2] of seeds: a confirmatory study needs new seeds``.
    """
    seen: list[tuple[str, set[int]]] = []
    for name, seeds in groups.items():
        current = set(seeds)
        for earlier, earlier_seeds in seen:
            if overlap := sorted(current & earlier_seeds):
                raise UsageError(f"{name} repeats seeds {overlap} of {earlier}: a confirmatory study needs new seeds")
        seen.append((name, current))
