"""Turn a float model into a switchable-precision one, and switch it between bit-widths.

:func:`quantize_model` traces one forward pass to learn the execution order of the convolutions, linears
and BatchNorms, replaces every Conv2d / Linear except the first conv and the last linear (kept FP32, as in
the paper) by its quantised version, and every BatchNorm by a :class:`SwitchableNorm` with one copy per
bit-width. The traced order is kept in ``model.quant_graph`` and decides which BN copy is active:

* ``per_bit`` (multi-precision): the BN after a layer running at ``b`` bits uses copy ``"b"``;
* ``transitional`` (mixed precision, TBN from Bit-Mixer): copy ``"b_i_b_j"`` with ``b_i`` the bits of the
  layer that produces the BN input and ``b_j`` the bits of the next quantised layer in execution order.
  Reconstruction: the paper names n^2 copies per BN but not the indexing; a BN after the FP32 stem uses the
  pair ``(b_j, b_j)``, a BN after the last quantised layer ``(b_i, b_i)``.

``weight_scales`` (recorded in the graph): ``shared`` (double rounding, one ``s_h`` per layer) or ``unshared``
(one learnable weight step per bit-width, the paper's "Ours*").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from effrepro.errors import UsageError
from effrepro.quant.functional import SCALE_EPS, check_bits, check_tie_mode
from effrepro.quant.modules import SCALE_INITS, QuantConv2d, QuantLinear, SwitchableNorm, check_weight_scales

BN_MODES = ("per_bit", "transitional")
BitConfig = int | Mapping[str, int]


@dataclass
class QuantGraph:
    """What the traced forward pass told us: quantised layers in execution order and each BN's neighbours."""

    bits: tuple[int, ...]
    tie_mode: str
    bn_mode: str
    layers: list[str]
    fp_layers: list[str]
    norm_links: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # bn -> (producer, next)
    weight_scales: str = "shared"

    def as_dict(self) -> dict:
        return {"bits": list(self.bits), "tie_mode": self.tie_mode, "bn_mode": self.bn_mode,
                "layers": list(self.layers), "fp_layers": list(self.fp_layers),
                "norm_links": {k: list(v) for k, v in self.norm_links.items()}, "weight_scales": self.weight_scales}


def _trace_order(model: nn.Module, example: Tensor) -> list[tuple[str, nn.Module]]:
    """Modules (conv, linear, BN) in the order a forward pass first calls them."""
    kinds = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, SwitchableNorm)
    order: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            def hook(mod: nn.Module, _inp: object, _out: object, name: str = name) -> None:
                if id(mod) not in seen:
                    seen.add(id(mod))
                    order.append((name, mod))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return [(n, m) for n, m in order if not any(n.startswith(p + ".norms.") for p, _ in order)]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _bn_keys(bits: Sequence[int], bn_mode: str) -> list[str]:
    if bn_mode == "per_bit":
        return [str(b) for b in bits]
    return [f"{i}_{j}" for i in bits for j in bits]


