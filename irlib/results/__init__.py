"""Runs and provenance: run records (``run.json``), :func:`load_runs`, published numbers and notebook sweeps."""

from irlib.results.published import published_results
from irlib.results.runs import RUN_FILE, eval_record, load_runs, new_record, write_run

__all__ = ["RUN_FILE", "eval_record", "load_runs", "new_record", "published_results", "write_run"]
