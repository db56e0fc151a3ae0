"""Accepted by the host: snake_case binding names, 'admin' not as the first route segment, a route that only
contains 'runtime', and an unbound 'context' parameter."""
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="ops/admin", methods=["POST"])
@app.queue_output(arg_name="to_greeting", queue_name="route-greeting", connection="AzureWebJobsStorage")
def ops_admin(req: func.HttpRequest, to_greeting: func.Out[str], context: func.Context) -> str:
    return context.function_name


@app.route(route="my-runtime")
def my_runtime(req: func.HttpRequest) -> str:
    return "ok"
