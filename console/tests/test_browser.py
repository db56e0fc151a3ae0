"""Browser tests: the console in a real headless browser (Debian's chromium driven by Playwright) on the real local
stack (Azurite, Cosmos DB stand-in, SendBird stand-in, the intent service with its authoring API, the functions
runner hosting function_app.py, the console), walking the main flows end to end:

1. the bot learns a new phrasing: a customer's message goes to fallback -> it appears in the review inbox ->
   assign an intent -> train -> read the evaluation -> deploy to staging -> try the sentence (staging vs
   production) -> swap -> the same sentence through the chain now routes correctly;
2. edit a response -> the bot's next reply uses it;
3. erase a user -> their state is gone.

Screenshots land in the test output (``.stack/test-output/console/<run>/``, printed); with
``CONSOLE_SCREENSHOTS_DIR=docs/console`` (``make console-screenshots``) the same run writes README's screenshots.
Every wait has a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.polling import poll

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SENTENCE = "waiting for ages for my kettle"
NEW_GOODBYE = "Thanks for shopping with us, see you soon!"
TIMINGS: dict[str, float] = {}
SHIPPED = json.loads((ROOT / "shared" / "responses.json").read_text(encoding="utf-8"))



@pytest.fixture(scope="module")
def shots() -> Iterator[Path]:
    out = ROOT / ".stack" / "test-output" / "console" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    yield out
    print(f"\nconsole screenshots: {out}")
    target = os.environ.get("CONSOLE_SCREENSHOTS_DIR")
    if target:
        dest = (ROOT / target).resolve()
        dest.mkdir(parents=True, exist_ok=True)
        for png in out.glob("*.png"):
            shutil.copy2(png, dest / png.name)
        print(f"README screenshots written to {dest}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Any]:
    from tools.gateway_stack import StackOptions, build_stack
    s = build_stack(StackOptions(free_ports=True, console=True, log_dir=tmp_path_factory.mktemp("browser-stack"),
                                 env_overrides={"CATALOG_REFRESH_SECONDS": "1"}))
    t0 = time.monotonic()
    s.start()
    TIMINGS["stack start (s)"] = time.monotonic() - t0
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium and fonts-noto-cjk")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, stack) -> Iterator[Any]:
    from tools.gateway_stack import CONSOLE_USERS
    context = browser.new_context(viewport={"width": 1360, "height": 900}, locale="en-US")
    context.set_default_timeout(30_000)
    pg = context.new_page()
    pg.on("dialog", lambda d: d.accept())
    base = stack["console"].base_url
    pg.goto(base + "/review")
    assert pg.url.startswith(base + "/signin")
    pg.fill("input[name=username]", "lead")
    pg.fill("input[name=password]", CONSOLE_USERS["lead"][1])
    pg.click("button[type=submit]")
    pg.wait_for_url(base + "/review")
    pg.base = base  # type: ignore[attr-defined]
    yield pg
    context.close()


class Customer:
    """A SendBird user writing to the bot through the real webhook intake; reads the bot's replies from the
    SendBird stand-in."""

    def __init__(self, stack: Any, user: str) -> None:
        self.stack, self.user = stack, user
        self.channel = f"sendbird_group_channel_{user}"
        self.session = requests.Session()
        self.next_id = int(time.time() * 1000) * 10

    def say(self, text: str, timeout: float = 30) -> dict[str, Any]:
        from tools import webhooks
        from tools.gateway_stack import LOCAL_API_TOKEN
        self.next_id += 1
        body = webhooks.encode(webhooks.message_send_event(user_id=self.user, text=text, message_id=self.next_id,
                                                          channel_url=self.channel))
        result = webhooks.post(self.session, self.stack["functions"].base_url, body, LOCAL_API_TOKEN)
        assert result.status == 200 and result.body["status"] == "accepted", result.body
        dedup = f"reply-{self.next_id}"
        msg = poll(lambda: next((m for m in self.stack["sendbird"].control.messages(self.channel)
                                 if m.get("dedup_id") == dedup), None), timeout, f"the bot's reply to {text!r}")
        return {**msg, "data": json.loads(msg.get("data") or "{}"), "sent_at_ms": result.sent_at_ms}


def flash(page: Any, text: str | re.Pattern[str], timeout: float = 60_000) -> str:
    """Wait for a flash line containing ``text`` (success or the error's reason)."""
    page.locator("#flash").get_by_text(text, exact=False).first.wait_for(timeout=timeout)
    return page.locator("#flash").inner_text()


def test_the_bot_learns_a_new_phrasing(page, stack, shots):
    base = page.base
    customer = Customer(stack, f"browser_{uuid.uuid4().hex[:8]}")
    t0 = time.monotonic()
    first = customer.say(SENTENCE)
    assert first["data"]["route"] == "fallback", first["data"]

    # 1. the fallback message appears in the review inbox
    def in_inbox() -> bool:
        page.goto(base + "/review")
        return page.locator("#review-items tr", has_text=SENTENCE).count() > 0
    poll(in_inbox, 30, "the fallback message in the review inbox", interval=0.5)
    TIMINGS["message -> in the inbox (s)"] = time.monotonic() - t0
    row = page.locator("#review-items tr", has_text=SENTENCE)
    assert "fallback" in row.inner_text() and "retail-bot.retail." in row.inner_text()
    page.screenshot(path=str(shots / "review.png"))

    # 2. assign an intent: the utterance joins the project
    row.locator("input[name=ids]").check()
    page.select_option("#review-form select[name=intent]", "OrderStatus")
    page.click("#assign")
    flash(page, "assigned 1 item(s) to OrderStatus")
    page.goto(base + "/review?status=assigned")
    assigned = page.locator("#review-items tr", has_text=SENTENCE).inner_text()
    assert f"added '{SENTENCE}' (en) to OrderStatus as Train" in assigned
    page.goto(base + "/intents?q=" + requests.utils.quote(SENTENCE))
    assert page.locator("#utterances tbody tr").count() == 1
    TIMINGS["... -> assigned (s)"] = time.monotonic() - t0

    # 3. train, and read the evaluation
    page.goto(base + "/models")
    label = "m" + uuid.uuid4().hex[:6]
    page.fill("input[name=label]", label)
    page.click("#train")
    page.locator("article[data-status=succeeded]").wait_for(timeout=240_000)
    TIMINGS["... -> trained (s)"] = time.monotonic() - t0
    page.click("#open-evaluation")
    page.wait_for_url(f"{base}/models/{label}")
    assert page.locator("#per-intent tbody tr").count() >= 7
    assert page.locator("#confusion tbody tr").count() >= 7
    assert "production" in page.locator("#per-intent thead").inner_text()  # compared with production
    page.screenshot(path=str(shots / "evaluation.png"), full_page=True)

    # 4. deploy to staging, try the sentence on staging and production side by side
    page.click("#deploy-staging")
    flash(page, f"deployed {label} to staging")
    page.goto(base + "/models")
    page.fill("input[name=text]", SENTENCE)
    page.click("#try")
    staging = page.locator('#try-answers article[data-deployment="staging"]')
    production = page.locator('#try-answers article[data-deployment="production"]')
    staging.wait_for()
    assert staging.locator(".top-intent").inner_text() == "OrderStatus"
    assert staging.locator(".route").inner_text() == "order_status"
    assert production.locator(".route").inner_text() == "fallback"
    page.screenshot(path=str(shots / "models.png"), full_page=True)

    # 5. swap: the promotion gate's verdict and the audit trail
    page.click("#swap")
    # "swapped staging and production: gate passed", or the gate's refusal with its reasons
    verdict = flash(page, re.compile("swapped staging and production|promotion gate refused"))
    if "refused" in verdict:  # an operator may force it, with a reason (audited)
        page.check("input[name=force]")
        page.fill("input[name=reason]", "browser test: the new phrasing must reach production")
        page.click("#swap")
        verdict = flash(page, "swapped staging and production")
        assert "gate forced" in verdict, verdict
    else:
        assert "swapped staging and production: gate passed" in verdict, verdict
    page.goto(base + "/models")
    assert label in page.locator("#deployment-production").inner_text()
    assert "swap" in page.locator("#service-audit tbody tr").first.inner_text()
    TIMINGS["... -> in production (s)"] = time.monotonic() - t0

    # 6. the chain now routes the sentence correctly
    again = customer.say(SENTENCE)
    assert again["data"]["route"] == "order_status" and again["data"]["intent"] == "OrderStatus", again["data"]
    TIMINGS["customer's message -> answered correctly (s)"] = time.monotonic() - t0
    print("\nthe bot learns a new phrasing: " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))


