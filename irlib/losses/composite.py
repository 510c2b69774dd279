"""Composite objectives: a weighted sum of loss terms, each on named training outputs of a model.

A model's training pass returns named outputs (``"descriptor"`` and, per method, batch-attended streams, attention-
pooled vectors, reconstructions, ...). A :class:`LossTerm` says which registered loss applies to which of them and
with what weight; :class:`CompositeLoss` builds the terms' modules (class-weight heads sized by the output they
read) and returns the total and every term's value, so each is logged on its own.

Descriptor losses (those whose single input is ``"descriptor"``) apply to the model's descriptor *streams*
(:class:`Stream`): the outputs of one stream are concatenated along the batch with the labels repeated, so one head
sees all of them (BatchFormer's shared classifier); several streams are separate weighted terms of one head (the
Batch Transformer's ``λ·L + L_BT + L_CBA``). ``on`` in a term picks the outputs it supervises instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from irlib.losses.registry import create_loss, loss_class

DESCRIPTOR = "descriptor"


@dataclass(frozen=True)
class Stream:
    """Training outputs supervised together by one descriptor-loss head: concatenated along the batch (labels
    repeated once per output), the term's value on them multiplied by ``weight``."""

    outputs: tuple[str, ...]
    weight: float = 1.0


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of an objective: registered loss ``name`` built with ``kwargs``.

    ``on``: the training outputs a single-input loss supervises (several are one :class:`Stream`); ``None`` means
    the model's descriptor streams for a descriptor loss, else the loss's own input. Losses with several inputs
    (a reconstruction and its target) read their named outputs and take no ``on``.
    """

    name: str
    weight: float = 1.0
    on: tuple[str, ...] | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        loss_class(self.name)  # unknown names fail here, with the available ones listed
        if isinstance(self.weight, bool) or not isinstance(self.weight, int | float) or not self.weight >= 0:
            raise ValueError(f"loss term {self.name!r}: weight must be a number >= 0, got {self.weight!r}")
        if self.on is not None and (not self.on or not all(isinstance(o, str) and o for o in self.on)):
            raise ValueError(f"loss term {self.name!r}: on must name one or more training outputs, got {self.on!r}")
        if not isinstance(self.kwargs, Mapping):
            raise ValueError(f"loss term {self.name!r}: kwargs must be a mapping, got {self.kwargs!r}")

    @classmethod
    def from_spec(cls, spec: LossTerm | Mapping[str, Any]) -> LossTerm:
        """A term from ``{name, weight?, on?, kwargs?}`` (``on``: one output name or a list); other keys -> error."""
        if isinstance(spec, LossTerm):
            return spec
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"a loss term is a mapping with at least 'name', got {spec!r}")
        unknown = sorted(set(spec) - {"name", "weight", "on", "kwargs"})
        if unknown:
            raise ValueError(
                f"loss term {spec['name']!r}: unknown key(s) {unknown}; a term has name, weight, on and kwargs "
                f"(the loss's own arguments go under kwargs)"
            )
        on, weight = spec.get("on"), spec.get("weight", 1.0)
        if isinstance(weight, str) and weight.strip():  # PyYAML reads 1e-2 as a string
            try:
                weight = float(weight)
            except ValueError:
                pass
        return cls(
            name=spec["name"],
            weight=weight,
            on=(on,) if isinstance(on, str) else None if on is None else tuple(on),
            kwargs=dict(spec.get("kwargs") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec :meth:`from_spec` reads (for ``config.yaml``)."""
        out: dict[str, Any] = {"name": self.name, "weight": self.weight}
        if self.on is not None:
            out["on"] = list(self.on)
        if self.kwargs:
            out["kwargs"] = dict(self.kwargs)
        return out


def _read_outputs(plan: tuple[Stream, ...] | tuple[str, ...]) -> list[str]:
    """The training outputs a term's plan reads, in order."""
    return [o for s in plan for o in s.outputs] if isinstance(plan[0], Stream) else list(plan)


def merge_terms(run_terms: Iterable[LossTerm], model_terms: Iterable[LossTerm]) -> list[LossTerm]:
    """The run's terms, then the model's own terms (a method's auxiliary losses) that the run does not name: a run
    re-weights a model's term by naming it."""
    run_terms = list(run_terms)
    named = {t.name for t in run_terms}
    return run_terms + [t for t in model_terms if t.name not in named]


