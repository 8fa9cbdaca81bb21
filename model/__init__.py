"""Training, ONNX export with parity, evaluation, the gate and the artifact (installed as mlci.model)."""

__all__: list[str] = []
