"""Errors in Azure CLU's shape: ``{"error": {"code", "message", "target"?, "details"?, "innererror"?}}``."""
from __future__ import annotations

from typing import Any, Dict, List, Optional


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, target: Optional[str] = None,
                 details: Optional[List[Dict[str, Any]]] = None,
                 innererror: Optional[Dict[str, Any]] = None,
                 headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.target = target
        self.details = details
        self.innererror = innererror
        self.headers = headers or {}

    def body(self) -> Dict[str, Any]:
        err: Dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            err["target"] = self.target
        if self.details:
            err["details"] = self.details
        if self.innererror:
            err["innererror"] = self.innererror
        return {"error": err}

    def job_error(self) -> Dict[str, Any]:
        """The same error as an entry of a job's ``errors`` list."""
        return self.body()["error"]


def bad_request(message: str, target: Optional[str] = None,
                details: Optional[List[Dict[str, Any]]] = None) -> ApiError:
    return ApiError(400, "InvalidArgument", message, target=target, details=details)


def not_found(message: str, code: str = "NotFound") -> ApiError:
    return ApiError(404, code, message)


def project_not_found(project: str) -> ApiError:
    return ApiError(404, "ProjectNotFound", f"The project {project!r} was not found.")


def conflict(message: str, **kw: Any) -> ApiError:
    return ApiError(409, "Conflict", message, **kw)


def too_many(message: str, retry_after: int) -> ApiError:
    return ApiError(429, "TooManyRequests", message, headers={"Retry-After": str(int(retry_after))})
