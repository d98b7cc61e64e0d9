"""``double_rounding bench``: the deployment-side costs of the method, as paired measurements.

* switching time: deriving every quantised layer's weight at a new bit-width from the int8 codes (integer
  shift + de-quantise), versus one forward pass of a batch (what a switch costs relative to inference; no
  retraining or re-calibration is involved);
* storage: the one int8 file versus one FP32 model and versus four FP32 models (one per bit-width);
* throughput: forward of the fake-quant (training-form) model, of the de-quantised model read from the int8
  file, and of the FP32 model (paired, interleaved, median of repeats).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import torch
from effrepro.bench import paired_benchmark, ratio, throughput
from effrepro.errors import UsageError
from effrepro.quant import apply_codes, calibrate, check_bits, export_int8, load_dequantized, save_int8, set_bits
from effrepro.train import save_checkpoint, seed_everything

from double_rounding.models import ARCHS, ModelConfig, build_float_model, build_quant_model

DEFAULT_SHAPES = {"tiny_cnn": (1, 28, 28), "resnet18": (3, 224, 224), "resnet50": (3, 224, 224),
                  "mobilenet_v2": (3, 224, 224)}


def run_bench(arch: str, batch: int, repeats: int, bits: list[int], device: str) -> dict:
    channels, height, width = DEFAULT_SHAPES[arch]
    cfg = ModelConfig(arch=arch, num_classes=10 if arch == "tiny_cnn" else 1000, in_channels=channels,
                      input_size=[height, width])
    seed_everything(0)
    fp = build_float_model(cfg).eval()
    model = build_quant_model(cfg, bits, float_model=build_float_model(cfg))
    model.load_state_dict({k: v for k, v in fp.state_dict().items() if k in model.state_dict()}, strict=False)
    x = torch.randn(batch, channels, height, width)
    calibrate(model, x[: min(batch, 32)], scale_init="lsq")  # values do not matter for timing and sizes
    artefact = export_int8(model, {"model": cfg.__dict__}, bits)
    deployed = load_dequantized(build_quant_model(cfg, bits), artefact, bits[0]).eval()
    model.eval()
    fp, model, deployed, x = fp.to(device), model.to(device), deployed.to(device), x.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    set_bits(model, bits[-1])
    targets = itertools.cycle(bits)
    with torch.no_grad():
        stats = paired_benchmark({
            "switch_int8": lambda: apply_codes(deployed, artefact, next(targets)),
            "forward_fp32": lambda: fp(x),
            "forward_fakequant": lambda: model(x),
            "forward_dequantized": lambda: deployed(x),
        }, warmup=2, repeats=repeats, sync=sync)
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = save_int8(Path(tmp) / "m.int8.pt", artefact)
        fp_path = save_checkpoint(Path(tmp) / "m.fp32.pt", fp.state_dict())
        int8_bytes, fp_bytes = int8_path.stat().st_size, fp_path.stat().st_size
    return {
        "arch": arch, "batch": batch, "device": device, "bits": bits,
        "switch_ms": stats["switch_int8"].median * 1e3,  # whole model, cycling through the bit-widths
        "switch_over_forward": ratio(stats, "switch_int8", "forward_fakequant"),
        "fakequant_over_fp32_time": ratio(stats, "forward_fakequant", "forward_fp32"),
        "dequantized_over_fp32_time": ratio(stats, "forward_dequantized", "forward_fp32"),
        "images_per_s": {k: throughput(v, batch) for k, v in stats.items() if k.startswith("forward")},
        "int8_bytes": int8_bytes, "fp32_bytes": fp_bytes, "int8_over_fp32": int8_bytes / fp_bytes,
        "int8_over_four_fp32": int8_bytes / (len(bits) * fp_bytes),
        "timings": {k: v.as_dict() for k, v in stats.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="double_rounding bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["tiny_cnn", "resnet18"], help=f"any of {ARCHS}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4, 2])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.json:
        from effrepro.outputs import check_output_file

        check_output_file(args.json, "--json")
    if args.batch < 1 or args.repeats < 1:
        raise UsageError("--batch and --repeats must be >= 1")
    for bits in args.bits:
        check_bits(bits, what="--bits entry")
    for arch in args.arch:
        if arch not in ARCHS:
            raise UsageError(f"unknown arch {arch!r}; use one of: {', '.join(ARCHS)}")
    rows = []
    for arch in args.arch:
        row = run_bench(arch, args.batch, args.repeats, sorted(args.bits, reverse=True), args.device)
        rows.append(row)
        brief = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "timings"}
        print(json.dumps(brief), flush=True)
    if args.json:
        from effrepro.report import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=1))
    return 0
