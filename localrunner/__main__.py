"""python -m localrunner --app-root DIR [--port 7071] [--host 127.0.0.1] ..."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from types import FrameType
from typing import Callable, List, Optional, Sequence

from .config import ConfigError
from .runner import Runner

log = logging.getLogger("localrunner")

#: how often the main loop looks for a signal recorded by the handler
SIGNAL_POLL_SECONDS = 0.2


def signal_recorder(received: List[int]) -> Callable[[int, Optional[FrameType]], None]:
    """A SIGTERM/SIGINT handler that only appends the signal number to ``received``.

    Python runs a handler in the main thread between two bytecodes, possibly while that thread holds a
    lock (inside ``Event.wait``/``set``, a logging handler's lock, ...); a handler taking the same lock
    would deadlock. So it takes no lock and does not log; the main loop polls ``received``
    (``wait_for_signal``) and does the logging and stopping.
    """

    def on_signal(signum: int, _frame: Optional[FrameType]) -> None:
        received.append(signum)  # list.append is atomic and takes no lock

    return on_signal


def wait_for_signal(received: List[int], poll: float = SIGNAL_POLL_SECONDS) -> int:
    """Block until the handler has recorded a signal; return the first one."""
    while not received:
        time.sleep(poll)
    return received[0]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m localrunner",
        description="Run an Azure Functions Python v2 app locally (HTTP triggers, queue triggers, "
                    "queue output bindings) without Azure Functions Core Tools.",
    )
    p.add_argument("--app-root", required=True, help="folder with function_app.py and host.json")
    p.add_argument("--port", type=int, default=None,
                   help="HTTP port (default: Host.LocalHttpPort from the settings file, else 7071; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--settings", default=None, help="settings file (default APP_ROOT/local.settings.json)")
    p.add_argument("--function-key", default=None,
                   help="enforce this key for FUNCTION/ADMIN auth-level functions (x-functions-key header or "
                        "?code=); without it keys are not enforced, like `func start`")
    p.add_argument("--module", default="function_app", help="script module name (default function_app)")
    p.add_argument("--lease-seconds", type=int, default=None,
                   help="visibility window while a message is processed, renewed every half window "
                        "(default: env LOCALRUNNER_LEASE_SECONDS or 600, the host's 10 minutes)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds to wait for in-flight invocations on SIGTERM/SIGINT (default 30)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        stream=sys.stderr,
        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    runner = Runner(
        args.app_root, port=args.port, host=args.host, settings_file=args.settings,
        function_key=args.function_key, module=args.module, lease_seconds=args.lease_seconds,
        print_ready=True,
    )
    received: List[int] = []  # appended to by the signal handler, read only here
    on_signal = signal_recorder(received)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        runner.start()
    except ConfigError as exc:
        print(f"localrunner: error: {exc}", file=sys.stderr, flush=True)
        return 2
    log.info("Received %s", signal.Signals(wait_for_signal(received)).name)
    orphans = runner.orphans_running
    drained = runner.stop(timeout=args.shutdown_timeout)
    for signum in received[1:]:
        log.info("Received %s while stopping (ignored)", signal.Signals(signum).name)
    if not drained or orphans or runner.orphans_running:
        # sync functions still running (not drained, or abandoned by a worker restart) cannot be
        # interrupted; do not let the interpreter wait for their threads at exit
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if drained else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
