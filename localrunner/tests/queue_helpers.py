"""Queue helpers shared by the runner's tests: unique queue names, send a text, read what a queue holds."""
import base64
import os

from azure.storage.queue import QueueClient, TextBase64EncodePolicy


def restart_app_env(azurite, **extra):
    """App settings for ``restart_app/`` on queues of its own (``Q_WORK`` -> ``Q_DONE``)."""
    s = os.urandom(4).hex()
    return {"AzureWebJobsStorage": azurite, "Q_WORK": f"t{s}-work", "Q_DONE": f"t{s}-done", **extra}


def send(conn, name, text):
    """Put ``text`` on queue ``name`` (created if missing), base64-encoded as the Functions host expects."""
    q = QueueClient.from_connection_string(conn, name, message_encode_policy=TextBase64EncodePolicy())
    try:
        q.create_queue()
    except Exception:
        pass
    q.send_message(text)


def contents(conn, name):
    """The decoded texts of up to 32 visible messages on ``name``, in queue order ([] if it does not exist)."""
    try:
        return [base64.b64decode(m.content).decode()
                for m in QueueClient.from_connection_string(conn, name).peek_messages(max_messages=32)]
    except Exception:
        return []


def texts(conn, name):
    """:func:`contents`, sorted."""
    return sorted(contents(conn, name))
