"""Typed errors: every error answer of tasamd ({"error": {"code", "message",
"field"}}) becomes an exception of the class for its status, carrying the
status, the API's message and the request field at fault."""


class TasamError(Exception):
    """An error from tasamd, or from reaching it (status 0)."""

    status = 0

    def __init__(self, message, status=None, field="", body=None, retry_after=None):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.message = message
        self.field = field or ""
        self.body = body
        self.retry_after = retry_after

    def __str__(self):
        s = "HTTP %d: %s" % (self.status, self.message) if self.status else self.message
        return s + (" (field: %s)" % self.field if self.field else "")


class TasamConnectionError(TasamError):
    """tasamd could not be reached (refused, reset, timed out)."""


class ClientError(TasamError):
    """A 4xx answer: the request was wrong and was not carried out."""


class ServerError(TasamError):
    """A 5xx answer."""


class BadRequestError(ClientError):
    status = 400


class UnauthorizedError(ClientError):
    status = 401


class ForbiddenError(ClientError):
    status = 403


class NotFoundError(ClientError):
    status = 404


class MethodNotAllowedError(ClientError):
    status = 405


class ConflictError(ClientError):
    status = 409


class PayloadTooLargeError(ClientError):
    status = 413


class UnsupportedMediaTypeError(ClientError):
    status = 415


class TooManyRequestsError(ClientError):
    """The queue (or this client's rate) is full; retry after `retry_after` s."""

    status = 429


class InternalServerError(ServerError):
    status = 500


class ServerNotImplementedError(ServerError):
    """The daemon lacks the feature (e.g. a task without --hypernet)."""

    status = 501


class ServiceUnavailableError(ServerError):
    """Loading, shutting down or out of memory; retry after `retry_after` s."""

    status = 503


class DeadlineExceededError(ServerError):
    """The request's deadline (request-timeout-ms) passed before it ran."""

    status = 504


_BY_STATUS = {c.status: c for c in (
    BadRequestError, UnauthorizedError, ForbiddenError, NotFoundError, MethodNotAllowedError,
    ConflictError, PayloadTooLargeError, UnsupportedMediaTypeError, TooManyRequestsError,
    InternalServerError, ServerNotImplementedError, ServiceUnavailableError, DeadlineExceededError)}


def error_for(status, message, field="", body=None, retry_after=None):
    """The exception for an error answer of `status`."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ClientError if 400 <= status < 500 else ServerError if status >= 500 else TasamError
    return cls(message, status=status, field=field, body=body, retry_after=retry_after)
