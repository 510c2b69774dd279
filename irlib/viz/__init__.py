"""Figures for notebooks and papers."""
