"""posewatch.forecasting: pose windows, GRU-NF / GRU-SNF forecasters, training, scoring.

Works on numpy arrays and torch tensors only; never imports ``detector`` or ``pipelines``.
"""
