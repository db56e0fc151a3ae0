"""Error mapping: one table per client family, and every low-level error class is in it."""

from __future__ import annotations

import inspect

import pytest
import requests.exceptions as rq
from azure.core import exceptions as az
from azure.cosmos import exceptions as cosmos

from shared.catalog import CatalogError, ResponseCatalog
from shared.clients.errors import AZURE_ERRORS, REQUESTS_ERRORS, azure_error, http_status_error, requests_error
from shared.errors import PermanentError, TransientError


def error_classes(module, root):
    return {v for v in vars(module).values() if inspect.isclass(v) and issubclass(v, root) and v.__module__ == module.__name__}


@pytest.mark.parametrize("module, root, table", [
    (rq, rq.RequestException, REQUESTS_ERRORS),
    (az, az.AzureError, AZURE_ERRORS),
    (cosmos, az.AzureError, AZURE_ERRORS),
])
def test_every_error_class_of_the_library_is_in_its_table(module, root, table):
    missing = error_classes(module, root) - set(table)
    assert not missing, f"decide whether these are transient or permanent: {sorted(c.__name__ for c in missing)}"


@pytest.mark.parametrize("exc, kind", [
    (rq.ReadTimeout("slow"), TransientError), (rq.ConnectionError("refused"), TransientError),
    (rq.TooManyRedirects("302"), PermanentError), (rq.InvalidURL("bad"), PermanentError),
])
def test_requests_errors_map_by_the_table(exc, kind):
    assert type(requests_error(exc, "SendBird")) is kind


@pytest.mark.parametrize("status, kind", [(200, None), (204, None), (301, PermanentError), (400, PermanentError),
                                          (401, PermanentError), (404, PermanentError), (429, TransientError),
                                          (500, TransientError), (503, TransientError)])
def test_http_answers_map_by_status(status, kind):
    assert http_status_error(status) is kind


class _Response:
    def __init__(self, status):
        self.status_code, self.reason, self.headers = status, "x", {}

    def text(self):
        return ""


@pytest.mark.parametrize("status, kind", [(403, PermanentError), (401, PermanentError), (408, TransientError),
                                          (429, TransientError), (503, TransientError)])
def test_azure_http_errors_map_by_status(status, kind):
    exc = az.HttpResponseError(message=f"status {status}")
    exc.status_code = status
    assert type(azure_error(exc, "send to queue q")) is kind


def test_azure_errors_map_by_the_table():
    assert type(azure_error(az.ServiceRequestError("down"), "cosmos state read")) is TransientError
    assert type(azure_error(az.ClientAuthenticationError("no role"), "cosmos state read")) is PermanentError


def test_a_missing_catalog_text_is_permanent_not_retried():
    """A missing response text fails the same way on every attempt: poison at once (it was retried 5 times)."""
    with pytest.raises(PermanentError):
        ResponseCatalog({"a.b": {"ko": "가"}}).render("a.b", "en")
    assert issubclass(CatalogError, PermanentError)
