"""Build the console from the environment and serve it.

    python -m console [--host 127.0.0.1] [--port 8095]

Settings: the gateway's app settings (``shared/settings.py``: Cosmos DB, Storage, PII mode) and the console's
``CONSOLE_*`` settings (``console/settings.py``). A missing or bad one stops the start with its name.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping

from starlette.applications import Starlette

from console.app import Console, create_app
from console.clu import AuthoringClient
from console.settings import SettingsError, load_console_settings
from shared.bootstrap import build_admin
from shared.settings import SettingsError as GatewaySettingsError
from shared.settings import load_settings

DEFAULT_PORT = 8095
#: Gateway settings the console never uses (it calls neither SendBird nor the prediction path the gateway uses)
#: but the gateway's settings model requires: inert values when absent, so the console's App Service holds no
#: SendBird token. ``INTENT_ENDPOINT`` defaults to the authoring endpoint.
UNUSED_GATEWAY_SETTINGS = {"SENDBIRD_API_TOKEN": "console-calls-no-sendbird", "SENDBIRD_API_BASE_URL":
                           "https://sendbird.invalid", "SENDBIRD_BOT_USER_ID": "console"}


def gateway_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the placeholders of :data:`UNUSED_GATEWAY_SETTINGS` where a value is missing."""
    env = dict(environ)
    lowered = {k.lower() for k in env}
    for name, value in UNUSED_GATEWAY_SETTINGS.items():
        if name.lower() not in lowered:
            env[name] = value
    if "intent_endpoint" not in lowered and env.get("CONSOLE_AUTHORING_ENDPOINT"):
        env["INTENT_ENDPOINT"] = env["CONSOLE_AUTHORING_ENDPOINT"]
    return env


def build_from_env() -> Starlette:
    config = load_settings(gateway_environment(os.environ))
    s = config.settings
    cs = load_console_settings(project_name=s.intent_project_name, production_deployment=s.intent_deployment_name)
    client = AuthoringClient(cs.authoring_base, cs.authoring_key, cs.project_name, api_version=cs.authoring_api_version,
                             timeout=cs.authoring_timeout_seconds, job_timeout=cs.job_timeout_seconds)
    return create_app(Console(cs, build_admin(config, cs.audit_container), client))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m console", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", DEFAULT_PORT)))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = build_from_env()
    except (SettingsError, GatewaySettingsError) as exc:
        print(f"console: {exc}", file=sys.stderr)
        return 2
    import uvicorn
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", proxy_headers=True)
    return 0
