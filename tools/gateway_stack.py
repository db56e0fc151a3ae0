"""The gateway's local stack: Azurite, Cosmos DB stand-in, SendBird stand-in, intent service, functions runner.

Used by the demo, the end-to-end tests and the benchmarks, so that they all run
the real ``function_app.py`` against the same services, configured from
``local.settings.sample.json`` with the stack's actual ports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from devstack.stack import DEFAULT_PORTS, FunctionsRunner, LocalStack
from devstack.telemetry_sink import TelemetrySinkService
from intent_service.cli import DEFAULT_RETAIL_MODEL

ROOT = Path(__file__).resolve().parent.parent
RETAIL_MODEL = DEFAULT_RETAIL_MODEL
#: The token the sample webhooks in tests/fixtures/sendbird were signed with; used by the local stack.
LOCAL_API_TOKEN = "0123456789abcdef0123456789abcdef01234567"
BOT_USER_ID = "ssg_bot"


def sample_settings() -> dict[str, str]:
    return json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]


def ensure_retail_model() -> Path:
    """Build the intent service's retail model if it is missing (a few seconds)."""
    if not RETAIL_MODEL.exists():
        subprocess.run([sys.executable, "-m", "intent_service", "build-retail"], cwd=ROOT, check=True)
    return RETAIL_MODEL


def gateway_env(stack: LocalStack, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """App settings for the functions runner: the sample settings pointed at the stack's services."""
    env = sample_settings()
    if "telemetry" in stack:
        env.update({"APPLICATIONINSIGHTS_CONNECTION_STRING": stack["telemetry"].connection_string,
                    "TELEMETRY_EXPORT_INTERVAL_SECONDS": "1"})
    env.update({
        "AzureWebJobsStorage": stack["azurite"].connection_string,
        "COSMOS_ENDPOINT": stack["cosmos"].endpoint,
        "SENDBIRD_API_BASE_URL": stack["sendbird"].base_url,
        "SENDBIRD_API_TOKEN": LOCAL_API_TOKEN,
        "SENDBIRD_BOT_USER_ID": BOT_USER_ID,
        "INTENT_ENDPOINT": stack["intent"].base_url,
    })
    env.update(overrides or {})
    return env


def build_stack(*, ports: Mapping[str, int] | None = None, log_dir: str | os.PathLike | None = None,
                env_overrides: Mapping[str, str] | None = None, with_functions: bool = True,
                with_telemetry: bool = False) -> LocalStack:
    """The whole local stack (not started). ``ports``: key -> port (0 = any free port).

    ``with_telemetry`` adds the local Application Insights ingestion sink (key ``telemetry``) and
    points the gateway's telemetry at it.
    """
    stack = LocalStack.default(
        intent_model=ensure_retail_model(), functions_app_root=None,
        ports=ports, sendbird_api_token=LOCAL_API_TOKEN, bot_user_id=BOT_USER_ID, log_dir=log_dir,
    )
    if with_telemetry:
        port = (ports or {}).get("telemetry", TelemetrySinkService.default_port)
        stack.add(TelemetrySinkService(port, log_dir=log_dir), "telemetry")
    if with_functions:  # last: its settings point at the other services, whose ports are known by now
        functions_port = (ports or {}).get("functions", DEFAULT_PORTS["functions"])
        stack.add(FunctionsRunner(ROOT, functions_port, gateway_env(stack, env_overrides), log_dir=log_dir),
                  "functions")
    return stack
