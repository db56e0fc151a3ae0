"""App for the worker-restart tests: functionTimeout is 3 s (host.json).

``work`` (queue): body "NAME:SECONDS"; sleeps SECONDS on the first attempt only, then sets its output to
"NAME#DEQUEUE_COUNT". HTTP: ``sleep/{seconds}`` (sync), ``async-sleep/{seconds}`` (async), ``quick``; for
the worker-process tests ``pid``, ``pid-sleep/{seconds}`` (the worker's process id) and ``crash`` (the worker exits).
Module-level lists record what ran (tests read them through Runner.app_module).
"""
import asyncio
import os
import threading
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

_lock = threading.Lock()
STARTED = []   # (body, dequeue count)
FINISHED = []  # (body, dequeue count): the function body ran to its end (also after its worker was abandoned)
HTTP_FINISHED = []


@app.queue_trigger(arg_name="msg", queue_name="%Q_WORK%", connection="AzureWebJobsStorage")
@app.queue_output(arg_name="done", queue_name="%Q_DONE%", connection="AzureWebJobsStorage")
def work(msg: func.QueueMessage, done: func.Out[str]) -> None:
    body = msg.get_body().decode("utf-8")
    name, seconds = body.split(":")
    with _lock:
        STARTED.append((body, msg.dequeue_count))
    if msg.dequeue_count == 1:
        time.sleep(float(seconds))
    done.set(f"{name}#{msg.dequeue_count}")
    with _lock:
        FINISHED.append((body, msg.dequeue_count))


@app.route(route="sleep/{seconds}")
def http_sleep(req: func.HttpRequest) -> str:
    time.sleep(float(req.route_params["seconds"]))
    with _lock:
        HTTP_FINISHED.append("sync")
    return "slept"


@app.route(route="async-sleep/{seconds}")
async def http_async_sleep(req: func.HttpRequest) -> str:
    await asyncio.sleep(float(req.route_params["seconds"]))
    with _lock:
        HTTP_FINISHED.append("async")
    return "slept"


@app.route(route="quick")
def quick(req: func.HttpRequest) -> str:
    return "ok"


@app.route(route="pid")
def pid(req: func.HttpRequest) -> str:
    """The worker process's id (FUNCTIONS_WORKER_PROCESS_COUNT tests)."""
    return str(os.getpid())


@app.route(route="pid-sleep/{seconds}")
def pid_sleep(req: func.HttpRequest) -> str:
    time.sleep(float(req.route_params["seconds"]))
    return str(os.getpid())


@app.route(route="crash")
def crash(req: func.HttpRequest) -> str:
    """The worker process dies (as on a segfault or an out-of-memory kill)."""
    os._exit(3)
