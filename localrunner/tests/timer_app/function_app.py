"""Timer functions for localrunner's timer tests. Each invocation appends one JSON line to the file named by the
app setting TIMER_LOG (function, past_due, schedule status, the worker's pid)."""
import json
import os

import azure.functions as func

app = func.FunctionApp()


def _record(name: str, timer: func.TimerRequest) -> None:
    line = {"function": name, "past_due": timer.past_due, "status": timer.schedule_status,
            "schedule": timer.schedule, "pid": os.getpid()}
    with open(os.environ["TIMER_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


@app.function_name("frequent")
@app.timer_trigger(arg_name="timer", schedule="%FREQUENT_SCHEDULE%", use_monitor=False)
def frequent(timer: func.TimerRequest) -> None:
    _record("frequent", timer)


@app.function_name("nightly")
@app.timer_trigger(arg_name="timer", schedule="%NIGHTLY_SCHEDULE%", use_monitor=True,
                   run_on_startup=os.environ.get("NIGHTLY_RUN_ON_STARTUP") == "1")
def nightly(timer: func.TimerRequest) -> None:
    _record("nightly", timer)
    if os.environ.get("NIGHTLY_FAILS") == "1":
        raise RuntimeError("nightly failed on purpose")
