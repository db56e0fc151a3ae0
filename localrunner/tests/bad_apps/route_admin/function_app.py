"""Refused: an app route under the host's built-in admin API."""
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="health")
def health(req: func.HttpRequest) -> str:
    return "ok"


@app.route(route="admin/poison", methods=["GET"])
def poison_list(req: func.HttpRequest) -> str:
    return "[]"