def quantize_model(
    model: nn.Module,
    example_input: Tensor,
    bits: Sequence[int] = (8, 6, 4, 2),
    tie_mode: str = "half_up",
    bn_mode: str = "per_bit",
    keep_fp: Sequence[str] | None = None,
    weight_scales: str = "shared",
) -> nn.Module:
    """Replace convs / linears (all but ``keep_fp``; default the first conv and the last linear executed)
    by quantised layers and every BatchNorm by a per-bit :class:`SwitchableNorm`; in place, returns ``model``.
    ``weight_scales="unshared"`` gives every bit-width its own weight step (no double rounding).
    """
    if bn_mode not in BN_MODES:
        raise UsageError(f"unknown bn_mode {bn_mode!r}; use one of: {', '.join(BN_MODES)}")
    check_tie_mode(tie_mode)
    check_weight_scales(weight_scales)
    bit_list = tuple(sorted({check_bits(b) for b in bits}, reverse=True))
    order = _trace_order(model, example_input)
    weighted = [n for n, m in order if isinstance(m, (nn.Conv2d, nn.Linear))]
    if keep_fp is None:
        first_conv = next((n for n, m in order if isinstance(m, nn.Conv2d)), None)
        last_linear = next((n for n, m in reversed(order) if isinstance(m, nn.Linear)), None)
        keep_fp = [n for n in (first_conv, last_linear) if n is not None]
    unknown = sorted(set(keep_fp) - set(weighted))
    if unknown:
        raise UsageError(f"keep_fp names {unknown} are not conv/linear layers of the model")
    layers = [n for n in weighted if n not in keep_fp]
    links: dict[str, tuple[str | None, str | None]] = {}
    producer: str | None = None
    for index, (name, module) in enumerate(order):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            producer = name
        else:
            start = next(i for i, (n, _) in enumerate(order) if n == producer) if producer else index
            nxt = next((n for n, _ in order[start + 1:] if n in layers), None)
            links[name] = (producer if producer in layers else None, nxt)
    for name, module in order:
        if name in layers:
            cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
            _set_module(model, name, cls.from_float(module, bit_list, tie_mode, weight_scales))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            _set_module(model, name, SwitchableNorm(module, _bn_keys(bit_list, bn_mode)))
    model.quant_graph = QuantGraph(bit_list, tie_mode, bn_mode, layers, list(keep_fp), links, weight_scales)
    set_bits(model, bit_list[0])
    return model


def graph_of(model: nn.Module) -> QuantGraph:
    graph = getattr(model, "quant_graph", None)
    if not isinstance(graph, QuantGraph):
        raise UsageError("this model is not quantised; build it with effrepro.quant.quantize_model")
    return graph


def quant_layers(model: nn.Module) -> list[tuple[str, QuantConv2d | QuantLinear]]:
    """Quantised layers in execution order."""
    return [(name, model.get_submodule(name)) for name in graph_of(model).layers]


def bit_config(model: nn.Module, config: BitConfig) -> dict[str, int]:
    """A per-layer ``{name: bits}`` from an int (uniform) or a mapping; checks names and bit-widths."""
    graph = graph_of(model)
    if isinstance(config, Mapping):
        missing = [n for n in graph.layers if n not in config]
        extra = sorted(set(config) - set(graph.layers))
        if missing or extra:
            raise UsageError(f"bit configuration does not match the model: missing {missing[:3]}, unknown "
                             f"{extra[:3]}; give one bit-width per quantised layer")
        return {n: check_bits(int(config[n]), graph.bits) for n in graph.layers}
    return dict.fromkeys(graph.layers, check_bits(config, graph.bits))


def norm_key(graph: QuantGraph, bits: Mapping[str, int], norm: str) -> str:
    producer, nxt = graph.norm_links.get(norm, (None, None))
    b_prod = bits[producer] if producer is not None else None
    b_next = bits[nxt] if nxt is not None else None
    if b_prod is None and b_next is None:
        b_prod = b_next = graph.bits[0]
    b_prod = b_next if b_prod is None else b_prod
    b_next = b_prod if b_next is None else b_next
    return str(b_prod) if graph.bn_mode == "per_bit" else f"{b_prod}_{b_next}"


def set_bits(model: nn.Module, config: BitConfig) -> dict[str, int]:
    """Switch every quantised layer (uniform int, or ``{layer: bits}``) and select the matching BN copies."""
    graph = graph_of(model)
    bits = bit_config(model, config)
    for name, layer in quant_layers(model):
        layer.bits = bits[name]
    for name, module in model.named_modules():
        if isinstance(module, SwitchableNorm):
            module.active = norm_key(graph, bits, name)
    return bits


