"""The server's side of the contracts it shares with `models/` and `components/`.

One definition, literals only: `serving/` imports these names like any module, while
`models/contract.py` reads this file as *data* (`ast.literal_eval` of each assignment), so
neither `models/` nor `components/` ever imports the server package (its `__init__` loads the
HTTP stack and onnxruntime). The file travels into every build context with the rest of
`serving/`, so the image and the programs that build and deploy it read the same values.
See docs/architecture.md ("One definition per contract").
"""

#: Prefix of every environment variable the server reads (docs/architecture.md, section 3).
ENV_PREFIX = "SERVEDMODEL_"
#: The port the server listens on inside the image.
PORT = 8080
#: The V2 health routes the probes use.
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
#: Every V2 datatype name a manifest may use (the codec maps each to numpy, or refuses it).
DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16", "BYTES")
#: Graceful drain after SIGTERM when SERVEDMODEL_DRAIN_SECONDS is not set.
DRAIN_SECONDS = 20
#: A queued request older than this is refused with 503 (SERVEDMODEL_QUEUE_TIMEOUT_MS unset).
QUEUE_TIMEOUT_MS = 1000
#: SERVEDMODEL_MAX_QUEUE_SIZE unset: this many requests per batch slot may wait.
QUEUE_SIZE_PER_BATCH = 4
#: Request body limit when SERVEDMODEL_MAX_BODY_BYTES is not set (64 MiB).
MAX_BODY_BYTES = 67108864
#: grpc.health.v1 service name the probes ask about: "" is the server as a whole (SERVING when
#: the model is ready, NOT_SERVING while loading or draining).
GRPC_HEALTH_SERVICE = ""
#: The metrics the autoscaler reads (docs/protocol.md).
INFLIGHT_METRIC = "servedmodel_inflight_requests"
QUEUE_DURATION_METRIC = "servedmodel_queue_duration_seconds"
