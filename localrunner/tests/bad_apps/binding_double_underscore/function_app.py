"""Refused: a binding name with a double underscore."""
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="echo", trigger_arg_name="req__in")
def echo(req__in: func.HttpRequest) -> str:
    return req__in.get_body().decode()
