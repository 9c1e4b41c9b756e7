"""Running the app on uvicorn (uvloop + httptools) with our own SIGTERM handling.

uvicorn's handler would close the listener at once; ours starts a drain instead: readiness
turns 503, new inference requests get 503, accepted ones finish, then uvicorn shuts down and
the process exits 0 (within SERVEDMODEL_DRAIN_SECONDS)."""
from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import sys
import time
from dataclasses import replace

import uvicorn

from .app import App
from .connections import ConnectionGuard, ConnectionLimits, protocol_factory

#: File descriptors kept for everything but client connections (model files, logs, pipes).
FD_MARGIN = 64


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: App, drain_seconds: float,
                 guard: ConnectionGuard) -> None:
        super().__init__(config)
        self.app_ = app
        self.guard = guard
        self.drain_seconds = drain_seconds
        self.exit_code = 0
        self._drain_task = None

    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig) -> None:
        if self._drain_task is not None:
            if sig == signal.SIGINT:      # a second Ctrl+C: stop now
                self.force_exit = True
            return
        self.app_.begin_drain()
        self.guard.begin_drain()
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_seconds
        while self.app_.accepted > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        left = deadline - time.monotonic()
        # uvicorn annotates an int; its asyncio timer takes the fraction of a second too.
        self.config.timeout_graceful_shutdown = max(0.5, left)  # pyright: ignore[reportAttributeAccessIssue]
        self.should_exit = True

    def fatal(self, message: str) -> None:
        print(f"serving: {message}", file=sys.stderr, flush=True)
        self.exit_code = 1
        self.should_exit = True


def ensure_descriptors(limits: ConnectionLimits, listeners: int = 1) -> ConnectionLimits:
    """Raise the soft open-files limit so the connection caps, not the kernel, refuse first.
    `listeners`: REST alone (1) or REST and gRPC (2), each with its own cap and probe
    reserve. When the hard limit is too low for them, the cap is lowered to fit (one line on
    stderr says so): running out of descriptors would refuse probes too."""
    needed = listeners * (limits.max_connections + limits.probe_connections) + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return limits
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target >= needed:
        return limits
    fits = max(1, (target - FD_MARGIN) // listeners - limits.probe_connections)
    print(f"serving: the open-files limit ({hard}) allows {fits} connections; "
          f"SERVEDMODEL_MAX_CONNECTIONS lowered from {limits.max_connections} to {fits}",
          file=sys.stderr, flush=True)
    return replace(limits, max_connections=fits)


def serve(app: App, host: str, port: int, drain_seconds: float, log_level: str) -> int:
    # The model thread needs the GIL for a moment before and after each batch; while the event
    # loop decodes requests it would wait up to the 5 ms default switch interval each time.
    sys.setswitchinterval(0.001)
    limits = ensure_descriptors(ConnectionLimits.from_settings(app.settings),
                                listeners=2 if app.grpc is not None else 1)
    if app.grpc is not None:
        app.grpc.max_connections = limits.max_connections
    guard = ConnectionGuard(limits, app.service.metrics, app.service.audit)
    config = uvicorn.Config(app, host=host, port=port, loop="uvloop",
                            http=protocol_factory(guard), lifespan="on", access_log=False,
                            server_header=False, date_header=False, log_level=log_level,
                            backlog=2048,
                            # an int to uvicorn's annotation, a float to the asyncio timer it sets
                            timeout_keep_alive=limits.keep_alive)  # pyright: ignore[reportArgumentType]
    server = _Server(config, app, drain_seconds, guard)
    app.on_fatal = server.fatal
    server.run()
    # Anything recorded after the app's shutdown (connections closed last) is written too.
    app.service.audit.close()
    if not server.started and server.exit_code == 0:
        return 1
    return server.exit_code
