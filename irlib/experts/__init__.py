"""Automatic switching between specialist (expert) retrieval models for universal retrieval (UnED).

Experts (:mod:`~irlib.experts.experts`) are embeddings that each serve some UnED domains, every one indexing the
whole database once; routers (:mod:`~irlib.experts.routers`) decide per query which expert embeds it and whose index
it searches; :mod:`~irlib.experts.evaluate` scores the universal model, every single expert, an oracle router and
the routers with UnED's official scorer and reports routing accuracy and cost; :mod:`~irlib.experts.run` builds the
experts from models (and per-domain whitenings, :mod:`~irlib.experts.whitening`) and saves the run.
"""

from irlib.experts.evaluate import ExpertsReport, evaluate_experts, save_report, systems_table
from irlib.experts.experts import Expert, ExpertIndex, ExpertSet
from irlib.experts.routers import ROUTERS, Decision, DomainSupport, Router, RouterInputs, RouterTraining, Routing
from irlib.experts.run import DEFAULT_ROUTERS, ExpertsConfig, ExpertSpec, build_routers, run_experts
from irlib.experts.whitening import apply_whitening, learn_whitening, whitened_expert

__all__ = [
    "DEFAULT_ROUTERS",
    "ROUTERS",
    "Decision",
    "DomainSupport",
    "Expert",
    "ExpertIndex",
    "ExpertSet",
    "ExpertSpec",
    "ExpertsConfig",
    "ExpertsReport",
    "Router",
    "RouterInputs",
    "RouterTraining",
    "Routing",
    "apply_whitening",
    "build_routers",
    "evaluate_experts",
    "learn_whitening",
    "run_experts",
    "save_report",
    "systems_table",
    "whitened_expert",
]
