"""The default visibility lease is the host's 10 minutes; the explicit settings still win."""
from localrunner import Runner


def test_default_lease_is_the_hosts_ten_minutes(azurite, helpers, monkeypatch):
    monkeypatch.delenv("LOCALRUNNER_LEASE_SECONDS", raising=False)
    env = {"AzureWebJobsStorage": azurite, **helpers.unique_queues("lease")}
    with Runner(helpers.SAMPLE_APP, port=0, env_overrides=env) as r:
        assert {listener.lease_seconds for listener in r.listeners} == {600}
    with Runner(helpers.SAMPLE_APP, port=0, env_overrides=dict(env, LOCALRUNNER_LEASE_SECONDS="7")) as r:
        assert {listener.lease_seconds for listener in r.listeners} == {7}
    with Runner(helpers.SAMPLE_APP, port=0, env_overrides=env, lease_seconds=3) as r:
        assert {listener.lease_seconds for listener in r.listeners} == {3}
