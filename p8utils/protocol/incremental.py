"""The plan of a run on its committed features table: what stays, what is rewritten, what is new, how PCA refits.

:func:`plan_incremental` decides, from the committed part files as the new
listing sees them (:class:`PartTally`), without reading any feature; the
result, an :class:`IncrementalPlan`, is what the featurization builds
(:mod:`p8utils.pipeline`), what the commit keeps (:meth:`p8utils.runs.ActiveRun.follow`)
and what the manifest records (``counts`` and ``incremental``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

__all__ = ["INCREMENTAL_KEY", "IncrementalPlan", "PartTally", "plan_incremental"]

#: What tells an unchanged file in ``mode="incremental"`` (no content is read to decide).
INCREMENTAL_KEY: Tuple[str, ...] = ("path", "length", "modificationTime")

#: Values of :attr:`IncrementalPlan.pca_refit`.
REFITS: Tuple[str, ...] = ("moments", "rows")


@dataclass(frozen=True)
class PartTally:
    """One committed part file of ``features/``, as the new listing sees it.

    Attributes
    ----------
    name : str
        Part file name.
    rows : int
        Its rows.
    kept : int
        Its rows whose file is unchanged (same :data:`INCREMENTAL_KEY`, no transient error).
    """

    name: str
    rows: int
    kept: int


@dataclass(frozen=True)
class IncrementalPlan:
    """What a run does with the committed features table (one value, decided before any image is read).

    Attributes
    ----------
    featurized : int
        Listed files this run featurizes (new, changed, or read again after a transient error).
    reused : int
        Rows of the committed table kept as they are.
    removed : int
        Rows of the committed table dropped (files gone or changed).
    kept_files : tuple of str
        Committed part files that stay untouched and are named again by the new manifest.
    rewritten_files : tuple of str
        Committed part files that leave at the commit, their kept rows written again
        (those holding a dropped row; every one when ``compacted``).
    compacted : bool
        The whole table is rewritten (the file count would pass its bound).
    key : tuple of str or None
        The key that tells unchanged files (:data:`INCREMENTAL_KEY`); None for a run
        that is not incremental.
    on_previous : bool
        There was a committed table to build on.
    pca_refit : {"moments", "rows"} or None
        How the PCA is refit on the committed table: from the previous moments
        updated with the rows leaving and arriving, or from every row; None
        without a previous table.
    pca_refit_reason : str
        Why (not in the manifest; logged).
    """

    featurized: int
    reused: int = 0
    removed: int = 0
    kept_files: Tuple[str, ...] = ()
    rewritten_files: Tuple[str, ...] = ()
    compacted: bool = False
    key: Optional[Tuple[str, ...]] = None
    on_previous: bool = False
    pca_refit: Optional[str] = None
    pca_refit_reason: str = ""

    @classmethod
    def full(cls, listed: int, *, incremental: bool = False) -> IncrementalPlan:
        """Return the plan of a run that featurizes every listed file (no committed table to build on)."""
        return cls(featurized=listed, key=INCREMENTAL_KEY if incremental else None)

    @property
    def merges(self) -> bool:
        """True when the new rows are committed next to committed part files that stay (copy-on-write)."""
        return self.on_previous and not self.compacted

    def refit(self, how: str, why: str) -> IncrementalPlan:
        """Return the plan with the PCA refit that was actually made (``how`` in :data:`REFITS`) and why."""
        if how not in REFITS:
            raise ValueError(f"how={how!r}: one of {REFITS}")
        return dataclasses.replace(self, pca_refit=how if self.on_previous else None, pca_refit_reason=why)

    def manifest_counts(self) -> Dict[str, int]:
        """Return the manifest's ``counts`` entries of this plan: ``featurized``, ``reused``, ``removed``."""
        return {"featurized": self.featurized, "reused": self.reused, "removed": self.removed}

    def manifest_incremental(self) -> Optional[Dict[str, Any]]:
        """Return the manifest's ``incremental`` entry: None unless the run built on a committed table."""
        if not self.on_previous:
            return None
        out: Dict[str, Any] = {"files_kept": len(self.kept_files), "files_rewritten": len(self.rewritten_files),
                               "compacted": self.compacted}
        if self.pca_refit is not None:
            out["pca_refit"] = self.pca_refit
        return out


def plan_incremental(parts: Sequence[PartTally], listed: int, new_files: Callable[[int], int],
                     max_files: int) -> IncrementalPlan:
    """Decide what an incremental run does with the committed features table.

    Copy-on-write: part files whose rows are all kept stay untouched; those
    holding a dropped row are rewritten without it; new rows go to new files.
    When the file count would pass ``max_files`` the whole table is
    rewritten instead (compaction). Either way the committed table equals
    what a full run gives.

    Parameters
    ----------
    parts : sequence of PartTally
        The committed part files that hold rows.
    listed : int
        Files in the new listing.
    new_files : callable
        ``new_files(n)``: part files a write of ``n`` new rows makes.
    max_files : int
        Most part files ``features/`` may hold (:func:`p8utils.pipeline.max_feature_files`).

    Returns
    -------
    IncrementalPlan
        ``pca_refit`` is ``"moments"`` when committed part files stay (the
        moments update can then be tried), else ``"rows"``.
    """
    affected = tuple(sorted(p.name for p in parts if p.kept != p.rows))
    reused = sum(p.kept for p in parts)
    removed = sum(p.rows for p in parts) - reused
    featurized = listed - reused
    added = new_files(featurized) if featurized else 0
    compact = len(parts) + added > max_files  # kept files + one rewritten file per affected file + the new ones
    if compact:
        kept: Tuple[str, ...] = ()
        rewritten = tuple(sorted(p.name for p in parts))
    else:
        kept = tuple(sorted(p.name for p in parts if p.name not in affected))
        rewritten = affected
    refit, why = ("moments", "committed part files stay: update their moments") if kept else (
        "rows", "the whole table is rewritten" if compact else "no committed part file stays")
    return IncrementalPlan(featurized, reused, removed, kept, rewritten, compact, INCREMENTAL_KEY, True, refit, why)
