"""Tiny v2-model Functions app used by localrunner's tests.

Queue names are %SETTING% expressions so each test run can use its own queues.
Module-level lists record what the functions saw (tests read them through
Runner.app_module).
"""
import asyncio
import json
import logging
import os
import threading
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

_lock = threading.Lock()
CHAIN_B_SEEN = []      # (body, function_name, invocation_id)
FLAKY_SEEN = []        # dequeue counts observed
SINK_SEEN = []         # bodies that reached the sink
SLOW_DONE = []         # bodies of finished slow invocations
ALWAYS_FAILS_SEEN = []  # dequeue counts observed
RELAY_SEEN = []        # bodies the relay returned


@app.route(route="items/{category}/{id:int}", methods=["GET", "POST"])
def http_items(req: func.HttpRequest) -> func.HttpResponse:
    body = None
    if req.get_body():
        body = req.get_json()
    payload = {
        "method": req.method,
        "url": req.url,
        "params": dict(req.params),
        "route_params": dict(req.route_params),
        "x_test": req.headers.get("X-Test"),
        "json": body,
    }
    return func.HttpResponse(json.dumps(payload), status_code=200, mimetype="application/json",
                             headers={"X-Handled-By": "http_items"})


@app.route(route="hello", methods=["GET"])
async def http_hello(req: func.HttpRequest) -> str:
    await asyncio.sleep(0)
    return f"{os.environ.get('GREETING', 'unset')} {req.params.get('name', 'world')}"


@app.route(route="boom")
def http_boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("kaboom-secret-detail")


@app.route(route="enqueue", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@app.queue_output(arg_name="out", queue_name="%Q_HTTP_OUT%", connection="AzureWebJobsStorage")
def http_enqueue(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
    text = req.get_body().decode("utf-8")
    if text:
        out.set(text)
    return func.HttpResponse("queued", status_code=202)


@app.route(route="keyed-admin", auth_level=func.AuthLevel.ADMIN)
def http_admin_only(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("admin ok")


@app.route(route="chain", methods=["POST"])
@app.queue_output(arg_name="start", queue_name="%Q_CHAIN_A%", connection="")
def http_start_chain(req: func.HttpRequest, start: func.Out[str]) -> func.HttpResponse:
    start.set(req.get_body().decode("utf-8"))
    return func.HttpResponse(status_code=202)


@app.queue_trigger(arg_name="msg", queue_name="%Q_CHAIN_A%", connection="AzureWebJobsStorage")
@app.queue_output(arg_name="nxt", queue_name="%Q_CHAIN_B%", connection="AzureWebJobsStorage")
@app.queue_output(arg_name="audit", queue_name="%Q_AUDIT%", connection="AzureWebJobsStorage")
def chain_a(msg: func.QueueMessage, nxt: func.Out[str], audit: func.Out[str]) -> None:
    body = msg.get_body().decode("utf-8")
    logging.info("chain_a got %s", body)
    nxt.set("A>" + body)
    audit.set([f"audit1:{body}", f"audit2:{body}"])


@app.queue_trigger(arg_name="msg", queue_name="%Q_CHAIN_B%", connection="AzureWebJobsStorage")
async def chain_b(msg: func.QueueMessage, context: func.Context) -> None:
    await asyncio.sleep(0)
    with _lock:
        CHAIN_B_SEEN.append((msg.get_body().decode("utf-8"), context.function_name, context.invocation_id,
                             context.trace_context.Traceparent))


@app.queue_trigger(arg_name="msg", queue_name="%Q_AUDIT%", connection="AzureWebJobsStorage")
def sink(msg: func.QueueMessage) -> None:
    with _lock:
        SINK_SEEN.append(msg.get_body())


@app.queue_trigger(arg_name="msg", queue_name="%Q_FLAKY%", connection="AzureWebJobsStorage")
def flaky(msg: func.QueueMessage) -> None:
    fail_times = int(msg.get_body().decode("utf-8"))
    with _lock:
        FLAKY_SEEN.append(msg.dequeue_count)
    if msg.dequeue_count <= fail_times:
        raise ValueError(f"planned failure on attempt {msg.dequeue_count}")


@app.queue_trigger(arg_name="msg", queue_name="%Q_POISON_SRC%", connection="AzureWebJobsStorage")
def always_fails(msg: func.QueueMessage) -> None:
    with _lock:
        ALWAYS_FAILS_SEEN.append(msg.dequeue_count)
    raise RuntimeError("this function always fails")


@app.queue_trigger(arg_name="msg", queue_name="%Q_SLOW%", connection="AzureWebJobsStorage")
def slow(msg: str) -> None:
    time.sleep(float(msg))
    with _lock:
        SLOW_DONE.append(msg)


@app.queue_trigger(arg_name="msg", queue_name="%Q_RET_IN%", connection="AzureWebJobsStorage")
@app.queue_output(arg_name="$return", queue_name="%Q_RET_OUT%", connection="AzureWebJobsStorage")
def echo_return(msg: bytes) -> str:
    return "echo:" + msg.decode("utf-8")


@app.queue_trigger(arg_name="msg", queue_name="%Q_RELAY_IN%", connection="AzureWebJobsStorage")
@app.queue_output(arg_name="$return", queue_name="%Q_RELAY_OUT%", connection="AzureWebJobsStorage")
def relay(msg: str) -> str:
    """Returns its message text unchanged: the host re-serializes JSON-looking text on the way out."""
    with _lock:
        RELAY_SEEN.append(msg)
    return msg
