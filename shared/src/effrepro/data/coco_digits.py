"""A real-image COCO-format detection + instance-segmentation set: MNIST digits placed on canvases.

Each canvas holds 1..``max_digits`` MNIST digits of the same split, each rescaled to a random size and
pasted without overlap; the class is the digit, the box is the tight box of its ink and the mask is its ink
(pixels >= ``ink``). Written as PNG files plus ``annotations/instances_<split>.json`` with RLE masks, so any
COCO tool (pycocotools, mmdet's ``CocoDataset``) reads it. Deterministic for a given (split, size, seed).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from effrepro.data.images import load_mnist
from effrepro.errors import UsageError
from effrepro.train.checkpoint import umask_mode

DIGIT_CLASSES = tuple(str(d) for d in range(10))


def _place(rng: np.random.Generator, taken: list[tuple[int, int, int, int]], side: int, canvas: int
           ) -> tuple[int, int] | None:
    for _ in range(30):
        x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
        if all(x + side <= a or a + c <= x or y + side <= b or b + c <= y for a, b, c, _ in taken):
            return x, y
    return None


def _render(images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator, canvas: int, max_digits: int,
            min_side: int, max_side: int, ink: int) -> tuple[np.ndarray, list[dict]]:
    img = np.zeros((canvas, canvas), dtype=np.uint8)
    taken: list[tuple[int, int, int, int]] = []
    objects = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        side = int(rng.integers(min_side, max_side + 1))
        spot = _place(rng, taken, side, canvas)
        if spot is None:
            continue
        index = int(rng.integers(len(labels)))
        digit = F.interpolate(images[index][None, None].float(), size=(side, side), mode="bilinear",
                              align_corners=False)[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()
        x, y = spot
        img[y:y + side, x:x + side] = np.maximum(img[y:y + side, x:x + side], digit)
        mask = np.zeros((canvas, canvas), dtype=np.uint8)
        mask[y:y + side, x:x + side] = digit >= ink
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        taken.append((x, y, side, side))
        box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        objects.append({"label": int(labels[index]), "mask": mask, "bbox": box})
    return img, objects


def write_coco_digits(root: str | os.PathLike, split: str = "train", size: int = 500, seed: int = 0,
                      canvas: int = 128, max_digits: int = 4, min_side: int = 20, max_side: int = 56,
                      ink: int = 128) -> Path:
    """Write the set under ``root`` (``<split>/*.png`` + ``annotations/instances_<split>.json``); return the json.

    Reuses an existing, complete set with the same parameters. Images come from the MNIST split of the same
    name (``train``/``val``/``test``), so detection train and val never share a digit image.
    """
    from PIL import Image
    from pycocotools import mask as mask_utils

    if split not in ("train", "val", "test"):
        raise UsageError(f"unknown split {split!r}; use train, val or test")
    if size <= 0 or not (8 <= min_side <= max_side <= canvas):
        raise UsageError("coco digits: need size > 0 and 8 <= min_side <= max_side <= canvas")
    root = Path(root)
    ann_path = root / "annotations" / f"instances_{split}.json"
    params = dict(split=split, size=size, seed=seed, canvas=canvas, max_digits=max_digits, min_side=min_side,
                  max_side=max_side, ink=ink)
    if ann_path.is_file() and json.loads(ann_path.read_text()).get("info", {}).get("params") == params:
        return ann_path
    images, labels = load_mnist()[split]
    rng = np.random.default_rng(zlib.crc32(f"coco-digits/{split}/{seed}".encode()))
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=root))
    os.chmod(tmp_dir, umask_mode(0o777))  # mkdtemp makes 0700; the cache is readable like any new folder
    coco: dict = {"info": {"description": "MNIST digits on canvases (effrepro)", "params": params},
                  "images": [], "annotations": [],
                  "categories": [{"id": i + 1, "name": name} for i, name in enumerate(DIGIT_CLASSES)]}
    for image_id in range(1, size + 1):
        img, objects = _render(images, labels, rng, canvas, max_digits, min_side, max_side, ink)
        name = f"{image_id:06d}.png"
        Image.fromarray(img).convert("RGB").save(tmp_dir / name)
        coco["images"].append({"id": image_id, "file_name": name, "width": canvas, "height": canvas})
        for obj in objects:
            rle = mask_utils.encode(np.asfortranarray(obj["mask"]))
            rle["counts"] = rle["counts"].decode("ascii")
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": obj["label"] + 1,
                "bbox": obj["bbox"], "area": float(obj["mask"].sum()), "segmentation": rle, "iscrowd": 0,
            })
    final_dir = root / split
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    tmp_ann = ann_path.with_suffix(".tmp")
    tmp_ann.write_text(json.dumps(coco))
    os.replace(tmp_ann, ann_path)
    return ann_path
