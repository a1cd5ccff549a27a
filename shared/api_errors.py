"""The error envelope every HTTP function answers with: ``{"error": {"code", "message", ...}}``
and its status, raised as an ApiError wherever a request is refused."""
from __future__ import annotations

from pydantic import ValidationError


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **detail):
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, **self.detail}}


def first_problem(error: ValidationError) -> tuple[str | None, str]:
    """The field and plain message of a request's first validation error."""
    first = error.errors()[0]
    return ".".join(str(p) for p in first["loc"]) or None, first["msg"].removeprefix("Value error, ")
