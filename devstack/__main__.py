"""Run the local stack in the foreground: python -m devstack [options]   (Ctrl-C stops it)

Starts Azurite (queue), the Cosmos DB stand-in and the SendBird stand-in on their
default ports (override with --azurite-port etc.; 0 = free port), optionally the
intent service and the functions runner, prints the endpoints and waits.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
import sys

from devstack.stack import DEFAULT_PORTS, LocalStack, ServiceStartError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.split("\n")[0])
    ap.add_argument("--azurite-port", type=int, default=DEFAULT_PORTS["azurite"])
    ap.add_argument("--cosmos-port", type=int, default=DEFAULT_PORTS["cosmos"])
    ap.add_argument("--sendbird-port", type=int, default=DEFAULT_PORTS["sendbird"])
    ap.add_argument("--intent-port", type=int, default=DEFAULT_PORTS["intent"])
    ap.add_argument("--functions-port", type=int, default=DEFAULT_PORTS["functions"])
    ap.add_argument("--no-azurite", action="store_true")
    ap.add_argument("--no-cosmos", action="store_true")
    ap.add_argument("--no-sendbird", action="store_true")
    ap.add_argument("--sendbird-api-token", default="standin-api-token")
    ap.add_argument("--bot-user-id", default="ssg_bot")
    ap.add_argument("--intent-model", help="start the intent service with this model")
    ap.add_argument("--intent-key", help="key the intent service requires")
    ap.add_argument("--functions-app-root", help="start the functions runner on this app root")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the functions runner (repeatable)")
    ap.add_argument("--log-dir", help="default: .stack/logs")
    args = ap.parse_args(argv)

    extra_env = dict(item.split("=", 1) for item in args.env)
    stack = LocalStack.default(
        azurite=not args.no_azurite, cosmos=not args.no_cosmos, sendbird=not args.no_sendbird,
        intent_model=args.intent_model, intent_key=args.intent_key,
        functions_app_root=args.functions_app_root, functions_env=extra_env,
        ports={"azurite": args.azurite_port, "cosmos": args.cosmos_port, "sendbird": args.sendbird_port,
               "intent": args.intent_port, "functions": args.functions_port},
        sendbird_api_token=args.sendbird_api_token, bot_user_id=args.bot_user_id, log_dir=args.log_dir,
    )
    try:
        stack.start()
    except ServiceStartError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    info = stack.describe()
    if "azurite" in stack:
        info["azurite"]["connection_string"] = stack["azurite"].connection_string
    if "cosmos" in stack:
        info["cosmos"].update(endpoint=stack["cosmos"].endpoint, key=stack["cosmos"].key)
    if "sendbird" in stack:
        info["sendbird"].update(base_url=stack["sendbird"].base_url, api_token=args.sendbird_api_token,
                                bot_user_id=args.bot_user_id)
    for key in ("intent", "functions"):
        if key in stack:
            info[key]["base_url"] = stack[key].base_url
    print(json.dumps(info, indent=2), flush=True)
    print("devstack ready; Ctrl-C to stop", flush=True)

    stopping: list[int] = []  # the handler only appends: no locks or other threading primitives in a handler
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: stopping.append(signum))
    try:
        while not stopping:
            time.sleep(0.2)
            dead = [k for k, s in stack.services.items() if not s.running]
            if dead:
                print(f"devstack: service(s) exited: {dead}", file=sys.stderr)
                for k in dead:
                    print(stack[k].log_tail(), file=sys.stderr)
                return 1
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
