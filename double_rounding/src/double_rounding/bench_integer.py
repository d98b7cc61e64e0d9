"""``python -m double_rounding.bench_integer``: ResNet-18 from the one int8 file through the integer kernels.

For each bit-width the integer model (int8 store, and the packed 4-/2-bit store) is timed against the FP32
model and the de-quantised fake-quant model (what ``double_rounding eval`` runs), paired and interleaved,
warm-up excluded, one thread by default; medians with 95 % bootstrap intervals, ratios of medians with
paired bootstrap intervals. Weight bytes of the quantised layers are counted from the tensors the models
hold: ``stored`` (the int8 store or the packed codes, and the scales) and ``resident`` (plus the b-bit codes
a switch caches). Agreement with the de-quantised model is measured per layer on the same input and end to
end (top-1, max relative logit difference). The weights are random and calibrated on random input: latency
and bytes do not depend on training, and agreement is checked without a dataset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from effrepro.bench import paired_benchmark
from effrepro.kernels.bench import fmt_ci, median_ci, ratio_ci
from effrepro.quant import calibrate, export_int8, load_dequantized
from effrepro.train import seed_everything

from double_rounding.integer import (
    compare_outputs,
    float_weight_bytes,
    integer_model,
    layerwise_agreement,
    weight_bytes,
)
from double_rounding.models import ModelConfig, build_float_model, build_quant_model

TRAINED_BITS = [8, 6, 4, 2]


def build(arch: str, size: int, batch: int, seed: int = 0) -> tuple[dict[str, Any], torch.Tensor, ModelConfig]:
    cfg = ModelConfig(arch=arch, num_classes=1000, in_channels=3, input_size=[size, size])
    seed_everything(seed)
    model = build_quant_model(cfg, TRAINED_BITS)
    x = torch.randn(batch, 3, size, size)
    calibrate(model, x, scale_init="lsq")
    return export_int8(model, {"model": cfg.__dict__}, TRAINED_BITS), x, cfg


def run(arch: str = "resnet18", size: int = 224, batch: int = 4, bits: tuple[int, ...] = (8, 4, 2),
        repeats: int = 11, warmup: int = 2, device: str = "cpu") -> dict[str, Any]:
    artefact, x, cfg = build(arch, size, batch)
    dev = torch.device(device)
    x = x.to(dev)
    fp32 = build_float_model(cfg).eval().to(dev)
    arms: dict[str, torch.nn.Module] = {"fp32": fp32}
    agreement, memory = {}, {"fp32": float_weight_bytes(load_dequantized(build_quant_model(cfg, TRAINED_BITS),
                                                                         artefact, 8))}
    for b in bits:
        deq = load_dequantized(build_quant_model(cfg, TRAINED_BITS), artefact, b).eval().to(dev)
        arms[f"dequantized_w{b}"] = deq
        arms[f"integer_w{b}"] = integer_model(artefact, b).to(dev)
        memory[f"integer_w{b}"] = weight_bytes(arms[f"integer_w{b}"])
        if b in (4, 2):
            arms[f"integer_packed_w{b}"] = integer_model(artefact, b, packed=True).to(dev)
            memory[f"integer_packed_w{b}"] = weight_bytes(arms[f"integer_packed_w{b}"])
        with torch.no_grad():
            layers = layerwise_agreement(deq, arms[f"integer_w{b}"], x)
            agreement[f"w{b}"] = {**compare_outputs(deq(x), arms[f"integer_w{b}"](x)),
                                  "max_layer_rel_diff": max(layers.values()), "layers": len(layers)}
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    with torch.no_grad():
        stats = paired_benchmark({k: (lambda m=m: m(x)) for k, m in arms.items()}, warmup=warmup, repeats=repeats,
                                 sync=sync)
    ratios = {}
    for b in bits:
        for name in (f"integer_w{b}", f"integer_packed_w{b}", f"dequantized_w{b}"):
            if name in stats:
                ratios[f"{name} / fp32"] = ratio_ci(stats, name, "fp32")
        ratios[f"integer_w{b} / dequantized_w{b}"] = ratio_ci(stats, f"integer_w{b}", f"dequantized_w{b}")
    fp_bytes = memory["fp32"]["resident"]
    return {"arch": arch, "input": [batch, 3, size, size], "device": device, "threads": torch.get_num_threads(),
            "repeats": repeats, "ms": {k: median_ci(s) for k, s in stats.items()}, "ratios": ratios,
            "weight_bytes": memory,
            "quantised_layer_bytes_over_fp32": {
                k: {"stored": v["stored"] / fp_bytes, "resident": v["resident"] / fp_bytes} for k, v in memory.items()},
            "agreement": agreement}


def markdown(result: dict[str, Any]) -> str:
    out = [f"ResNet-18 {result['input']} on {result['device']}, {result['threads']} thread(s), "
           f"{result['repeats']} repeats", "", "| arm | median ms [95 % CI] | quantised-layer weight bytes: stored "
           "| resident while running | resident / FP32 |", "|---|---|---|---|---|"]
    for arm, ms in result["ms"].items():
        mem = result["weight_bytes"].get(arm)
        if mem is None:
            out.append(f"| {arm} | {fmt_ci(ms, 'median')} | FP32 weights | (= FP32) | |")
            continue
        rel = result["quantised_layer_bytes_over_fp32"][arm]["resident"]
        out.append(f"| {arm} | {fmt_ci(ms, 'median')} | {mem['stored']:,} | {mem['resident']:,} | {rel:.4f} |")
    out += ["", "| latency ratio | median ratio [95 % CI] |", "|---|---|"]
    out += [f"| {k} | {fmt_ci(v, 'ratio')} |" for k, v in result["ratios"].items()]
    out += ["", "| bits | max layer rel. diff | end-to-end max rel. logit diff | top-1 agreement |",
            "|---|---|---|---|"]
    out += [f"| {k} | {v['max_layer_rel_diff']:.2e} | {v['max_rel_diff']:.2e} | {v['top1_agreement']:.3f} |"
            for k, v in result["agreement"].items()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m double_rounding.bench_integer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2], choices=TRAINED_BITS)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is visible")
        return 2
    torch.set_num_threads(args.threads)
    result = run("resnet18", args.size, args.batch, tuple(args.bits), args.repeats, args.warmup, args.device)
    print(markdown(result), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
