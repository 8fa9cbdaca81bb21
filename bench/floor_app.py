"""The floor: a constant-JSON endpoint on the same stack as `mlci serve` (starlette + uvicorn + httptools + uvloop).

It reads the request body (as the real server must) and answers a fixed V2-shaped response, so the
difference between this and `mlci serve` is what mlci itself costs per request.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY = (
    b'{"model_name":"breast-cancer","model_version":"sha256:0","id":"1","outputs":[{"name":"label","datatype":"BYTES",'
    b'"shape":[1],"data":["benign"]},{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[0.9,0.1]}]}'
)


async def infer(request: Request) -> Response:
    await request.body()
    return Response(BODY, media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b'{"ready":true}', media_type="application/json")


app = Starlette(
    routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"]), Route("/v2/health/ready", ready)]
)

if __name__ == "__main__":
    # The same process tuning `mlci serve` applies (serving/server.py), so that the floor differs from it
    # only by what a request does.
    import gc

    from mlci.serving.server import keep_freed_memory

    keep_freed_memory()
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        server_header=False,
    )