def test_an_edited_response_is_the_next_reply(page, stack, shots):
    base = page.base
    page.goto(base + "/responses")
    page.fill('textarea[name="texts[goodbye.thanks][en]"]', NEW_GOODBYE)
    page.fill("#catalog-form input[name=note]", "warmer goodbye")
    # a broken placeholder is refused with the reason, and nothing is published
    page.fill('textarea[name="texts[order_status.found][en]"]', "Your order {order_number} is on its way")
    page.click("#publish")
    assert "missing {tracking_url}" in flash(page, "the catalog was not published")
    page.fill('textarea[name="texts[order_status.found][en]"]', SHIPPED["order_status.found"]["en"])
    page.click("#publish")
    flash(page, "published version 1")
    t0 = time.monotonic()
    # Each worker looks for a new version every CATALOG_REFRESH_SECONDS (1 s here): a reply rendered within that
    # interval after the publish may still use the old text; every later one uses the new text.
    customer = Customer(stack, f"browser_{uuid.uuid4().hex[:8]}")
    replies = []

    def new_text_reply() -> bool:
        sent = time.monotonic() - t0
        reply = customer.say("Thanks, bye!")
        replies.append((sent, time.monotonic() - t0, reply["message"]))
        return reply["message"] == NEW_GOODBYE
    poll(new_text_reply, 30, "a reply with the published text", interval=0.2)
    stale = [(sent, text) for sent, _, text in replies[:-1]]
    # sent 1 s after the publish, a message is answered from the new version (0.5 s of slack for a busy machine)
    assert all(sent < 1.5 for sent, _ in stale), f"old text used after the refresh interval: {stale}"
    TIMINGS["published -> reply uses it (s)"] = replies[-1][1]
    print(f"\nresponse edit: published -> first reply with the new text {replies[-1][1]:.1f} s "
          f"({len(replies) - 1} reply(ies) before it still had the old one)")
    page.goto(base + "/responses")
    assert page.locator("#catalog-version").inner_text() == "1"
    page.screenshot(path=str(shots / "responses.png"))


