"""An app from `create_app` on uvicorn in a thread of the test process, for tests that need a
model with controlled timing (a fake with the same hooks as OnnxModel)."""
from __future__ import annotations

import threading
import time

import numpy as np
import uvicorn

from conftest import free_port


class SlowModel:
    """The OnnxModel hooks; predict sleeps (releasing the GIL like onnxruntime does)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ready = True
        self.started = threading.Event()
        self.batches: list[int] = []

    def warm_up(self) -> None:
        pass

    def predict(self, feeds):
        x = feeds["input"]
        self.batches.append(len(x))
        self.started.set()
        time.sleep(self.seconds)
        return {"logits": np.ascontiguousarray(x[:, :10])}


class InProcessServer:
    def __init__(self, app) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, loop="uvloop",
                                http="httptools", lifespan="on", log_level="warning",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("in-process server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)
