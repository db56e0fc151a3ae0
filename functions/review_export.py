"""Timer trigger: the review inbox's daily export to Blob Storage (the cold path of the review inbox).

Schedule: the app setting ``REVIEW_EXPORT_SCHEDULE`` (NCRONTAB, six fields, seconds first; default
``0 5 0 * * *``: 00:05:00 UTC every day, after the day it exports has ended). ``use_monitor`` keeps the schedule
status in the host's storage, so an occurrence missed while the app was down is run at start-up with
``past_due``; ``run_on_startup`` is off (a restart or a scale-out must not export). The function only translates:
:func:`shared.review_export.run` decides which days to write (it catches up every missed day itself) and writes
them. A failure raises, so the host logs the invocation failed; the next occurrence writes the same days again.
"""

from __future__ import annotations

import azure.functions as func

from shared import bootstrap
from shared.review_export import run

#: The app setting holding the schedule (the host resolves ``%...%`` from app settings).
SCHEDULE_SETTING = "REVIEW_EXPORT_SCHEDULE"

bp = func.Blueprint()


@bp.function_name("review_export")
@bp.timer_trigger(arg_name="timer", schedule=f"%{SCHEDULE_SETTING}%", run_on_startup=False, use_monitor=True)
def review_export(timer: func.TimerRequest) -> None:
    run(bootstrap.root().review_export(), past_due=timer.past_due)
