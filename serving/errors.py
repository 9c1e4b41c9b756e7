"""The one error type of the server: a message for the caller and the HTTP status it maps to."""
from __future__ import annotations


class ServingError(Exception):
    """A request the server will not (or cannot) answer with a result.

    `status` is the HTTP status; `message` says what was wrong and what is accepted; `reason`
    is the label counted in `servedmodel_request_failures_total`; `headers` go on the response
    (e.g. `Retry-After` on 503, `WWW-Authenticate` on 401).
    """

    def __init__(self, status: int, message: str, *, reason: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        message = safe_text(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason or _default_reason(status)
        self.headers = headers or []


def safe_text(text: str) -> str:
    """`text` as valid UTF-8: a caller's lone surrogate (JSON allows "\\ud800") echoed in a
    message must not make the error answer itself fail to encode."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _default_reason(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
            413: "body_too_large", 415: "unsupported_media_type", 503: "unavailable"}.get(
        status, "client_error" if status < 500 else "internal")


class StartupError(Exception):
    """The server refuses to start (bad settings, missing/corrupt model, hash mismatch, ...).

    `python -m serving` prints the message as one line on stderr and exits non-zero."""
