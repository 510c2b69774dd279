"""irlib: a notebook-first research workbench for instance-level image retrieval."""

__version__ = "0.1.0"
