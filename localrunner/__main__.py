"""python -m localrunner --app-root DIR [--port 7071] [--host 127.0.0.1] ..."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .config import ConfigError
from .runner import Runner


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


def main(argv=None) -> int:
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
    stop_requested = threading.Event()

    def on_signal(signum, _frame):
        logging.getLogger("localrunner").info("Received %s", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        runner.start()
    except ConfigError as exc:
        print(f"localrunner: error: {exc}", file=sys.stderr, flush=True)
        return 2
    while not stop_requested.wait(0.5):
        pass
    orphans = runner.orphans_running
    drained = runner.stop(timeout=args.shutdown_timeout)
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
