"""Runs and provenance: :func:`load_runs` over the run records (``run.json``, written through
:mod:`irlib.provenance`), published numbers and notebook sweeps."""

from irlib.results.published import published_results
from irlib.results.runs import load_runs

__all__ = ["load_runs", "published_results"]
