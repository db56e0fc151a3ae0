"""How the low-level errors of each client family become the gateway's errors: one table per family.

The gateway's policy (:mod:`shared.errors`): :class:`~shared.errors.TransientError` is retried by the queue
(then poisoned with the reason on the last attempt), :class:`~shared.errors.PermanentError` is poisoned at once.
Every exception class the libraries define is listed, so a new library version that adds one fails
``tests/test_client_errors.py`` until somebody decides what it means.

- **HTTP APIs through requests** (intent service :mod:`shared.clients.clu`, SendBird :mod:`shared.clients.sendbird`):
  :data:`REQUESTS_ERRORS` for exceptions, :func:`http_status_error` for answers;
- **Azure SDKs through azure-core** (Storage queues :mod:`shared.clients.queues`, Cosmos DB
  :mod:`shared.clients.cosmos`): :data:`AZURE_ERRORS`; HTTP answers inside ``HttpResponseError`` by status.
"""

from __future__ import annotations

import requests.exceptions as rq
from azure.core import exceptions as az
from azure.cosmos import exceptions as cosmos

from shared.errors import GatewayError, PermanentError, TransientError

#: requests: transport trouble is transient; a request the code built wrongly (URL, headers, body) is permanent.
REQUESTS_ERRORS: dict[type[BaseException], type[GatewayError]] = {
    rq.RequestException: TransientError,
    rq.ConnectionError: TransientError,
    rq.ConnectTimeout: TransientError,
    rq.ReadTimeout: TransientError,
    rq.Timeout: TransientError,
    rq.ProxyError: TransientError,
    rq.SSLError: TransientError,  # certificate rotation, middleboxes: may pass on the next attempt
    rq.ChunkedEncodingError: TransientError,
    rq.ContentDecodingError: TransientError,
    rq.RetryError: TransientError,  # urllib3's retries exhausted on 5xx
    rq.StreamConsumedError: PermanentError,
    rq.UnrewindableBodyError: PermanentError,
    rq.HTTPError: TransientError,  # raise_for_status is not used; an answer is classified by http_status_error
    rq.TooManyRedirects: PermanentError,  # redirects are never followed: a redirect is a configuration error
    rq.InvalidURL: PermanentError,
    rq.InvalidProxyURL: PermanentError,
    rq.MissingSchema: PermanentError,
    rq.InvalidSchema: PermanentError,
    rq.URLRequired: PermanentError,
    rq.InvalidHeader: PermanentError,
    rq.InvalidJSONError: PermanentError,
    rq.JSONDecodeError: TransientError,  # a garbled answer body: the next attempt may read a good one
}

#: azure-core and azure-cosmos: service and network trouble is transient; authentication and authorisation
#: failures are permanent (retrying cannot grant a role); conflicts the clients handle themselves are listed too.
AZURE_ERRORS: dict[type[BaseException], type[GatewayError]] = {
    az.AzureError: TransientError,
    az.ServiceRequestError: TransientError,
    az.ServiceRequestTimeoutError: TransientError,
    az.ServiceResponseError: TransientError,
    az.ServiceResponseTimeoutError: TransientError,
    az.IncompleteReadError: TransientError,
    az.HttpResponseError: TransientError,  # by status: see azure_error()
    az.ODataV4Error: TransientError,
    az.DecodeError: TransientError,
    az.ResponseNotReadError: PermanentError,
    az.StreamConsumedError: PermanentError,
    az.StreamClosedError: PermanentError,
    az.TooManyRedirectsError: PermanentError,
    az.ClientAuthenticationError: PermanentError,
    az.ResourceNotFoundError: PermanentError,  # a missing queue/container the clients do not create
    az.ResourceExistsError: TransientError,  # create races: the clients re-read
    az.ResourceModifiedError: TransientError,  # ETag conflicts: the clients re-read
    az.ResourceNotModifiedError: TransientError,
    cosmos.CosmosHttpResponseError: TransientError,  # by status: see azure_error()
    cosmos.CosmosResourceNotFoundError: PermanentError,
    cosmos.CosmosResourceExistsError: TransientError,
    cosmos.CosmosAccessConditionFailedError: TransientError,
    cosmos.CosmosClientTimeoutError: TransientError,
    cosmos.CosmosBatchOperationError: TransientError,
}


def _lookup(table: dict[type[BaseException], type[GatewayError]], exc: BaseException) -> type[GatewayError]:
    """The table entry of the most specific class of ``exc`` (its own class, else the nearest listed base)."""
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return TransientError


def http_status_error(status: int) -> type[GatewayError] | None:
    """What an HTTP answer means: None for 2xx; 429 and 5xx transient; 1xx, 3xx (redirects are never followed)
    and other 4xx permanent."""
    if 200 <= status < 300:
        return None
    if status == 429 or status >= 500:
        return TransientError
    return PermanentError


def requests_error(exc: BaseException, what: str) -> GatewayError:
    """The gateway error for a requests exception raised while calling ``what`` (e.g. "intent service")."""
    return _lookup(REQUESTS_ERRORS, exc)(f"{what} unreachable: {type(exc).__name__}: {exc}")


def azure_error(exc: BaseException, what: str) -> GatewayError:
    """The gateway error for an azure-core/azure-cosmos exception raised while doing ``what``; an HTTP answer
    carried by the exception (``status_code``) is classified by :func:`http_status_error` (408, 429, 5xx are
    transient; 401, 403 and other 4xx permanent)."""
    status = getattr(exc, "status_code", None)
    kind = _lookup(AZURE_ERRORS, exc)
    if isinstance(status, int) and isinstance(exc, az.HttpResponseError) and kind is TransientError:
        kind = TransientError if status == 408 else (http_status_error(status) or TransientError)
    return kind(f"{what} failed: {type(exc).__name__}: {exc}")
