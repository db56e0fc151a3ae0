"""Outbound clients never follow redirects: keys stay with the host they are meant for (real HTTP servers)."""

from __future__ import annotations

import http.server
import threading
from contextlib import contextmanager

import pytest

from shared.clients.clu import IntentClient
from shared.clients.sendbird import SendBirdClient
from shared.errors import PermanentError
from tests.support.samples import sample_values
from shared.settings import load_settings


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's ``status`` (and a Location to ``target``), recording headers."""

    def _answer(self):
        self.server.seen.append((self.command, self.path, dict(self.headers)))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(self.server.status)
        if self.server.target:
            self.send_header("Location", self.server.target + self.path)
        self.send_header("Content-Type", "application/json")
        body = b'{"message_id": 1}' if self.server.status < 300 else b"{}"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@contextmanager
def server(status: int, target: str = ""):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    srv.status, srv.target, srv.seen = status, target, []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_sendbird_client_does_not_follow_redirects_or_forward_the_api_token(status):
    with server(200) as (elsewhere, elsewhere_url), server(status, elsewhere_url) as (sb, sb_url):
        settings = load_settings({**sample_values(), "SENDBIRD_API_BASE_URL": sb_url}).settings
        with pytest.raises(PermanentError, match=f"\\({status}\\)"):
            SendBirdClient(settings).send_bot_message("ch-1", "hello", "reply-1")
        assert len(sb.seen) == 1 and elsewhere.seen == []  # nothing (no Api-Token) reached the other host


@pytest.mark.parametrize("status", [302, 307])
def test_intent_client_does_not_follow_redirects_or_forward_the_key(status):
    with server(200) as (elsewhere, elsewhere_url), server(status, elsewhere_url) as (svc, svc_url):
        settings = load_settings({**sample_values(), "INTENT_ENDPOINT": svc_url,
                                  "INTENT_API_KEY": "prediction-key-123"}).settings
        with pytest.raises(PermanentError, match=f"\\({status}\\)"):
            IntentClient(settings).analyze("hi", "en", participant_id="u", item_id="1")
        assert len(svc.seen) == 1 and svc.seen[0][2].get("Ocp-Apim-Subscription-Key") == "prediction-key-123"
        assert elsewhere.seen == []


def test_a_2xx_without_an_id_still_counts_as_sent_but_a_1xx_or_3xx_never_does():
    with server(204) as (sb, sb_url):
        settings = load_settings({**sample_values(), "SENDBIRD_API_BASE_URL": sb_url}).settings
        assert SendBirdClient(settings).send_bot_message("ch-1", "hello", "reply-1") == 0
