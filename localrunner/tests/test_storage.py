"""The host's queue client (storage.py) against Azurite, checked with the official SDK on the other side."""
import base64
import os

import pytest
from azure.storage.queue import QueueClient as SdkQueueClient

from localrunner.storage import Account, Storage, StorageError


def _name():
    return f"st{os.urandom(4).hex()}"


def test_operations_round_trip_with_the_sdk(azurite):
    storage = Storage()
    q = storage.client(azurite, _name())
    assert q.create_queue() is True and q.create_queue() is False
    text = 'a <b> & "c" 한글 ' + base64.b64encode(b"\x00\xff").decode()
    q.send_message(text)
    sdk = SdkQueueClient.from_connection_string(azurite, q.queue_name)
    assert [m.content for m in sdk.peek_messages()] == [text]
    sdk.send_message("from the sdk")
    assert q.approximate_message_count() == 2
    got = q.receive_messages(5, 30)
    assert sorted(m.content for m in got) == sorted([text, "from the sdk"])
    assert all(m.dequeue_count == 1 and m.inserted_on and m.expires_on and m.next_visible_on for m in got)
    first, second = got
    new_receipt = q.update_message(first.id, first.pop_receipt, 0)  # visible again at once
    assert new_receipt and new_receipt != first.pop_receipt
    with pytest.raises(StorageError) as stale:
        q.delete_message(first.id, first.pop_receipt)  # the old pop receipt no longer holds the message
    assert stale.value.status in (400, 404)
    q.delete_message(second.id, second.pop_receipt)
    again = q.receive_messages(5, 30)
    assert [(m.content, m.dequeue_count) for m in again] == [(first.content, 2)]
    q.delete_message(again[0].id, again[0].pop_receipt)
    assert q.receive_messages(5, 30) == []
    storage.close()


def test_missing_queue_is_an_error_with_its_code(azurite):
    with pytest.raises(StorageError) as exc:
        Storage().client(azurite, _name()).receive_messages(1, 1)
    assert exc.value.status == 404 and exc.value.error_code == "QueueNotFound"


def test_connection_strings():
    dev = Account.from_connection_string("UseDevelopmentStorage=true")
    assert (dev.name, dev.endpoint) == ("devstoreaccount1", "http://127.0.0.1:10001/devstoreaccount1")
    acct = Account.from_connection_string("DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=a2V5;"
                                          "EndpointSuffix=core.windows.net")
    assert (acct.endpoint, acct.key) == ("https://acme.queue.core.windows.net", b"key")
    sas = Account.from_connection_string("QueueEndpoint=https://acme.queue.core.windows.net/;"
                                         "SharedAccessSignature=?sv=2020&sig=x")
    assert (sas.name, sas.sas, sas.key) == ("acme", "sv=2020&sig=x", None)
    with pytest.raises(ValueError):
        Account.from_connection_string("AccountName=acme")


def test_connections_the_server_closed_are_not_reused(azurite):
    storage = Storage()
    q = storage.client(azurite, _name())
    q.create_queue()
    pool = q._pool
    conn, _ = pool.get()
    conn.connect()
    conn.sock.shutdown(2)  # as if the server had closed the idle keep-alive connection
    pool.put(conn)
    q.send_message("after a dropped connection")  # neither fails nor reuses it
    assert [m.content for m in q.receive_messages(1, 1)] == ["after a dropped connection"]
    storage.close()
