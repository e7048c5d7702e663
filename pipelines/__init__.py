"""posewatch.pipelines: configuration, streaming runtime, alerts, sinks, metrics and the CLI.

Imports flow ``pipelines -> detector`` and ``pipelines -> forecasting``, never back.
"""

__version__ = "0.1.0"
