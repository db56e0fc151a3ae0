"""Refused: a route starting with 'runtime' (the check ignores case)."""
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="Runtime/status")
def runtime_status(req: func.HttpRequest) -> str:
    return "ok"
