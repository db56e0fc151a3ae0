"""Azure Functions app (Python v2 programming model): wiring only.

Stages (see README.md): webhook intake (HTTP) -> intent stage (queue) ->
branch handlers (one queue each) -> reply sender (queue); review capture (queue, off
the hot path: the review inbox of the bot team's console); review export (timer: the inbox's
daily JSONL files in Blob Storage for offline relabelling). Settings are loaded
and validated here, at start-up, so a missing or bad app setting fails the
host's indexing with a message naming it.
"""

import azure.functions as func

from functions import (branch_handlers, dead_letters, intake, intent_stage, poison_admin, reply_sender,
                       review_capture, review_export)
from shared.settings import get_config

get_config()

app = func.FunctionApp()
for blueprint in (intake.bp, intent_stage.bp, branch_handlers.bp, reply_sender.bp, dead_letters.bp, poison_admin.bp,
                  review_capture.bp, review_export.bp):
    app.register_functions(blueprint)
