"""Starts, but every invocation fails: the function returns a value and has no $return binding."""
import azure.functions as func

app = func.FunctionApp()

SEEN = []


@app.queue_trigger(arg_name="msg", queue_name="%Q_RETURNS%", connection="AzureWebJobsStorage")
def echo(msg: func.QueueMessage) -> str:
    SEEN.append(msg.dequeue_count)
    return "echo:" + msg.get_body().decode("utf-8")  # nowhere to go: the worker fails the invocation