def test_erasing_a_user_removes_their_state(page, stack, shots):
    base = page.base
    customer = Customer(stack, f"browser_{uuid.uuid4().hex[:8]}")
    customer.say("where is my order?")  # the bot now waits for an order number
    page.goto(base + "/conversations?q=" + customer.user)
    page.click(f"#conversations a:has-text('{customer.user}')")
    assert page.locator("#pending-slot").inner_text() == "order_number"
    assert "order_status" in page.locator("#turns").inner_text()
    page.screenshot(path=str(shots / "conversation.png"))
    page.click("#clear-slot")
    flash(page, "clear slot: done")
    page.locator("#pending-slot", has_text="nothing").wait_for()
    page.click("summary:has-text('Erase this user')")
    page.fill("input[name=confirm]", customer.user)
    page.click("#erase")
    flash(page, "erased: state document deleted")
    page.goto(base + "/conversations?q=" + customer.user)
    assert customer.user not in page.locator("#conversations").inner_text()
    resp = page.request.get(f"{base}/conversations/{customer.user}", headers={"Accept": "application/json"})
    assert resp.status == 404
    page.goto(base + "/audit?action=conversation.erase")
    entry = page.locator("#audit tbody tr").first.inner_text()
    assert "conversation.erase" in entry and customer.user not in entry


def test_every_page_renders(page, shots):
    base = page.base
    for name in ("intents", "operations", "audit", "conversations"):
        page.goto(f"{base}/{name}")
        assert page.locator("h2").first.is_visible()
        page.screenshot(path=str(shots / f"{name}.png"))


def test_a_relabelled_daily_export_is_imported(page, stack, tmp_path):
    """The cold path in the browser: the day's export (the timer function, invoked now through the runner's admin
    API) is downloaded from the review page, relabelled and imported back."""
    import datetime as dt
    base = page.base
    text = f"zxqv blorp frindle {uuid.uuid4().hex[:6]}"
    Customer(stack, f"browser_{uuid.uuid4().hex[:8]}").say(text)

    def in_inbox() -> bool:
        items = page.request.get(f"{base}/review", headers={"Accept": "application/json"}).json()["items"]
        return any(i["text"] == text for i in items)
    poll(in_inbox, 30, "the message in the review inbox")
    assert requests.post(stack["functions"].base_url + "/admin/functions/review_export", timeout=10).status_code == 202

    def exported_line() -> dict[str, Any] | None:
        today = dt.datetime.now(dt.timezone.utc).date()
        for day in (today, today - dt.timedelta(days=1)):
            resp = page.request.get(f"{base}/review/exports/{day.isoformat()}")
            lines = [json.loads(x) for x in resp.text().splitlines()] if resp.ok else []
            found = next((x for x in lines if x.get("text") == text), None)
            if found:
                return found
        return None
    line = poll(exported_line, 60, "the item in the day's export")
    relabelled = tmp_path / "relabelled.jsonl"
    relabelled.write_text(json.dumps({**line, "label": "dismiss"}) + "\n", encoding="utf-8")
    page.goto(base + "/review")
    page.click("#review-exports summary")
    page.set_input_files("#review-import input[name=file]", str(relabelled))
    page.click("#review-import button[type=submit]")
    assert "1 dismissed" in flash(page, "imported a relabelled export")
    page.goto(base + "/review?status=dismissed")
    assert "from a relabelled export" in page.locator("#review-items tr", has_text=text).inner_text()
