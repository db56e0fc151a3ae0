"""host.json values overridden by app settings: AzureFunctionsJobHost__extensions__queues__*, ...__functionTimeout."""
import json

import pytest

from localrunner import ConfigError, Runner
from localrunner.config import load_host_json


def _host(tmp_path, data=None):
    (tmp_path / "host.json").write_text(json.dumps(data or {
        "version": "2.0", "functionTimeout": "00:10:00",
        "extensions": {"queues": {"maxDequeueCount": 5, "batchSize": 16}}}))
    return str(tmp_path)


def test_app_setting_overrides_host_json(tmp_path):
    root = _host(tmp_path)
    env = {"AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "2",
           "AZUREFUNCTIONSJOBHOST__EXTENSIONS__QUEUES__BATCHSIZE": "4",  # names are case-insensitive
           "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:07",
           "AzureFunctionsJobHost__extensions__queues__messageEncoding": "none",
           "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:03",
           "AzureFunctionsJobHost__functionTimeout": "00:00:05",
           "OTHER_SETTING": "x"}
    cfg = load_host_json(root, env)
    q = cfg.queues
    assert (q.max_dequeue_count, q.batch_size, q.new_batch_threshold) == (2, 4, 2)
    assert (q.visibility_timeout, q.message_encoding, q.max_polling_interval) == (7.0, "none", 3.0)
    assert cfg.function_timeout == 5.0
    assert load_host_json(root, {}).queues.max_dequeue_count == 5  # without overrides: host.json
    assert load_host_json(root, {"AzureFunctionsJobHost__functionTimeout": "-1"}).function_timeout is None
    # host.json without an extensions section at all
    (tmp_path / "bare").mkdir()
    root2 = _host(tmp_path / "bare", {"version": "2.0"})
    assert load_host_json(root2, {"AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "3"}
                          ).queues.max_dequeue_count == 3


@pytest.mark.parametrize("name, value", [
    ("AzureFunctionsJobHost__extensions__queues__maxDequeueCount", "0"),
    ("AzureFunctionsJobHost__extensions__queues__maxDequeueCount", "many"),
    ("AzureFunctionsJobHost__extensions__queues__batchSize", "64"),
    ("AzureFunctionsJobHost__extensions__queues__messageEncoding", "utf8"),
    ("AzureFunctionsJobHost__extensions__queues__maxPollingInterval", "00:00:00.010"),
    ("AzureFunctionsJobHost__functionTimeout", "soon"),
    ("azurefunctionsjobhost__functiontimeout", "00:00:00"),
])
def test_bad_override_is_refused_naming_the_setting(tmp_path, name, value):
    with pytest.raises(ConfigError) as ei:
        load_host_json(_host(tmp_path), {name: value})
    assert name in str(ei.value) and repr(value) in str(ei.value)


def test_override_from_local_settings_values(tmp_path):
    (tmp_path / "function_app.py").write_text(
        "import azure.functions as func\napp = func.FunctionApp()\n"
        "@app.route(route='x')\ndef x(req: func.HttpRequest) -> str:\n    return 'x'\n")
    _host(tmp_path)
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": {
        "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "3",
        "AzureFunctionsJobHost__functionTimeout": "00:00:09"}}))
    with Runner(str(tmp_path), port=0) as r:
        assert r.host_config.queues.max_dequeue_count == 3
        assert r.host_config.function_timeout == 9.0
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": {
        "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "-2"}}))
    with pytest.raises(ConfigError, match="AzureFunctionsJobHost__extensions__queues__maxDequeueCount"):
        Runner(str(tmp_path), port=0).start()
    # the environment wins over local.settings.json, as for every app setting
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": {
        "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "3"}}))
    with Runner(str(tmp_path), port=0,
                env_overrides={"AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "4"}) as r:
        assert r.host_config.queues.max_dequeue_count == 4
