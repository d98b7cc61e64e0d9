import json

import numpy as np
import pytest
from effrepro.data import DIGIT_CLASSES, write_coco_digits
from effrepro.errors import UsageError


def test_coco_digits_boxes_masks_and_determinism(tmp_path):
    from pycocotools.coco import COCO

    ann = write_coco_digits(tmp_path / "a", "val", size=12, seed=1)
    coco = COCO(str(ann))
    assert len(coco.getImgIds()) == 12 and [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(DIGIT_CLASSES)
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= 12
    for a in anns:
        mask = coco.annToMask(a)
        ys, xs = np.nonzero(mask)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert a["area"] == mask.sum() and 1 <= a["category_id"] <= 10
    again = write_coco_digits(tmp_path / "b", "val", size=12, seed=1)
    assert json.loads(again.read_text())["annotations"] == json.loads(ann.read_text())["annotations"]
    assert (tmp_path / "a" / "val" / "000001.png").read_bytes() == (tmp_path / "b" / "val" / "000001.png").read_bytes()
    with pytest.raises(UsageError, match="unknown split"):
        write_coco_digits(tmp_path, "dev")


@pytest.mark.mm
@pytest.mark.slow
def test_mask_rcnn_trains_and_evaluates_on_coco_digits(tmp_path):
    from effrepro.mm import detection_config, mask_rcnn, train_and_evaluate

    write_coco_digits(tmp_path, "train", size=8)
    write_coco_digits(tmp_path, "val", size=4)
    backbone = dict(type="ResNet", depth=18, base_channels=8, num_stages=4, out_indices=(0, 1, 2, 3),
                    norm_cfg=dict(type="BN", requires_grad=True), style="pytorch", init_cfg=None)
    model = mask_rcnn(backbone, [8, 16, 32, 64], num_classes=10, width=32, fc_channels=64, roi_samples=32)
    cfg = detection_config(model, tmp_path, tmp_path / "work", epochs=1, lr=1e-4, classes=DIGIT_CLASSES,
                           batch_size=4, warmup_iters=2, image_scale=(128, 128))
    metrics = train_and_evaluate(cfg)
    assert "coco/bbox_mAP" in metrics and "coco/segm_mAP" in metrics
    assert (tmp_path / "work" / "epoch_1.pth").is_file()
    with pytest.raises(UsageError, match="COCO layout not found"):
        detection_config(model, tmp_path / "nowhere", tmp_path / "w", epochs=1, lr=1e-4)
