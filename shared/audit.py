"""The console's audit log: who changed what, when, with what outcome (:class:`shared.ports.AuditLog`).

Every state-changing call of the console writes one :class:`AuditEntry` (also a refused or failed one). Entries
never hold a customer's data: a conversation is named by the user id as telemetry stores it (hashed in PII mode
``mask``/``strict``), and an erasure records only that it happened and how much it removed.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.models import now_ms


class AuditEntry(BaseModel):
    """One change (a Cosmos DB document, partition key ``/id``)."""

    model_config = ConfigDict(extra="ignore")
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    at_ms: int = Field(default_factory=now_ms)
    actor: str = Field(min_length=1, max_length=200, description="who: the signed-in user or Entra principal")
    roles: list[str] = Field(default_factory=list)
    action: str = Field(min_length=1, max_length=100, description="e.g. review.assign, catalog.publish")
    target: str = Field(default="", max_length=500, description="what it acted on (an id, never a text)")
    outcome: Literal["succeeded", "refused", "failed"] = "succeeded"
    details: dict[str, Any] = Field(default_factory=dict, description="small, data-free facts")
