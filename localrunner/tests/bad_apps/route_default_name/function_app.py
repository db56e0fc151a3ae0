"""Refused: without a route the function name is the route, here 'admin_tools'."""
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route()
def admin_tools(req: func.HttpRequest) -> str:
    return "ok"
