"""The `modelport` command."""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from modelport.cli import models, security, services
from modelport.cli.output import client, console, fail, run

app = typer.Typer(
    help="modelport: deploy models behind one authenticated gateway. Start with `modelport up`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="model")
app.add_typer(services.app, name="service")
app.command("predict")(services.predict)
app.add_typer(security.credentials, name="credentials")
app.add_typer(security.apps, name="app")
app.add_typer(security.users, name="user")
app.add_typer(security.projects, name="project")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@app.command()
def up(
    host: str = typer.Option(None, "--host", help="Address to listen on [default: 127.0.0.1, env MODELPORT_HOST]."),
    port: int = typer.Option(None, "--port", "-p", help="Port [default: 8000, env MODELPORT_PORT]."),
    demo: bool = typer.Option(False, "--demo", help="Import the digits example, deploy it 80/20 and show predictions."),
) -> None:
    """Run the platform: management API, gateway and orchestrator on one base URL."""
    import logging

    import uvicorn

    from modelport.gateway.websocket import GatewayWebSocketProtocol
    from modelport.platform import Platform, bootstrap
    from modelport.settings import Settings

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)
    if not _port_free(settings.host, settings.port):
        fail(
            "MP.0003",
            f"Port {settings.port} on {settings.host} is in use.",
            "Stop what uses it or pass --port.",
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("uvicorn.error", "httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    api_url = f"http://{settings.host}:{settings.port}"
    platform = Platform(settings)
    creds = bootstrap(platform.store, settings, api_url)
    config = uvicorn.Config(
        platform.asgi,
        host=settings.host,
        port=settings.port,
        http="httptools",
        ws=GatewayWebSocketProtocol,  # fragments big messages, closes with 1001 on shutdown
        loop="uvloop",
        lifespan="on",
        interface="asgi3",
        proxy_headers=False,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    console.print(f"[bold green]modelport[/] serving on [bold]{api_url}[/]  (API docs {api_url}/docs)")
    console.print(f"Credentials: {settings.credentials_file}  (user {creds.username}, project {creds.project_id})")
    console.print(f"Data: {settings.home}   Stop with Ctrl-C.")
    if demo:
        from modelport.cli.demo import start_demo_thread

        start_demo_thread(server, settings)
    server.run()
    console.print("modelport stopped.")


@app.command()
def gateway(
    port: int = typer.Option(..., "--port", "-p", help="Port to serve /v1/infers/* on."),
    host: str = typer.Option("127.0.0.1", "--host"),
    control_url: str = typer.Option(
        None, "--control-url", help="The platform to follow [default: env MODELPORT_CONTROL_URL, else credentials]."
    ),
) -> None:
    """Run one more gateway process: predictions only, fed by the platform's snapshot feed.

    Needs the platform's MODELPORT_HOME (its secret.key); set MODELPORT_REDIS_URL on every gateway
    and the platform so that QPS limits hold across all of them.
    """
    import json
    import logging

    import uvicorn

    from modelport.gateway.remote import RemoteGateway
    from modelport.gateway.websocket import GatewayWebSocketProtocol
    from modelport.settings import Settings

    settings = Settings()
    url = control_url or settings.control_url
    if not url and settings.credentials_file.exists():
        url = json.loads(settings.credentials_file.read_text()).get("api_url")
    if not url:
        fail("MP.0001", "No control plane to follow.", "Pass --control-url or set MODELPORT_CONTROL_URL.")
    if not _port_free(host, port):
        fail("MP.0003", f"Port {port} on {host} is in use.", "Pick another --port.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app_ = RemoteGateway(settings, url)
    except FileNotFoundError as exc:
        fail("MP.0001", str(exc))
    console.print(f"[bold green]modelport gateway[/] on http://{host}:{port}/v1/infers/…, following {url}")
    uvicorn.run(
        app_,
        host=host,
        port=port,
        http="httptools",
        ws=GatewayWebSocketProtocol,
        loop="uvloop",
        lifespan="on",
        access_log=False,
        log_level="warning",
        proxy_headers=False,
    )


@app.command("run-instance")
def run_instance(
    directory: Path = typer.Argument(..., help="A model package: the directory holding model/."),
    host: str = typer.Option(None, "--host", help="[default: $HOST or 127.0.0.1]"),
    port: int = typer.Option(None, "--port", help="[default: $PORT or 8080]"),
) -> None:
    """Serve one model package alone, as a plain HTTP server (the instance contract)."""
    from modelport.errors import PlatformError
    from modelport.runtime.__main__ import run_instance as serve

    try:
        serve(directory.resolve(), host, port)
    except PlatformError as exc:
        fail(exc.code, exc.message)


@app.command()
def token() -> None:
    """Print a fresh token (for curl: -H "X-Auth-Token: $(modelport token)")."""
    c = client()
    print(run(c.token))


if __name__ == "__main__":
    app()
