"""LOCALRUNNER_CHAOS_SKIP_DELETE_RATE: a function that succeeds but whose message is not deleted."""

import pytest

from localrunner.tests.queue_helpers import send as _send, contents as _contents
from localrunner import ConfigError, Runner


def test_skip_delete_redelivers_after_lease_with_outputs_flushed(azurite, helpers):
    env = {"AzureWebJobsStorage": azurite, **helpers.unique_queues("chaos"),
           "LOCALRUNNER_CHAOS_SKIP_DELETE_RATE": "1", "LOCALRUNNER_LEASE_SECONDS": "1"}
    with Runner(helpers.SAMPLE_APP, port=0, env_overrides=env) as r:
        assert r.chaos_skip_delete_rate == 1.0
        _send(azurite, env["Q_RET_IN"], "x")
        # never deleted: invoked on attempts 1..3 (maxDequeueCount 3 in the sample host.json), each time the
        # output binding was flushed; the 4th receive exceeds maxDequeueCount and moves it to the poison queue
        helpers.wait_for(lambda: r.function_stats("echo_return").get("poisoned") == 1, 20, what="poisoned")
        st = r.function_stats("echo_return")
        assert st["successes"] == 3 and st["chaos_skipped_deletes"] == 3 and st["failures"] == 0
        assert _contents(azurite, env["Q_RET_OUT"]) == ["echo:x"] * 3
        assert _contents(azurite, env["Q_RET_IN"] + "-poison") == ["x"]
        assert r.stats()["functions"]["echo_return"]["chaos_skipped_deletes"] == 3


def test_rate_zero_deletes_as_usual(azurite, helpers):
    env = {"AzureWebJobsStorage": azurite, **helpers.unique_queues("nochaos"),
           "LOCALRUNNER_CHAOS_SKIP_DELETE_RATE": "0", "LOCALRUNNER_LEASE_SECONDS": "1"}
    with Runner(helpers.SAMPLE_APP, port=0, env_overrides=env) as r:
        _send(azurite, env["Q_RET_IN"], "y")
        helpers.wait_for(lambda: r.function_stats("echo_return").get("successes") == 1, 10, what="success")
        helpers.wait_for(lambda: _contents(azurite, env["Q_RET_OUT"]) == ["echo:y"], 5, what="output")
        import time
        time.sleep(2.5)  # longer than the lease: nothing comes back
        st = r.function_stats("echo_return")
        assert st["invocations"] == 1 and "chaos_skipped_deletes" not in st


@pytest.mark.parametrize("value", ["1.5", "-0.1", "often"])
def test_bad_rate_is_a_config_error(azurite, helpers, value):
    env = {"AzureWebJobsStorage": azurite, **helpers.unique_queues("bad"), "LOCALRUNNER_CHAOS_SKIP_DELETE_RATE": value}
    with pytest.raises(ConfigError, match="LOCALRUNNER_CHAOS_SKIP_DELETE_RATE"):
        Runner(helpers.SAMPLE_APP, port=0, env_overrides=env).start()
