"""gRPC calls in the batch window: a ModelInfer call counts as arriving (`Batcher.arriving`)
from the moment grpc.aio hands it over until its handler queues it. Apart from
`grpc_server.py` (which loads the generated V2 messages) so that it can be tested in a
process that loads another copy of them (tritonclient's)."""
from __future__ import annotations

import asyncio
import contextvars

import grpc

from .batcher import Arrival

#: The one RPC whose calls feed the batcher.
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
#: The arrival of the ModelInfer call this task serves (set by `CountArrivals`).
_ARRIVAL: contextvars.ContextVar[Arrival | None] = contextvars.ContextVar(
    "servedmodel_grpc_arrival", default=None)


class CountArrivals(grpc.aio.ServerInterceptor):
    """Counts a ModelInfer call as arriving for the batch window (`Batcher.arriving`, as a
    REST request is while its body is read) from the moment gRPC hands the call over until
    its handler queues it; grpc.aio hands calls over one per event-loop turn and reads each
    message in a further turn, so without this a batch never waits for the calls right
    behind it and gRPC batches stay at one row. The handler ends the arrival (`arrived`);
    the call's task ending does too (a call cancelled before its message came)."""

    def __init__(self, service) -> None:
        self.service = service

    async def intercept_service(self, continuation, handler_call_details):
        batcher = self.service.batcher
        if handler_call_details.method == INFER_METHOD and batcher is not None:
            arrival = Arrival(batcher)
            task = asyncio.current_task()
            if task is not None:
                task.add_done_callback(arrival.done)
            _ARRIVAL.set(arrival)        # the handler runs later in this same task
        return await continuation(handler_call_details)


def arrived() -> None:
    arrival = _ARRIVAL.get()
    if arrival is not None:
        arrival.done()
