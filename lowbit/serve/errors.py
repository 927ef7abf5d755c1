"""OpenAI error objects: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status.

Every failure a handler can foresee raises `APIError`; the app turns it into a JSON response (or, once a stream
has started, into a final `data: {"error": ...}` event). Anything else becomes a 500 whose message names no
internals (the traceback goes to the log).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(name: str, served: str) -> APIError:
    return APIError(
        404, f"The model `{name}` does not exist; this server serves `{served}`.", param="model",
        code="model_not_found",
    )  # fmt: skip


def unauthorized() -> APIError:
    return APIError(
        401, "Incorrect or missing API key; send it as `Authorization: Bearer <key>`.", code="invalid_api_key"
    )


def overloaded(retry_after: int) -> APIError:
    return APIError(
        429, "The server's request queue is full; retry later.", type="rate_limit_error", code="queue_full",
        headers={"Retry-After": str(retry_after)},
    )  # fmt: skip


def unavailable(message: str, retry_after: int) -> APIError:
    return APIError(503, message, type="service_unavailable", code="unavailable",
                    headers={"Retry-After": str(retry_after)})  # fmt: skip


def internal_error() -> APIError:
    return APIError(500, "The server hit an internal error; it was logged.", type="server_error",
                    code="internal_error")  # fmt: skip


def from_validation(e: ValidationError) -> APIError:
    """The first pydantic error as an OpenAI 400: the field path as `param`, the reason as the message."""
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    kind = err.get("type", "")
    if kind == "json_invalid":
        return bad_request(f"The request body is not valid JSON: {err.get('msg')}.", code="invalid_json")
    if kind == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: {loc}.", param=loc, code="unknown_parameter")
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    inp = err.get("input")
    shown = repr(inp) if len(repr(inp)) <= 80 else repr(inp)[:77] + "..."
    return bad_request(f"Invalid value for `{loc or 'body'}` ({shown}): {msg}.", param=loc or None)


__all__ = [
    "APIError",
    "bad_request",
    "from_validation",
    "internal_error",
    "model_not_found",
    "overloaded",
    "unauthorized",
    "unavailable",
]
