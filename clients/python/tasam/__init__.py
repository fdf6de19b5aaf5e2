"""tasam: a client for tasamd, the task-aware Segment Anything daemon.

Standard library only; NumPy, when installed, turns masks into arrays.
"""
from .client import Client, Mask, SegmentResult
from .errors import (BadRequestError, ClientError, ConflictError, DeadlineExceededError,
                     ForbiddenError, InternalServerError, MethodNotAllowedError, NotFoundError,
                     PayloadTooLargeError, ServerError, ServerNotImplementedError,
                     ServiceUnavailableError, TasamConnectionError, TasamError,
                     TooManyRequestsError, UnauthorizedError, UnsupportedMediaTypeError)
from .masks import png_decode, rle_area, rle_counts, rle_decode, rle_encode, rle_string, to_numpy

__version__ = "0.1.0"

__all__ = [
    "Client", "Mask", "SegmentResult",
    "TasamError", "TasamConnectionError", "ClientError", "ServerError", "BadRequestError",
    "UnauthorizedError", "ForbiddenError", "NotFoundError", "MethodNotAllowedError", "ConflictError",
    "PayloadTooLargeError", "UnsupportedMediaTypeError", "TooManyRequestsError",
    "InternalServerError", "ServerNotImplementedError", "ServiceUnavailableError",
    "DeadlineExceededError",
    "rle_counts", "rle_string", "rle_decode", "rle_encode", "rle_area", "png_decode", "to_numpy",
]
