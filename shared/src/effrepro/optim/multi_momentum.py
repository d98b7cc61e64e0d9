"""SGD with one momentum buffer per gradient component (DOT, DeepKD and their generalisation).

A training step produces several gradients of the *same* parameters (e.g. the task, target-class and
non-target-class parts of a distillation loss). Plain SGD sums them into one momentum buffer; this
optimizer keeps one buffer per component, each with its own momentum coefficient, and applies the
buffers one after another::

    for k in order:                                   # e.g. ("tog", "ncg", "tcg") for DeepKD
        d  = g_k (+ weight_decay * theta   if k is the weight-decay component)
        B_k = d                  on the first step of this buffer (torch SGD's convention)
        B_k = mu_k * B_k + (1 - dampening) * d      afterwards
        theta -= lr * B_k                          (in place, before the next component is computed)

The sequential in-place application matters only through weight decay: the decay term of a later
component sees the parameter already moved by the earlier ones (an O(lr^2 * wd) effect). It is what the
released DOT / DeepKD optimizers do, and we reproduce it.

``tied_momenta`` reproduces the released DeepKD optimizer, whose task buffer does *not* use its own
coefficient: it decays with mu_TCG when the parameter also received a TCG gradient, else with mu_NCG when
it received an NCG gradient, else with the mean of all coefficients. ``{"tog": ("tcg", "ncg")}`` encodes
exactly that rule; ``{}`` (the default) gives every buffer its own coefficient (the paper's description).

``implementation`` picks how the buffers move: ``"reference"`` (component by component, bucketed
``torch._foreach_*`` calls over the parameters), or the fused step of :mod:`effrepro.kernels.momentum` for
every parameter whose buffers all exist and that received every component's gradient this step (``"auto"``:
one Triton kernel pass per parameter on CUDA, a few whole-list ``torch._foreach_*`` calls on CPU;
``"foreach"``, ``"triton"`` force one). The fused CPU step performs the same float operations in the same
order as the reference, so both give identical parameters; first steps and parameters missing a component
always take the reference path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

GradLists = Mapping[str, Sequence[Tensor | None]]
IMPLEMENTATIONS = ("auto", "foreach", "triton", "reference")


def _buffer_key(component: str) -> str:
    return f"momentum_buffer_{component}"


class MultiMomentumSGD(Optimizer):
    """SGD whose gradient arrives in named components, each with its own momentum buffer and coefficient.

    Args:
        params: parameters or parameter groups (as for ``torch.optim.SGD``).
        lr: learning rate.
        momenta: ``{component: coefficient}``; the dict order is the default update order.
        weight_decay: L2 coefficient, added to the gradient of ``weight_decay_on`` only.
        weight_decay_on: the component whose buffer carries the decay; a parameter that got no gradient of
            that component takes the decay in the first component (in ``order``) it did get.
        order: the order in which the buffers are applied (default: ``momenta``'s order).
        tied_momenta: ``{component: (source, fallback, ...)}``: the buffer of ``component`` decays with the
            coefficient of the first listed component the parameter received a gradient of this step, and
            with the mean of all coefficients when it received none of them (the released DeepKD rule).
        dampening: as in ``torch.optim.SGD`` (not applied on a buffer's first step).
        implementation: ``"auto"`` (fused step: Triton on CUDA, ``torch._foreach_*`` on CPU), ``"foreach"``,
            ``"triton"`` or ``"reference"`` (see the module docstring).

    Gradients are passed to :meth:`step` as ``{component: [grad or None per parameter]}`` aligned with
    :meth:`flat_params`, or collected from ``p.grad`` with :meth:`capture` (which takes ownership of the
    ``.grad`` tensors and sets them to ``None``, so a later backward cannot overwrite a stored gradient).
    Every buffer lives in ``state[p]["momentum_buffer_<component>"]``, so ``state_dict`` round-trips.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momenta: Mapping[str, float],
        weight_decay: float = 0.0,
        weight_decay_on: str | None = None,
        order: Sequence[str] | None = None,
        tied_momenta: Mapping[str, Sequence[str] | str] | None = None,
        dampening: float = 0.0,
        implementation: str = "auto",
    ) -> None:
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"unknown implementation {implementation!r}; use one of {IMPLEMENTATIONS}")
        momenta = {str(k): float(v) for k, v in momenta.items()}
        if not momenta:
            raise ValueError("momenta must name at least one component")
        order = tuple(order) if order is not None else tuple(momenta)
        if sorted(order) != sorted(momenta):
            raise ValueError(f"order {order} must list each component of momenta {tuple(momenta)} once")
        if lr < 0 or weight_decay < 0 or any(not 0.0 <= m < 1.0 for m in momenta.values()):
            raise ValueError(f"need lr >= 0, weight_decay >= 0 and momenta in [0, 1); got {lr}, {weight_decay}, "
                             f"{momenta}")
        if weight_decay_on is not None and weight_decay_on not in momenta:
            raise ValueError(f"weight_decay_on={weight_decay_on!r} is not a component of {tuple(momenta)}")
        tied = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in (tied_momenta or {}).items()}
        for key, sources in tied.items():
            if key not in momenta or any(s not in momenta for s in sources):
                raise ValueError(f"tied_momenta {key!r}: {sources} names an unknown component")
        if weight_decay and weight_decay_on is None:
            weight_decay_on = order[0]
        defaults = dict(lr=lr, momenta=momenta, weight_decay=weight_decay, dampening=dampening)
        super().__init__(params, defaults)
        self.components = order
        self.weight_decay_on = weight_decay_on
        self.tied_momenta = tied
        self.implementation = implementation
        self._captured: dict[str, list[Tensor | None]] = {}

    # ---- gradient intake -----------------------------------------------------------------------------
    def flat_params(self) -> list[Tensor]:
        """All parameters in group order: the alignment of the gradient lists given to :meth:`step`."""
        return [p for group in self.param_groups for p in group["params"]]

    def capture(self, component: str) -> None:
        """Take ``p.grad`` of every parameter as the gradient of ``component`` and set ``p.grad = None``."""
        if component not in self.components:
            raise ValueError(f"unknown component {component!r}; known: {self.components}")
        grads = []
        for p in self.flat_params():
            grads.append(p.grad)
            p.grad = None
        self._captured[component] = grads

    def _collect(self, grads: GradLists | None) -> dict[str, list[Tensor | None]]:
        collected = dict(self._captured)
        self._captured = {}
        if grads is not None:
            collected.update({k: list(v) for k, v in grads.items()})
        unknown = sorted(set(collected) - set(self.components))
        if unknown:
            raise ValueError(f"gradients for unknown components {unknown}; known: {self.components}")
        n = len(self.flat_params())
        for name, values in collected.items():
            if len(values) != n:
                raise ValueError(f"component {name!r} has {len(values)} gradients for {n} parameters")
        return collected

    # ---- the update ----------------------------------------------------------------------------------
    def _coefficient(self, component: str, momenta: Mapping[str, float], present: set[str]) -> float:
        sources = self.tied_momenta.get(component)
        if not sources:
            return momenta[component]
        for source in sources:
            if source in present:
                return momenta[source]
        return sum(momenta.values()) / len(momenta)

    def _decay_target(self, present: set[str]) -> str | None:
        if self.weight_decay_on in present:
            return self.weight_decay_on
        return next((k for k in self.components if k in present), None)

    @torch.no_grad()
    def step(self, grads: GradLists | None = None, closure: Any = None) -> Any:  # type: ignore[override]
        """Apply every component's buffer in ``order``. ``grads``: ``{component: [grad|None per param]}``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        collected = self._collect(grads)
        offset = 0
        for group in self.param_groups:
            params = group["params"]
            group_grads = {k: v[offset:offset + len(params)] for k, v in collected.items()}
            offset += len(params)
            self._step_group(group, params, group_grads)
        return loss

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: dict[str, list[Tensor | None]]) -> None:
        lr, wd, damp, momenta = group["lr"], group["weight_decay"], group["dampening"], group["momenta"]
        present = [{k for k, v in grads.items() if v[i] is not None} for i in range(len(params))]
        decay_on = [self._decay_target(p) if wd else None for p in present]
        if self.implementation != "reference":
            fused = self._fused_step(group, params, grads, present)
            grads = {k: [None if i in fused else g for i, g in enumerate(v)] for k, v in grads.items()}
        for component in self.components:
            if component not in grads:
                continue
            # bucket the parameters by the coefficient their buffer uses, so each bucket is one foreach call
            buckets: dict[float, tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}
            for i, (p, g) in enumerate(zip(params, grads[component])):
                if g is None:
                    continue
                d = g.add(p, alpha=wd) if decay_on[i] == component else g
                state = self.state[p]
                key = _buffer_key(component)
                if key not in state:  # first step of this buffer: B = d, as torch SGD does
                    state[key] = torch.clone(d).detach()
                    p.add_(state[key], alpha=-lr)
                    continue
                mu = self._coefficient(component, momenta, present[i])
                bucket = buckets.setdefault(mu, ([], [], []))
                bucket[0].append(p)
                bucket[1].append(state[key])
                bucket[2].append(d)
            for mu, (ps, bufs, ds) in buckets.items():
                torch._foreach_mul_(bufs, mu)
                torch._foreach_add_(bufs, ds, alpha=1.0 - damp)
                torch._foreach_add_(ps, bufs, alpha=-lr)

    def _fused_step(self, group: dict[str, Any], params: list[Tensor], grads: dict[str, list[Tensor | None]],
                    present: list[set[str]]) -> set[int]:
        """The fused step for the parameters that have every component's gradient and buffer (grouped by
        device and dtype); returns their indices so the reference loop skips them."""
        from effrepro.kernels.momentum import multi_momentum_step

        comps = [k for k in self.components if k in grads]
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(params):
            state = self.state[p]
            if comps and present[i] == set(comps) and all(_buffer_key(k) in state for k in comps):
                groups.setdefault((p.device, p.dtype), []).append(i)
        fused: set[int] = set()
        all_present = set(comps)
        momenta = [self._coefficient(k, group["momenta"], all_present) for k in comps]
        decay = self._decay_target(all_present) if group["weight_decay"] else None
        for index in groups.values():
            ps = [params[i] for i in index]
            multi_momentum_step(
                ps, [[grads[k][i] for i in index] for k in comps],
                [[self.state[params[i]][_buffer_key(k)] for i in index] for k in comps], momenta, group["lr"],
                group["weight_decay"], comps.index(decay) if decay in comps else None, group["dampening"],
                backend=self.implementation)
            fused.update(index)
        return fused

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._captured = {}
        super().zero_grad(set_to_none=set_to_none)
