"""Measuring networks. Detectors: mAP (detection.py, pure), anchors by k-means (anchors.py, pure), and the
code that reads a .data file's lists and labels and runs a network to feed them (evaluate.py). Segmenters:
pixel accuracy and IoU from a confusion matrix (segmentation.py)."""
from darknetpy.metrics.detection import (COCO_IOU_THRESHOLDS, ClassResult, ImageDetections, ImageTruths,
                                         MapResult, average_precision, detection_map, iou_matrix)

__all__ = ["COCO_IOU_THRESHOLDS", "ClassResult", "ImageDetections", "ImageTruths", "MapResult",
           "average_precision", "detection_map", "iou_matrix"]
