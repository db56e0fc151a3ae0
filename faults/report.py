"""Accounting: accepted messages vs the replies the SendBird stand-in recorded, and the printed report."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from faults.driver import Message


def _normalize(reason: str) -> str:
    return re.sub(r"\d+", "N", reason)[:160]


@dataclass
class Report:
    accepted: int = 0
    replied: int = 0
    lost: int = 0
    duplicates: int = 0
    apologies: int = 0
    real_replies: int = 0
    silent: int = 0
    not_accepted: int = 0
    replies_to_not_accepted: int = 0
    poisoned: int = 0
    poison_reasons: dict = field(default_factory=dict)
    lost_ids: list = field(default_factory=list)
    duplicate_ids: list = field(default_factory=list)
    order: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)
    injected: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    duration_s: float = 0.0
    drained: bool = False

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicates == 0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["ok"] = self.ok
        return d

    def text(self) -> str:
        inj = self.injected
        lines = [
            "=" * 78,
            "FAULT-INJECTION SUITE: nothing lost, nothing doubled",
            f"plan: {self.plan.get('users')} users x {self.plan.get('messages')} messages, seed {self.plan.get('seed')}"
            f"; run {self.duration_s:.0f} s; queues drained: {'yes' if self.drained else 'NO (timed out)'}",
            "-" * 78,
            f"accepted                 {self.accepted:6d}   (a delivery got 200 accepted)",
            f"replied                  {self.replied:6d}   (exactly one visible answer: reply or apology)",
            f"  real replies           {self.real_replies:6d}",
            f"  apologies sent         {self.apologies:6d}",
            f"LOST (must be 0)         {self.lost:6d}" + (f"   {self.lost_ids[:10]}" if self.lost_ids else ""),
            f"DUPLICATE REPLIES (0)    {self.duplicates:6d}" + (f"   {self.duplicate_ids[:10]}" if self.duplicate_ids else ""),
            f"silent (handed off)      {self.silent:6d}",
            f"poisoned                 {self.poisoned:6d}   (poison records; {self.details.get('poisoned_messages', 0)} distinct"
            f" messages)",
        ]
        for reason, n in sorted(self.poison_reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n:4d} x {reason}")
        lines.append(f"never accepted           {self.not_accepted:6d}   (every delivery failed; "
                     f"{self.replies_to_not_accepted} of them answered anyway)")
        o = self.order
        lines.append(f"per-user order           {o.get('users_in_order', 0)}/{o.get('users', 0)} users got their "
                     f"answers in the order they wrote ({o.get('inversions', 0)} inversions); handled in the order "
                     f"written: {o.get('users_handled_in_order', 0)}/{o.get('users', 0)} "
                     f"({o.get('handling_inversions', 0)} inversions); answered in the order admitted (the "
                     f"gateway's promise): {o.get('answer_vs_admission_inversions', 0)} inversions")
        if self.latency_ms:
            lat = self.latency_ms
            lines.append(f"latency sent->answer ms  p50 {lat['p50']}  p95 {lat['p95']}  max {lat['max']}")
        lines.append("-" * 78)
        lines.append("faults injected")
        lines.append(f"  webhook deliveries     {inj.get('posts', 0)} posts for {self.plan.get('users', 0) * self.plan.get('messages', 0)}"
                     f" messages: {inj.get('extra_deliveries', 0)} extra deliveries ({inj.get('concurrent', 0)} concurrent,"
                     f" {inj.get('late', 0)} late), {inj.get('failed_posts', 0)} failed posts,"
                     f" {inj.get('sendbird_retries', 0)} SendBird re-posts, {inj.get('gave_up', 0)} given up")
        lines.append(f"  duplicates dropped     {inj.get('duplicate_deliveries_dropped', 0)} (intent stage log)")
        lines.append(f"  queue redeliveries     {inj.get('skipped_deletes', 0)} messages not deleted after success "
                     f"(rate {self.plan.get('skip_delete_rate')}, lease {self.plan.get('lease_seconds')} s)")
        if inj.get("instances", 1) > 1:
            lines.append(f"  instances              {inj['instances']} runners on the same queues and state")
        for k in inj.get("kills", []):
            after = (f"new runner ready after {k.get('down_s')} s" if k.get("restarted", True)
                     else "not restarted: the other instance(s) took over")
            lines.append(f"  worker SIGKILL         instance {k.get('instance', 0)}: {k.get('in_flight_invocations')} "
                         f"invocations in flight; {after}")
        lines.append(f"  intent service         {_rules(inj.get('intent_proxy', {}))}; breaker-open failures "
                     f"{inj.get('intent_breaker_open', 0)}")
        lines.append(f"  SendBird API           {inj.get('sendbird_faults_applied', 0)} scripted faults applied "
                     f"{inj.get('sendbird_rejected', {})}; {inj.get('sendbird_deduplicated', 0)} re-sends absorbed "
                     f"by dedup_id; {inj.get('reply_reschedules', 0)} 429 reschedules")
        lines.append(f"  Cosmos DB              {_rules(inj.get('cosmos_proxy', {}))}; gateway 412 retries "
                     f"{inj.get('gateway_412', 0)}; second writer 412s {self.checks.get('second_writer', {}).get('conflicts_412', 0)}")
        lines.append("-" * 78)
        lines.append("checks")
        w = self.checks.get("second_writer", {})
        lines.append(f"  second writer          {w.get('writes', 0)} writes; chaos_counter == writes for every user: "
                     f"{'yes' if not w.get('mismatches') else 'NO ' + json.dumps(w.get('mismatches'))[:200]}")
        s = self.checks.get("admission", {})
        lines.append(f"  admission              {s.get('users_ok', 0)}/{s.get('users', 0)} users: one turn per "
                     f"accepted message, seq 1..n without gaps" +
                     (f"; problems: {json.dumps(s.get('problems'))[:300]}" if s.get("problems") else ""))
        lines.append("=" * 78)
        lines.append(f"RESULT: {'PASS' if self.ok else 'FAIL'} (lost {self.lost}, duplicate replies {self.duplicates})")
        return "\n".join(lines)


def _rules(stats: dict) -> str:
    rules = stats.get("rules", {})
    inner = ", ".join(f"{k} {v}" for k, v in sorted(rules.items())) or "no rule applied"
    return f"{stats.get('requests', 0)} calls, {inner}"


def _handling_order(users: dict[str, list[Message]], states: dict[str, dict],
                    by_mid: dict[int, list[dict]]) -> dict[str, int]:
    """Per user, with the turns in sequence-number order (the order the gateway admitted them, and the order it
    promises to answer in): adjacent inversions against the order the user wrote (``handling_inversions``) and
    against the order the answers were recorded by SendBird (``answer_vs_admission_inversions``)."""
    in_order = inversions = answer_inversions = 0
    for user, msgs in users.items():
        index = {m.message_id: m.index for m in msgs}
        turns = sorted((t for t in (states.get(user) or {}).get("turns", []) if t.get("message_id") in index),
                       key=lambda t: t["seq"])
        written = [index[t["message_id"]] for t in turns]
        inv = sum(1 for a, b in zip(written, written[1:], strict=False) if a > b)
        inversions += inv
        in_order += inv == 0
        answered = [min(a["created_at"] for a in by_mid[t["message_id"]]) for t in turns if by_mid.get(t["message_id"])]
        answer_inversions += sum(1 for a, b in zip(answered, answered[1:], strict=False) if a > b)
    return {"users_handled_in_order": in_order, "handling_inversions": inversions,
            "answer_vs_admission_inversions": answer_inversions}


def build_report(messages: list[Message], visible: list[dict], poison: list, states: dict[str, dict],
                 writer_check: dict, injected: dict, plan: dict, duration_s: float, drained: bool) -> Report:
    """``visible``: the stand-in's recorded messages; ``poison``: PoisonEntry list; ``states``: user -> document."""
    rep = Report(plan=plan, duration_s=duration_s, drained=drained, injected=injected)
    by_mid: dict[int, list[dict]] = defaultdict(list)
    for m in visible:
        dedup = m.get("dedup_id") or ""
        kind, _, mid = dedup.partition("-")
        if kind in ("reply", "apology") and mid.isdigit():
            by_mid[int(mid)].append(m)
    silent_ids = {t["message_id"] for doc in states.values() for t in doc.get("turns", []) if t.get("status") == "silent"}
    latencies = []
    for msg in messages:
        answers = by_mid.get(msg.message_id, [])
        if not msg.accepted:
            rep.not_accepted += 1
            rep.replies_to_not_accepted += bool(answers)
            if len(answers) > 1:
                rep.duplicates += 1
                rep.duplicate_ids.append(msg.message_id)
            continue
        rep.accepted += 1
        if len(answers) == 1:
            rep.replied += 1
            latencies.append(answers[0]["created_at"] - msg.sent_at_ms)
        elif not answers:
            if msg.message_id in silent_ids:
                rep.silent += 1
            else:
                rep.lost += 1
                rep.lost_ids.append(msg.message_id)
        else:
            rep.duplicates += 1
            rep.duplicate_ids.append(msg.message_id)
            rep.details.setdefault("duplicates", {})[msg.message_id] = [a.get("dedup_id") for a in answers]
        for a in answers:
            if a["dedup_id"].startswith("apology-"):
                rep.apologies += 1
            else:
                rep.real_replies += 1
    # poison, grouped by queue and reason (numbers normalized)
    rep.poisoned = len(poison)
    rep.details["poisoned_messages"] = len({(p.message_id or p.original) for p in poison})
    reasons = Counter(f"{p.source_queue}: {_normalize(p.reason)}" for p in poison)
    rep.poison_reasons = dict(reasons)
    rep.details["poison"] = [{"queue": p.source_queue, "message_id": p.message_id, "reason": p.reason,
                              "recorded_by": p.recorded_by} for p in poison]
    # per-user order: answers' created_at order vs the order the user wrote
    users: dict[str, list[Message]] = defaultdict(list)
    for msg in messages:
        users[msg.user].append(msg)
    in_order = inversions = 0
    for msgs in users.values():
        sent = [m.message_id for m in sorted(msgs, key=lambda m: m.index) if m.message_id in by_mid]
        answered = [mid for mid, _ in sorted(((mid, min(a["created_at"] for a in by_mid[mid])) for mid in sent),
                                             key=lambda x: (x[1], sent.index(x[0])))]
        pos = {mid: i for i, mid in enumerate(answered)}
        inv = sum(1 for a, b in zip(sent, sent[1:], strict=False) if pos[a] > pos[b])
        inversions += inv
        in_order += inv == 0
    rep.order = {"users": len(users), "users_in_order": in_order, "inversions": inversions,
                 **_handling_order(users, states, by_mid)}
    if latencies:
        latencies.sort()
        rep.latency_ms = {"p50": int(statistics.median(latencies)),
                          "p95": int(latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]),
                          "max": int(latencies[-1])}
    # admission: one turn per accepted message, sequence numbers 1..n
    problems, users_ok = {}, 0
    for user, msgs in users.items():
        doc = states.get(user) or {}
        turns = doc.get("turns", [])
        ids = [t["message_id"] for t in turns]
        accepted_ids = {m.message_id for m in msgs if m.accepted}
        p = []
        if len(ids) != len(set(ids)):
            p.append("a message has two turns")
        missing = accepted_ids - set(ids)
        if missing and len(turns) < 20:
            p.append(f"no turn for {sorted(missing)}")
        seqs = sorted(t["seq"] for t in turns)
        if seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
            p.append(f"seq gaps {seqs}")
        if doc and doc.get("next_seq", 1) - 1 != len(ids) and len(turns) < 20:
            p.append(f"next_seq {doc.get('next_seq')} for {len(ids)} turns")
        if p:
            problems[user] = p
        else:
            users_ok += 1
    rep.checks["admission"] = {"users": len(users), "users_ok": users_ok, "problems": problems}
    rep.checks["second_writer"] = writer_check
    return rep
