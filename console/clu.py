"""The console's client of Azure CLU's authoring protocol (api-version 2023-04-01) and of its prediction API.

It talks to whatever ``CONSOLE_AUTHORING_ENDPOINT`` names: the project's intent service (``intent_service/``) or
an Azure AI Language resource; the key goes in ``Ocp-Apim-Subscription-Key``. Long-running operations (import,
export, train, deploy, swap) answer 202 with an ``operation-location``; :meth:`AuthoringClient.wait` follows it
(honouring ``Retry-After``) until the job is terminal. CLU has no per-utterance calls, so an edit of the project
is export -> change -> import (:mod:`console.project`).

Errors: :class:`AuthoringError` with the service's status, code, message and details (the promotion gate's
reasons of a refused swap are there), :class:`AuthoringUnavailable` when nothing answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

BASE = "/language/authoring/analyze-conversations"
PREDICT = "/language/:analyze-conversations"
TERMINAL = ("succeeded", "failed", "cancelled", "partiallyCompleted")


class AuthoringError(RuntimeError):
    """The authoring service refused or failed a call."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                 inner: dict[str, Any] | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.inner = inner or {}


class AuthoringUnavailable(AuthoringError):
    """The authoring service did not answer (connection refused, timeout)."""


class AuthoringClient:
    """One authoring endpoint and project. Thread-safe for the console's use (one ``requests.Session``)."""

    def __init__(self, endpoint: str, key: str, project: str, *, api_version: str = "2023-04-01",
                 timeout: float = 30.0, job_timeout: float = 300.0, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.endpoint = endpoint.rstrip("/")
        self.project = project
        self.api_version = api_version
        self.timeout = timeout
        self.job_timeout = job_timeout
        self._sleep = sleep
        self._s = session or requests.Session()
        self._s.trust_env = False
        if key:
            self._s.headers["Ocp-Apim-Subscription-Key"] = key

    # ------------------------------------------------------------------ plumbing
    def _url(self, path: str) -> str:
        return f"{self.endpoint}{BASE}/projects/{self.project}{path}"

    def _call(self, method: str, url: str, body: Any = None, params: dict[str, str] | None = None,
              ok: tuple[int, ...] = (200, 201, 202, 204)) -> requests.Response:
        query = {"api-version": self.api_version, **(params or {})}
        try:
            resp = self._s.request(method, url, params=query, json=body, timeout=self.timeout,
                                   allow_redirects=False)
        except requests.RequestException as exc:
            raise AuthoringUnavailable(503, "Unavailable", f"the authoring service at {self.endpoint} did not "
                                       f"answer ({type(exc).__name__})") from exc
        if resp.status_code not in ok:
            raise _error(resp)
        return resp

    def _get(self, url: str, params: dict[str, str] | None = None) -> Any:
        return self._call("GET", url, params=params).json()

    def _paged(self, url: str, params: dict[str, str] | None = None) -> list[Any]:
        out: list[Any] = []
        page = self._get(url, params)
        out += page.get("value", [])
        guard = 0
        while page.get("nextLink") and guard < 1000:
            guard += 1
            try:
                resp = self._s.get(self._same_origin(page["nextLink"]), timeout=self.timeout)
            except requests.RequestException as exc:
                raise AuthoringUnavailable(503, "Unavailable", f"paging failed ({type(exc).__name__})") from exc
            if resp.status_code != 200:
                raise _error(resp)
            page = resp.json()
            out += page.get("value", [])
        return out

    def _same_origin(self, url: str) -> str:
        """A link the service returned, on the configured endpoint (the key is never sent elsewhere)."""
        parts, mine = urlsplit(url), urlsplit(self.endpoint)
        if (parts.scheme, parts.netloc) != (mine.scheme, mine.netloc):
            return f"{self.endpoint}{parts.path}" + (f"?{parts.query}" if parts.query else "")
        return url

    def job_url(self, resp: requests.Response) -> str:
        loc = resp.headers.get("operation-location")
        if not loc:
            raise AuthoringError(502, "BadGateway", "the authoring service accepted the job without an "
                                 "operation-location")
        return self._same_origin(loc)

    def job(self, url: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", self._same_origin(url), params={}).json()
        return result

    def wait(self, url: str, what: str, timeout: float | None = None) -> dict[str, Any]:
        """Poll a job until it is terminal; raises :class:`AuthoringError` when it did not succeed."""
        deadline = time.monotonic() + (timeout or self.job_timeout)
        delay = 0.2
        while True:
            resp = self._call("GET", self._same_origin(url), params={})
            job = resp.json()
            if job.get("status") in TERMINAL:
                if job["status"] != "succeeded":
                    errors = job.get("errors") or []
                    message = "; ".join(e.get("message", "") for e in errors) or job["status"]
                    raise AuthoringError(409, errors[0].get("code", "JobFailed") if errors else "JobFailed",
                                         f"{what} {job['status']}: {message}", errors)
                return dict(job)
            if time.monotonic() > deadline:
                raise AuthoringError(504, "Timeout", f"{what} still {job.get('status')} after "
                                     f"{timeout or self.job_timeout:.0f} s (job {url})")
            try:
                delay = max(0.1, min(float(resp.headers.get("Retry-After", delay)), 2.0))
            except ValueError:
                pass
            self._sleep(delay)

    # ------------------------------------------------------------------ project file
    def project_info(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get(self._url(""))
        return result

    def export_project(self) -> dict[str, Any]:
        """The project file (offsets in UTF-16 code units)."""
        resp = self._call("POST", self._url("/:export"), params={"stringIndexType": "Utf16CodeUnit"}, ok=(202,))
        job = self.wait(self.job_url(resp), "export")
        result_url = job.get("resultUrl")
        if not result_url:
            raise AuthoringError(502, "BadGateway", "the export job finished without a resultUrl")
        project: dict[str, Any] = self._get(self._same_origin(result_url), params={})
        return project

    def import_project(self, project: dict[str, Any]) -> dict[str, Any]:
        """Replace the project's assets with ``project``'s (waits for the job)."""
        body = dict(project)
        body["metadata"] = {**project.get("metadata", {}), "projectName": self.project}
        resp = self._call("POST", self._url("/:import"), body, ok=(202,))
        return self.wait(self.job_url(resp), "import")

    # ------------------------------------------------------------------ training and models
    def train(self, label: str, evaluation: dict[str, Any] | None = None, mode: str = "standard") -> str:
        """Start training; returns the job's URL (poll it with :meth:`job`)."""
        body = {"modelLabel": label, "trainingMode": mode,
                "evaluationOptions": evaluation or {"kind": "percentage", "trainingSplitPercentage": 80,
                                                    "testingSplitPercentage": 20}}
        return self.job_url(self._call("POST", self._url("/:train"), body, ok=(202,)))

    def train_job_url(self, job_id: str) -> str:
        return self._url(f"/train/jobs/{job_id}")

    def training_jobs(self) -> list[dict[str, Any]]:
        return self._paged(self._url("/train/jobs"))

    def models(self) -> list[dict[str, Any]]:
        return self._paged(self._url("/models"))

    def evaluation_summary(self, label: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(self._url(f"/models/{label}/evaluation/summary-result"))
        return result

    def evaluation_results(self, label: str) -> list[dict[str, Any]]:
        return self._paged(self._url(f"/models/{label}/evaluation/result"),
                           {"stringIndexType": "Utf16CodeUnit"})

    # ------------------------------------------------------------------ deployments
    def deployments(self) -> list[dict[str, Any]]:
        return self._paged(self._url("/deployments"))

    def deploy(self, deployment: str, label: str, *, force: bool = False, reason: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {"trainedModelLabel": label}
        if force:
            body["force"] = True
        if reason:
            body["reason"] = reason
        resp = self._call("PUT", self._url(f"/deployments/{deployment}"), body, ok=(202,))
        return self.wait(self.job_url(resp), f"deployment to {deployment}")

    def swap(self, first: str, second: str, *, force: bool = False, reason: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {"firstDeploymentName": first, "secondDeploymentName": second}
        if force:
            body["force"] = True
        if reason:
            body["reason"] = reason
        resp = self._call("POST", self._url("/deployments/:swap"), body, ok=(202,))
        return self.wait(self.job_url(resp), "swap")

    def audit(self) -> list[dict[str, Any]] | None:
        """The authoring service's audit log (an extension of the project's intent service); None where the
        service has none (Azure CLU)."""
        try:
            return self._paged(self._url("/audit"))
        except AuthoringError as exc:
            if exc.status in (404, 405):
                return None
            raise

    # ------------------------------------------------------------------ prediction
    def predict(self, text: str, language: str, deployment: str) -> dict[str, Any]:
        """The prediction of ``deployment`` for one utterance (CLU ``ConversationResult.result``), plus the
        model version header when the service sends one."""
        body = {"kind": "Conversation",
                "analysisInput": {"conversationItem": {"id": "1", "participantId": "console", "text": text,
                                                       "language": language}},
                "parameters": {"projectName": self.project, "deploymentName": deployment,
                               "stringIndexType": "Utf16CodeUnit"}}
        resp = self._call("POST", f"{self.endpoint}{PREDICT}", body, ok=(200,))
        result: dict[str, Any] = resp.json()["result"]
        result["modelVersion"] = resp.headers.get("x-model-version")
        return result


def _error(resp: requests.Response) -> AuthoringError:
    try:
        err = resp.json().get("error", {})
    except ValueError:
        err = {}
    message = err.get("message") or resp.text[:300] or resp.reason
    return AuthoringError(resp.status_code, str(err.get("code") or resp.status_code), message,
                          err.get("details") or [], err.get("innererror") or {})
