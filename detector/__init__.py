"""posewatch.detector: camera sources, YOLO-pose, tracking, and the pose data model.

May import numpy, opencv and ultralytics; never ``forecasting`` or ``pipelines``.
"""
