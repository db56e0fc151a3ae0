"""HTTP routes of the authoring API: Azure CLU's authoring protocol, api-version 2023-04-01, below
``/language/authoring/analyze-conversations`` (paths, bodies, errors and long-running operations as in
``shared/reference/clu-authoring.md``), plus one extension: ``GET /projects/{p}/audit``.

Every call needs ``api-version=2023-04-01`` and an authoring key in ``Ocp-Apim-Subscription-Key`` (a
prediction key is refused), or, behind App Service Authentication (``INTENT_AUTHORING_EASY_AUTH=1``), an
Entra ID principal listed in ``INTENT_AUTHORING_PRINCIPALS``.
"""
from __future__ import annotations

import hmac
import json
import logging
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import projectfile as pf
from .errors import ApiError
from .service import TERMINAL, LANGUAGES, AuthoringService
from .storage import StoreError

log = logging.getLogger("intent_service.authoring")

BASE = "/language/authoring/analyze-conversations"
API_VERSION = "2023-04-01"
DEFAULT_PAGE = 100


class Authenticator:
    def __init__(self, keys: Dict[str, str], easy_auth: bool = False,
                 principals: Iterable[str] = frozenset()):
        self.keys = [(name, key.encode("utf-8")) for name, key in keys.items()]
        self.easy_auth = easy_auth
        self.principals = frozenset(principals)

    @property
    def configured(self) -> bool:
        return bool(self.keys) or (self.easy_auth and bool(self.principals))

    def identify(self, request: Request) -> Optional[str]:
        """Who is calling ("key:<name>" or "principal:<name>"), or None."""
        given = request.headers.get("ocp-apim-subscription-key")
        if given is not None:
            g = given.encode("utf-8")
            who = None
            for name, key in self.keys:  # compare with every key: no early exit
                if hmac.compare_digest(g, key) and who is None:
                    who = f"key:{name}"
            return who
        if self.easy_auth:
            # App Service Authentication validated the token and sets these headers (it strips any the
            # client sent); only listed principals may author.
            pid = request.headers.get("x-ms-client-principal-id")
            pname = request.headers.get("x-ms-client-principal-name")
            if pid and (pid in self.principals or (pname and pname in self.principals)):
                return f"principal:{pname or pid}"
        return None


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