def to_transitional(model: nn.Module) -> nn.Module:
    """Per-bit BN -> transitional BN: copy ``"i_j"`` starts from the trained per-bit copy ``"i"``."""
    graph = graph_of(model)
    if graph.bn_mode == "transitional":
        return model
    pairs = _bn_keys(graph.bits, "transitional")
    for module in model.modules():
        if isinstance(module, SwitchableNorm):
            module.add_keys(pairs, {p: p.split("_")[0] for p in pairs})
            for key in [str(b) for b in graph.bits]:
                del module.norms[key]
    graph.bn_mode = "transitional"
    set_bits(model, graph.bits[0])
    return model


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(weights, quantiser parameters)``: the scales and zero points go to their own optimizer (wd 0)."""
    quant_ids = set()
    for _, layer in quant_layers(model):
        quant_ids.update(id(p) for p in layer.weight_scale_params())
        quant_ids.update(id(p) for p in layer.act_quant.parameters())
    weights = [p for p in model.parameters() if id(p) not in quant_ids]
    scales = [p for p in model.parameters() if id(p) in quant_ids]
    return weights, scales


def scale_groups(model: nn.Module, bits: int | None = None) -> Iterator[list[Tensor]]:
    """Per quantised layer, the scale tensors used at ``bits``: the weight step (``s_h``, or the bit-width's own
    when unshared) and ``s_b`` (for ALRS)."""
    for _, layer in quant_layers(model):
        b = layer.bits if bits is None else bits
        yield [layer.weight_scale_at(b), layer.act_quant.scale[str(b)]]


@torch.no_grad()
def clamp_scales_(model: nn.Module) -> int:
    """Keep every learned step positive after an optimizer step (a negative step collapses LSQ training);
    returns how many scales had to be clamped (with Adam, a scale smaller than the LR can jump below zero in
    one step: a sign that the scale LR is too large)."""
    clamped = 0
    for _, layer in quant_layers(model):
        for p in [*layer.weight_scale_params(), *layer.act_quant.scale.values()]:
            clamped += int(p.item() < SCALE_EPS)
            p.clamp_(min=SCALE_EPS)
    return clamped


@torch.no_grad()
def calibrate(model: nn.Module, inputs: Iterable[Tensor] | Tensor, bits: Sequence[int] | None = None,
              scale_init: str = "mse", weights: bool = True) -> None:
    """Initialise the weight scales (shared, or one per bit-width) from the weights (unless ``weights=False``)
    and, per bit-width, the activation scales from one batch, each bit-width with the earlier layers already
    quantised at that bit-width. BatchNorm normalises with the batch statistics, as in training (the activations
    the scales will see), while its running statistics are left untouched (momentum 0 during calibration).
    """
    if scale_init not in SCALE_INITS:
        raise UsageError(f"unknown scale init {scale_init!r}; use one of: {', '.join(SCALE_INITS)}")
    graph = graph_of(model)
    batch = inputs if isinstance(inputs, Tensor) else next(iter(inputs))
    chosen = graph.bits if bits is None else tuple(check_bits(b, graph.bits) for b in bits)
    layers = quant_layers(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    was_training = model.training
    model.train()
    try:
        for norm in norms:
            norm.momentum = 0.0
        for _, layer in layers:
            if weights:
                layer.init_weight_scale(scale_init)
            layer.act_quant.scale_init = scale_init
            layer.act_quant.calibrating = True
        for b in chosen:
            for _, layer in layers:
                layer.act_quant.initialized[layer.act_quant.bit_list.index(b)] = False
            set_bits(model, b)
            model(batch)
    finally:
        for _, layer in layers:
            layer.act_quant.calibrating = False
        for norm, (momentum, tracked) in zip(norms, saved):
            norm.momentum = momentum
            if tracked is not None:
                norm.num_batches_tracked.copy_(tracked)
        model.train(was_training)
    set_bits(model, chosen[0])


def calibrated_bits(model: nn.Module) -> list[int]:
    """Bit-widths whose activation scales have been initialised in every quantised layer."""
    layers = quant_layers(model)
    graph = graph_of(model)
    return [b for i, b in enumerate(graph.bits) if all(bool(l.act_quant.initialized[i]) for _, l in layers)]
