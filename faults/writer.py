"""A second writer on the gateway's user documents (Cosmos DB 412 conflicts on both sides).

It does what another tool of the shop would do: ETag read-modify-replace (``If-Match``) of the same user
documents the gateway is writing, incrementing a field of its own (``chaos_counter``). User state keeps
unknown fields, so at the end ``chaos_counter`` must equal the number of this writer's successful writes for
every user: otherwise a write of one side was lost to the other.
"""

from __future__ import annotations

import threading
import time
import warnings

from azure.core import MatchConditions
from azure.cosmos import exceptions as cosmos_errors

FIELD = "chaos_counter"


class SecondWriter:
    def __init__(self, container, user_ids: list[str], interval_s: float):
        self.container = container
        self.user_ids = user_ids
        self.interval_s = interval_s
        self.successes: dict[str, int] = {u: 0 for u in user_ids}
        self.conflicts = 0          # 412: the gateway (or nobody else) wrote in between
        self.errors = 0
        self.missing = 0            # document not created yet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="second-writer", daemon=True)

    def start(self) -> "SecondWriter":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        i = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            while not self._stop.is_set():
                user = self.user_ids[i % len(self.user_ids)]
                i += 1
                self.write_once(user)
                self._stop.wait(self.interval_s)

    def write_once(self, user: str, attempts: int = 8) -> bool:
        for _ in range(attempts):
            try:
                doc = self.container.read_item(user, partition_key=user)
            except cosmos_errors.CosmosResourceNotFoundError:
                self.missing += 1
                return False
            except Exception:  # noqa: BLE001 - the stand-in is busy; not this writer's test
                self.errors += 1
                time.sleep(0.05)
                continue
            doc[FIELD] = int(doc.get(FIELD, 0)) + 1
            try:
                self.container.replace_item(doc["id"], doc, etag=doc["_etag"],
                                            match_condition=MatchConditions.IfNotModified)
            except cosmos_errors.CosmosAccessConditionFailedError:
                self.conflicts += 1
                continue
            except Exception:  # noqa: BLE001 - unknown outcome: cannot count it either way
                self.errors += 1
                return False
            self.successes[user] += 1
            return True
        return False

    def check(self) -> dict:
        """Per user: the document's counter vs this writer's successful writes."""
        mismatches = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for user in self.user_ids:
                try:
                    found = int(self.container.read_item(user, partition_key=user).get(FIELD, 0))
                except cosmos_errors.CosmosResourceNotFoundError:
                    found = 0
                if found != self.successes[user]:
                    mismatches[user] = {"document": found, "writes": self.successes[user]}
        return {"writes": sum(self.successes.values()), "conflicts_412": self.conflicts, "errors": self.errors,
                "not_created_yet": self.missing, "mismatches": mismatches}
