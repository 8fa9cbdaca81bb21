"""Production monitor (installed as mlci.monitor).

One module per concept: ``window`` (log records as columns), ``drift`` (chi-square tests against the
profile, corrected, with effect sizes), ``outliers`` (outlier.onnx vs the training rate),
``performance`` (delayed labels, decay), ``policy`` (hysteresis, cooldown, actions), ``alerts`` (outbox
and webhook delivery), ``logtail`` (reading the rotating prediction log), ``metrics`` (Prometheus text), ``service`` (one cycle and
the loop), ``settings`` (``MLCI_MONITOR_*``), ``cli`` (`mlci monitor`).
"""

__all__: list[str] = []
