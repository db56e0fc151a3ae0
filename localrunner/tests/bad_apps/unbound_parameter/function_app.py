"""Refused by the worker: a parameter without a binding; its default value does not exempt it."""
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="report")
def report(req: func.HttpRequest, verbose: bool = False) -> str:
    return "long report" if verbose else "report"