class CompositeLoss(nn.Module):
    """``(training outputs, labels (B,)) -> (total, {term: value})``: the weighted sum of ``terms``.

    Args:
        terms: the loss terms, e.g. from :func:`merge_terms`.
        output_dims: channel size of every training output by name (a head's ``embedding_dim``); outputs a term
            names must be listed.
        num_classes: classes of the training set, for losses that own class weights.
        streams: the model's descriptor streams (default: the descriptor alone).

    Term values are reported unweighted; a term's key is its loss name, suffixed ``@outputs`` when a name repeats.
    """

    def __init__(
        self,
        terms: Sequence[LossTerm],
        *,
        output_dims: Mapping[str, int],
        num_classes: int | None = None,
        streams: Sequence[Stream] = (Stream((DESCRIPTOR,)),),
    ) -> None:
        super().__init__()
        if not terms:
            raise ValueError("an objective needs at least one loss term")
        self.terms = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        self.plans: dict[str, tuple[Stream, ...] | tuple[str, ...]] = {}  # streams, or a multi-input loss's inputs
        repeated = {t.name for t in terms if sum(u.name == t.name for u in terms) > 1}
        for term in terms:
            cls = loss_class(term.name)
            if len(cls.inputs) > 1 and term.on is not None:
                raise ValueError(f"loss {term.name!r} reads the outputs {list(cls.inputs)}; it takes no 'on'")
            if term.on is not None:
                plan: tuple[Stream, ...] | tuple[str, ...] = (Stream(term.on),)
            elif cls.inputs == (DESCRIPTOR,):
                plan = tuple(streams)
            else:
                plan = (Stream(cls.inputs),) if len(cls.inputs) == 1 else cls.inputs
            names = _read_outputs(plan)
            missing = [o for o in names if o not in output_dims]
            if missing:
                raise ValueError(
                    f"loss {term.name!r} reads training output(s) {missing} that this model does not produce; its "
                    f"outputs: {sorted(output_dims)}"
                )
            dims = {output_dims[o] for o in names}
            if isinstance(plan[0], Stream) and len(dims) > 1:
                raise ValueError(f"loss {term.name!r}: one head cannot read outputs of sizes {sorted(dims)} ({names})")
            key = f"{term.name}@{'+'.join(names)}" if term.name in repeated else term.name
            module = create_loss(term.name, embedding_dim=dims.pop(), num_classes=num_classes, **term.kwargs)
            self._add(key, module, term.weight, plan)
        self.config: list[dict[str, Any]] = [t.to_dict() for t in terms]

    @classmethod
    def wrap(cls, loss: nn.Module, streams: Sequence[Stream] = (Stream((DESCRIPTOR,)),)) -> CompositeLoss:
        """A one-term objective around a loss module of one's own, ``loss(descriptors (B, D), labels (B,)) -> ()``,
        on the descriptor ``streams``; its key is ``"loss"``."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.terms, self.weights, self.plans = nn.ModuleDict(), {}, {}
        self._add("loss", loss, 1.0, tuple(streams))
        self.config = [{"name": type(loss).__name__, "weight": 1.0}]
        return self

    def _add(self, key: str, module: nn.Module, weight: float, plan: tuple[Stream, ...] | tuple[str, ...]) -> None:
        if key in self.terms:
            raise ValueError(f"loss term {key!r} is given twice")
        self.terms[key] = module
        self.weights[key] = float(weight)
        self.plans[key] = plan

    @property
    def needs_positives(self) -> list[str]:
        """Keys of the terms that compare images of one class within the batch (they need class-balanced batches)."""
        return [key for key, module in self.terms.items() if getattr(module, "needs_positives", False)]

    def descriptor_head(self) -> nn.Module | None:
        """The first class-weight head on the ``"descriptor"`` output that has ``cosine`` (for top-1 logging)."""
        for key, module in self.terms.items():
            if hasattr(module, "cosine") and DESCRIPTOR in _read_outputs(self.plans[key]):
                return module
        return None

    def forward(self, outputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``outputs`` (name -> ``(B, ...)``), ``labels (B,)`` -> (weighted total ``()``, unweighted term values)."""
        values: dict[str, Tensor] = {}
        for key, module in self.terms.items():
            plan = self.plans[key]
            if isinstance(plan[0], Stream):
                values[key] = sum(
                    s.weight * module(torch.cat([outputs[o] for o in s.outputs]), labels.repeat(len(s.outputs)))
                    for s in plan
                )
            else:
                values[key] = module(*(outputs[o] for o in plan), labels)
        total = sum(self.weights[key] * value for key, value in values.items())
        return total, values
