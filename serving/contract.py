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
#: The queue-time budget (SERVEDMODEL_QUEUE_TIMEOUT_MS unset): a request that cannot start
#: within it is refused with 503 at once, one that waits past it gets 503. Long enough that a
#: closed loop of 64 clients of the slowest zoo model (minilm: a full batch of 32 takes ~0.4 s
#: on 2 CPUs, so the 64th request waits ~0.8 s) sees no 503 even on a CPU shared with other
#: work; short enough that a client is told to retry elsewhere long before typical client
#: timeouts (10-60 s).
QUEUE_TIMEOUT_MS = 5000
#: The count backstop (SERVEDMODEL_MAX_QUEUE_SIZE unset): only a model too fast for the budget
#: to bite (microseconds a row) reaches it; sized for hundreds of clients, not for shedding.
MAX_QUEUE_SIZE = 1024
#: Request body limit when SERVEDMODEL_MAX_BODY_BYTES is not set (64 MiB).
MAX_BODY_BYTES = 67108864
#: grpc.health.v1 service name the probes ask about: "" is the server as a whole (SERVING when
#: the model is ready, NOT_SERVING while loading or draining): a readiness probe.
GRPC_HEALTH_SERVICE = ""
#: grpc.health.v1 service name that is SERVING while the process runs (also while warming up
#: and draining): a liveness probe.
GRPC_LIVENESS_SERVICE = "live"
#: The metrics the autoscaler reads (docs/protocol.md).
INFLIGHT_METRIC = "servedmodel_inflight_requests"
QUEUE_DURATION_METRIC = "servedmodel_queue_duration_seconds"
#: Every SERVEDMODEL_* variable the server reads (without the prefix). Anything else with the
#: prefix stops the server at start, naming the nearest of these (a misspelt
#: SERVEDMODEL_CLIENTS_FIL must not serve everyone): serving/settings.py.
SERVER_VARIABLES = ("CONTEXT", "HOST", "PORT", "GRPC_PORT", "DEVICE", "MODEL_NAME",
                    "MAX_BATCH_SIZE", "MAX_QUEUE_DELAY_MS", "MAX_QUEUE_SIZE", "QUEUE_TIMEOUT_MS",
                    "MAX_BODY_BYTES", "MAX_BUFFERED_BYTES", "MAX_REQUEST_ELEMENTS",
                    "MAX_HEADER_BYTES", "MAX_HEADERS", "HEADER_TIMEOUT_SECONDS",
                    "BODY_TIMEOUT_SECONDS", "KEEP_ALIVE_SECONDS", "MAX_CONNECTIONS",
                    "PROBE_CONNECTIONS", "MAX_STREAMING_CALLS", "REQUEST_TIMEOUT_SECONDS",
                    "INTRA_OP_THREADS", "INTRA_OP_SPINNING", "GPU_MEM_LIMIT", "DRAIN_SECONDS",
                    "AUTH_TOKEN", "AUTH_TOKEN_FILE", "CLIENTS_FILE", "OIDC_ISSUER",
                    "OIDC_AUDIENCE", "OIDC_SCOPE", "OIDC_JWKS_URL", "AUDIT_LOG",
                    "MODEL_KEY_FILE", "LOG_LEVEL")
#: SERVEDMODEL_* variables of the pipeline (models/), the test suites and the CI scripts (.ci/),
#: never read by the server: a shell that builds and then serves has them set, so they pass.
OTHER_TOOLS_VARIABLES = ("CACHE", "DEBUG", "TEST_PAUSE", "BUILD_REPORT_FD", "IT_KUBERNETES",
                         "BASE_IMAGE", "ARM64_BASE_IMAGE", "CI_STATE", "CI_LOGS")
#: The client name SERVEDMODEL_AUTH_TOKEN(_FILE) authenticates as (one client among the named).
DEFAULT_CLIENT = "default"
#: Tokens a client may have at once: the current one and the next, so a rotation never drops
#: a request (docs/operations.md, "Rotate a token").
TOKENS_PER_CLIENT = 2
#: The encryption context keys of a model's data key (models/seal.py writes them, the server's
#: KMS Decrypt and a key policy's kms:EncryptionContext:... conditions name them).
ENCRYPTION_CONTEXT_NAME = "servedmodel:served-name"
ENCRYPTION_CONTEXT_VERSION = "servedmodel:version"
