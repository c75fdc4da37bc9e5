"""Object detection: the evaluation (``map.py``: COCO and Pascal VOC mean average precision)
and, later, the detectors. Box operations (IoU, NMS, box coding) live in
``rlgen.vision.boxes``.

    from rlgen.vision.detection import mean_average_precision
    scores = mean_average_precision(predictions, targets)   # per-image lists of dicts
    scores["map"], scores["map_50"], scores["voc_map_50"]
"""

from rlgen.vision.detection.map import mean_average_precision

__all__ = ["mean_average_precision"]
