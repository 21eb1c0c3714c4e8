"""The error tree shared by every layer; each class knows its HTTP status and OpenAI type.

    RouterError                      500 server_error
    ├── InvalidRequestError          400 invalid_request_error
    │   └── ContextLengthExceeded    400 code=context_length_exceeded
    ├── AuthenticationError          401 authentication_error
    ├── PermissionDeniedError        403 permission_error
    ├── NotFoundError                404 invalid_request_error
    │   └── ModelNotFoundError       404 code=model_not_found
    ├── ConflictError                409 invalid_request_error
    ├── RequestTooLargeError         413 invalid_request_error
    ├── UnprocessableError           422 invalid_request_error
    ├── RateLimitError               429 rate_limit_error (carries retry_after)
    ├── UpstreamError                502 server_error
    ├── ServiceUnavailableError      503 server_error (carries retry_after)
    └── GatewayTimeoutError          504 server_error

Workers raise these; the task turns them into an ErrorInfo on the token stream; the API
renders ErrorInfo or a raised RouterError with one handler. `upstream` is True on an error
that an upstream's answer or its transport caused (workers/upstream.py sets it): only
those count against the backend's circuit breaker, never a bug or a bad request of ours.
"""

from __future__ import annotations

from workers.protocol import ErrorInfo


class RouterError(Exception):
    """Base: an error the client should see, in OpenAI's shape."""

    status_code = 500
    type = "server_error"
    code: str | None = "internal_error"
    upstream = False  # caused by an upstream's answer or transport (see the module doc)

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        upstream: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        if code is not None:
            self.code = code
        if upstream is not None:
            self.upstream = upstream

    @classmethod
    def from_info(cls, info: ErrorInfo) -> RouterError:
        """Re-raise an error that crossed the token stream, keeping its status and type."""
        err = cls(info.message, param=info.param, code=info.code, retry_after=info.retry_after)
        err.status_code, err.type = info.status, info.type
        return err

    def info(self) -> ErrorInfo:
        return ErrorInfo(
            message=self.message,
            type=self.type,
            code=self.code,
            param=self.param,
            status=self.status_code,
            retry_after=self.retry_after,
        )


class InvalidRequestError(RouterError):
    status_code = 400
    type = "invalid_request_error"
    code: str | None = None


class ContextLengthExceeded(InvalidRequestError):
    code = "context_length_exceeded"


class AuthenticationError(RouterError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(RouterError):
    status_code = 403
    type = "permission_error"
    code = None


class NotFoundError(RouterError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class ConflictError(RouterError):
    status_code = 409
    type = "invalid_request_error"
    code = "conflict"


class RequestTooLargeError(RouterError):
    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnprocessableError(RouterError):
    status_code = 422
    type = "invalid_request_error"
    code = None


class RateLimitError(RouterError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(RouterError):
    status_code = 502
    type = "server_error"
    code = "upstream_error"


class ServiceUnavailableError(RouterError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"


class GatewayTimeoutError(RouterError):
    status_code = 504
    type = "server_error"
    code = "timeout"