def build_routes(service: AuthoringService, auth: Authenticator) -> List[Route]:
    cfg = service.config
    retry_after = cfg.job_retry_after
    retry_after_text = str(int(retry_after)) if float(retry_after).is_integer() else f"{retry_after:g}"

    def base_url(request: Request) -> str:
        return cfg.public_base_url or str(request.base_url).rstrip("/")

    def job_url(request: Request, path: str) -> str:
        return f"{base_url(request)}{BASE}{path}?api-version={API_VERSION}"

    async def read_body(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > cfg.limits.max_request_bytes:
            raise ApiError(413, "RequestEntityTooLarge",
                           f"The request body exceeds {cfg.limits.max_request_bytes} bytes.")
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "InvalidArgument", "The request body is not valid JSON.") from None

    def endpoint(fn: Callable[..., Any], *, body: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            try:
                if request.query_params.get("api-version") != API_VERSION:
                    raise ApiError(400, "InvalidArgument",
                                   f"Unsupported or missing api-version "
                                   f"{request.query_params.get('api-version')!r}. Supported: {API_VERSION}.")
                who = auth.identify(request)
                if who is None:
                    raise ApiError(401, "401", "Access denied due to invalid subscription key. Provide a valid "
                                               "authoring key in the Ocp-Apim-Subscription-Key header.")
                payload = await read_body(request) if body else None
                return await run_in_threadpool(fn, request, who, payload)
            except ApiError as exc:
                return error_response(exc)
            except StoreError as exc:
                log.error("store unavailable on %s: %s", request.url.path, exc)
                return error_response(ApiError(503, "ServiceUnavailable", "The project store is unavailable; retry.",
                                               headers={"Retry-After": "5"}))
        return handler

    def accepted(request: Request, path: str) -> Response:
        return Response(status_code=202, headers={"operation-location": job_url(request, path),
                                                  "Retry-After": retry_after_text})

    def job_response(job: Dict[str, Any]) -> JSONResponse:
        headers = None if job["status"] in TERMINAL else {"Retry-After": retry_after_text}
        return JSONResponse(job, headers=headers)

    def paged(request: Request, items: List[Any]) -> JSONResponse:
        q = request.query_params
        try:
            top = int(q["top"]) if q.get("top") else None
            skip = int(q.get("skip") or 0)
            page = int(q.get("maxpagesize") or DEFAULT_PAGE)
        except ValueError:
            raise ApiError(400, "InvalidArgument", "top, skip and maxpagesize must be integers.") from None
        if (top is not None and top < 0) or skip < 0 or page < 1:
            raise ApiError(400, "InvalidArgument", "top, skip and maxpagesize must not be negative.")
        n = min(page, top) if top is not None else page
        value = items[skip:skip + n]
        out: Dict[str, Any] = {"value": value}
        remaining_top = None if top is None else top - len(value)
        if skip + len(value) < len(items) and (remaining_top is None or remaining_top > 0) and value:
            params = {k: v for k, v in q.items() if k not in ("skip", "top")}
            params["skip"] = str(skip + len(value))
            if remaining_top is not None:
                params["top"] = str(remaining_top)
            out["nextLink"] = f"{base_url(request)}{request.url.path}?{urlencode(params)}"
        return JSONResponse(out)

    P = lambda r: r.path_params["projectName"]  # noqa: E731

    # ---- projects
    def list_projects(r, who, _):
        return paged(r, service.list_projects())

    def get_project(r, who, _):
        return JSONResponse(service.get_project(P(r)))

    def patch_project(r, who, body):
        meta, created = service.patch_project(P(r), body, who)
        return JSONResponse(meta, status_code=201 if created else 200)

    def delete_project(r, who, _):
        job = service.delete_project(P(r), who)
        return accepted(r, f"/projects/global/deletion-jobs/{job['jobId']}")

    def deletion_job(r, who, _):
        return job_response(service.get_job(None, r.path_params["jobId"], "deleteProject"))

    # ---- import / export
    def import_project(r, who, body):
        job = service.import_project(P(r), body, r.query_params.get("format"), who)
        return accepted(r, f"/projects/{P(r)}/import/jobs/{job['jobId']}")

    def import_job(r, who, _):
        return job_response(service.get_job(P(r), r.path_params["jobId"], "import"))

    def export_project(r, who, _):
        p = P(r)
        job = service.export_project(
            p, r.query_params.get("stringIndexType"), r.query_params.get("format"),
            r.query_params.get("trainedModelLabel"),
            lambda job_id: job_url(r, f"/projects/{p}/export/jobs/{job_id}/result"))
        return accepted(r, f"/projects/{p}/export/jobs/{job['jobId']}")

    def export_job(r, who, _):
        return job_response(service.get_job(P(r), r.path_params["jobId"], "export"))

    def export_result(r, who, _):
        return JSONResponse(service.export_result(P(r), r.path_params["jobId"]))

    # ---- training
    def train(r, who, body):
        job = service.train(P(r), body, who)
        return accepted(r, f"/projects/{P(r)}/train/jobs/{job['jobId']}")

    def train_jobs(r, who, _):
        return paged(r, service.list_training_jobs(P(r)))

    def train_job(r, who, _):
        return job_response(service.get_job(P(r), r.path_params["jobId"], "train"))

    def cancel_train(r, who, _):
        job = service.cancel_training(P(r), r.path_params["jobId"], who)
        return accepted(r, f"/projects/{P(r)}/train/jobs/{job['jobId']}")

    # ---- trained models
    def list_models(r, who, _):
        return paged(r, service.list_models(P(r)))

    def get_model(r, who, _):
        return JSONResponse(service.get_model(P(r), r.path_params["label"]))

    def delete_model(r, who, _):
        service.delete_model(P(r), r.path_params["label"], who)
        return Response(status_code=204)

    def eval_summary(r, who, _):
        return JSONResponse(service.evaluation_summary(P(r), r.path_params["label"]))

    def eval_results(r, who, _):
        return paged(r, service.evaluation_results(P(r), r.path_params["label"],
                                                   r.query_params.get("stringIndexType")))

    # ---- deployments
    def list_deployments(r, who, _):
        return paged(r, service.list_deployments(P(r)))

    def get_deployment(r, who, _):
        return JSONResponse(service.get_deployment(P(r), r.path_params["deploymentName"]))

    def deploy(r, who, body):
        d = r.path_params["deploymentName"]
        job = service.deploy(P(r), d, body, who)
        return accepted(r, f"/projects/{P(r)}/deployments/{d}/jobs/{job['jobId']}")

    def delete_deployment(r, who, _):
        d = r.path_params["deploymentName"]
        job = service.delete_deployment(P(r), d, who)
        return accepted(r, f"/projects/{P(r)}/deployments/{d}/jobs/{job['jobId']}")

    def deployment_job(r, who, _):
        return job_response(service.get_job(P(r), r.path_params["jobId"], "deploy",
                                            deployment=r.path_params["deploymentName"]))

    def swap(r, who, body):
        job = service.swap(P(r), body, who)
        return accepted(r, f"/projects/{P(r)}/deployments/swap/jobs/{job['jobId']}")

    def swap_job(r, who, _):
        return job_response(service.get_job(P(r), r.path_params["jobId"], "swap"))

    # ---- global
    def languages(r, who, _):
        return paged(r, LANGUAGES)

    def config_versions(r, who, _):
        return paged(r, [{"trainingConfigVersion": v, "modelExpirationDate": pf.TRAINING_CONFIG_EXPIRY[v]}
                         for v in pf.TRAINING_CONFIGS])

    def prebuilts(r, who, _):
        return paged(r, [])

    def audit(r, who, _):
        return paged(r, service.audit(P(r)))

    pr = BASE + "/projects/{projectName}"
    return [
        Route(BASE + "/projects", endpoint(list_projects), methods=["GET"]),
        Route(BASE + "/projects/global/languages", endpoint(languages), methods=["GET"]),
        Route(BASE + "/projects/global/training-config-versions", endpoint(config_versions), methods=["GET"]),
        Route(BASE + "/projects/global/prebuilt-entities", endpoint(prebuilts), methods=["GET"]),
        Route(BASE + "/projects/global/deletion-jobs/{jobId}", endpoint(deletion_job), methods=["GET"]),
        Route(pr, endpoint(get_project), methods=["GET"]),
        Route(pr, endpoint(patch_project, body=True), methods=["PATCH"]),
        Route(pr, endpoint(delete_project), methods=["DELETE"]),
        Route(pr + "/:import", endpoint(import_project, body=True), methods=["POST"]),
        Route(pr + "/import/jobs/{jobId}", endpoint(import_job), methods=["GET"]),
        Route(pr + "/:export", endpoint(export_project), methods=["POST"]),
        Route(pr + "/export/jobs/{jobId}", endpoint(export_job), methods=["GET"]),
        Route(pr + "/export/jobs/{jobId}/result", endpoint(export_result), methods=["GET"]),
        Route(pr + "/:train", endpoint(train, body=True), methods=["POST"]),
        Route(pr + "/train/jobs", endpoint(train_jobs), methods=["GET"]),
        Route(pr + "/train/jobs/{jobId}", endpoint(train_job), methods=["GET"]),
        Route(pr + "/train/jobs/{jobId}/:cancel", endpoint(cancel_train), methods=["POST"]),
        Route(pr + "/models", endpoint(list_models), methods=["GET"]),
        Route(pr + "/models/{label}", endpoint(get_model), methods=["GET"]),
        Route(pr + "/models/{label}", endpoint(delete_model), methods=["DELETE"]),
        Route(pr + "/models/{label}/evaluation/summary-result", endpoint(eval_summary), methods=["GET"]),
        Route(pr + "/models/{label}/evaluation/result", endpoint(eval_results), methods=["GET"]),
        Route(pr + "/deployments", endpoint(list_deployments), methods=["GET"]),
        Route(pr + "/deployments/:swap", endpoint(swap, body=True), methods=["POST"]),
        Route(pr + "/deployments/swap/jobs/{jobId}", endpoint(swap_job), methods=["GET"]),
        Route(pr + "/deployments/{deploymentName}", endpoint(get_deployment), methods=["GET"]),
        Route(pr + "/deployments/{deploymentName}", endpoint(deploy, body=True), methods=["PUT"]),
        Route(pr + "/deployments/{deploymentName}", endpoint(delete_deployment), methods=["DELETE"]),
        Route(pr + "/deployments/{deploymentName}/jobs/{jobId}", endpoint(deployment_job), methods=["GET"]),
        Route(pr + "/audit", endpoint(audit), methods=["GET"]),
    ]
