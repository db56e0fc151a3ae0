"""List poison messages with their reasons, and replay selected ones (same code as the ops endpoint).

    python -m tools.poison list [--json]
    python -m tools.poison replay --correlation-id ID | --message-id N | --id STORAGE_ID | --all [--queue Q]

Settings come from the environment, else from local.settings.json (``--settings FILE``): the queue
connection (``AzureWebJobsStorage``) and host.json's message encoding, exactly as the app reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shared import poison_admin
from shared.clients.queues import QueueSender
from shared.settings import APP_ROOT, load_settings
from shared.telemetry import Redactor


def _sender(settings_file: Path) -> tuple[QueueSender, Redactor]:
    """The queue client and the PII redaction of the app's settings (bodies are shown as the PII mode allows)."""
    env = dict(os.environ)
    if settings_file.exists():
        env = {**json.loads(settings_file.read_text(encoding="utf-8")).get("Values", {}), **env}
    cfg = load_settings(env)
    s = cfg.settings
    return (QueueSender(s.azure_webjobs_storage, cfg.host.message_encoding, account_name=s.storage_account_name,
                        client_id=s.storage_client_id), Redactor(s.telemetry_pii_mode, s.telemetry_pii_hash_key))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.poison", description=__doc__.split("\n")[0])
    parser.add_argument("--settings", type=Path, default=APP_ROOT / "local.settings.json")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="poison messages and their reasons")
    ls.add_argument("--json", action="store_true")
    rp = sub.add_parser("replay", help="put selected poison messages back on their source queues")
    rp.add_argument("--queue", action="append", default=[], dest="queues")
    rp.add_argument("--id", action="append", default=[], dest="ids", help="Storage message id (from list)")
    rp.add_argument("--correlation-id", action="append", default=[], dest="correlation_ids")
    rp.add_argument("--message-id", action="append", default=[], dest="message_ids", type=int)
    rp.add_argument("--all", action="store_true")
    args = parser.parse_args(argv)

    sender, redactor = _sender(args.settings)
    if args.command == "list":
        entries = poison_admin.list_poison(sender)
        if args.json:
            print(json.dumps([e.to_dict(redactor) for e in entries], ensure_ascii=False, indent=2))
        else:
            for e in entries:
                print(f"{e.source_queue:22} id={e.id} message_id={e.message_id} correlation_id={e.correlation_id}"
                      f" ({e.recorded_by}): {e.reason}")
            print(f"{len(entries)} poison message(s)")
        return 0
    try:
        request = poison_admin.ReplayRequest(queues=args.queues, ids=args.ids, correlation_ids=args.correlation_ids,
                                             message_ids=args.message_ids, all=args.all)
    except ValueError as exc:
        parser.error(str(exc))
    replayed = poison_admin.replay(sender, request)
    for e in replayed:
        print(f"replayed to {e.source_queue}: message_id={e.message_id} correlation_id={e.correlation_id}")
    print(f"{len(replayed)} message(s) replayed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
