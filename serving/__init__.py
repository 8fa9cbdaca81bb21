"""The model server: Open Inference Protocol (KServe V2 REST) over onnxruntime (installed as mlci.serving).

Modules: ``settings`` (config), ``protocol`` (V2 codec, pure), ``packing`` (one-matrix ONNX input),
``runtime`` (onnxruntime session), ``predlog`` (prediction log), ``metrics`` (Prometheus), ``errors``,
``app`` (starlette routes), ``server`` (uvicorn runner). Nothing is re-exported here, so importing one
module (e.g. ``mlci.serving.settings``) does not load the HTTP stack.
"""

__all__: list[str] = []
