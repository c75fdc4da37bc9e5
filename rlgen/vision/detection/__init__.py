"""Object detection: two detector families on the shared backbone library and their evaluation.

- ``yolo.py``: YOLO v1 (one stage: an S x S grid predicts boxes, confidences and classes).
- ``faster_rcnn.py`` (with ``anchors.py``, ``rpn.py``, ``roi_pooling.py``, ``roi_heads.py``,
  ``fpn.py``): Faster R-CNN (two stages: region proposals, then RoI Align + a box head); Fast
  R-CNN is its head on given proposals.
- ``map.py``: COCO and Pascal VOC mean average precision, equal to pycocotools / the devkit.
- ``train.py``: ``rlgen train|eval|predict detection`` over ``rlgen.registry.DETECTION_MODELS``.

Box operations (IoU, NMS, box coding) live in ``rlgen.vision.boxes``.

    from rlgen.registry import DETECTION_MODELS
    from rlgen.vision.detection import mean_average_precision
    model = DETECTION_MODELS.get("yolov1")(num_classes=4, backbone="resnet18",
                                           image_size=(224, 224))
    losses = model(images, targets)          # targets: [{"boxes": (N, 4) xyxy, "labels": (N,)}]
    predictions = model(images)              # [{"boxes", "scores", "labels"}] per image
    scores = mean_average_precision(predictions, targets)
    scores["map"], scores["map_50"], scores["voc_map_50"]
"""

from rlgen.vision.detection.map import mean_average_precision

__all__ = ["mean_average_precision"]
