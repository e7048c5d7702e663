"""Offline commands: what ``posewatch train``, ``posture``, ``ensemble``, ``forecast-eval``,
``evaluate`` and ``calibrate`` do, plus their plots.

Each command is one function taking one frozen request object whose defaults are the
command line's (:mod:`pipelines.offline.training`, :mod:`pipelines.offline.evaluation`).
They report through :mod:`logging` (loggers under ``pipelines.offline``; the command line
prints their INFO messages) and return their results. The live path (services, stages,
cold start) never imports this package; what it shares with it, clip scoring and threshold
fitting, is :mod:`pipelines.clip_scoring`.
"""
