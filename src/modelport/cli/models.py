"""`modelport model import|list|show|delete`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from modelport.cli.output import api_errors, client, console, print_json, styled, table, when

app = typer.Typer(help="Import and manage models (model packages).", no_args_is_help=True)


@app.command("import")
def import_model(
    source: Path = typer.Argument(..., help="Directory holding model/ (config.json + customize_service.py)."),
    name: str = typer.Option(..., "--name", "-n", help="Model name."),
    version: str = typer.Option("0.0.1", "--version", "-v", help="Model version, N.N.N."),
    model_type: str | None = typer.Option(None, "--type", "-t", help="model_type; default: read from config.json."),
    description: str | None = typer.Option(None, "--description"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until published or failed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Import a model package from a local directory."""
    source = source.expanduser().resolve()
    if model_type is None:
        cfg = source / "model" / "config.json"
        try:
            model_type = json.loads(cfg.read_text())["model_type"]
        except (OSError, ValueError, KeyError):
            from modelport.cli.output import fail

            fail("ModelArts.3017", f"Cannot read model_type from {cfg}.", "Pass --type or fix config.json.")
    c = client()
    with api_errors():
        extra = {"description": description} if description else {}
        model_id = c.import_model(name, version, model_type, source, **extra)
        model = c.get_model(model_id)
        if wait:
            with console.status(f"Publishing {name} {version}…", spinner="dots"):
                model = c.wait_model(model_id)
    if as_json:
        print_json(model)
        return
    console.print(f"Model [bold]{name} {version}[/] {styled(model['model_status'])}  id {model_id}")
    if model.get("failed_reason"):
        console.print(f"[red]{model['failed_reason']}[/]")
        raise typer.Exit(1)


@app.command("list")
def list_models(
    name: str | None = typer.Option(None, "--name", help="Filter by name (substring)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List models."""
    c = client()
    with api_errors():
        data = c.list_models(model_name=name)
    if as_json:
        print_json(data)
        return
    rows = [
        [
            m["model_id"],
            m["model_name"],
            m["model_version"],
            m["model_type"],
            styled(m["model_status"]),
            m["model_size"],
            when(m["create_at"]),
        ]
        for m in data["models"]
    ]
    table(
        f"{data['total_count']} model(s)",
        ["ID", "Name", "Version", "Type", "Status", "Size", "Created"],
        rows,
    )


@app.command("show")
def show_model(
    model: str = typer.Argument(..., help="Model id."), as_json: bool = typer.Option(False, "--json")
) -> None:
    """Show one model."""
    c = client()
    with api_errors():
        m = c.get_model(model)
    if as_json:
        print_json(m)
        return
    for key in (
        "model_id",
        "model_name",
        "model_version",
        "model_type",
        "model_status",
        "failed_reason",
        "model_size",
        "model_sha256",
        "source_location",
    ):
        if m.get(key) is not None:
            console.print(f"[bold]{key}[/]: {styled(m[key]) if key == 'model_status' else m[key]}")


@app.command("delete")
def delete_model(
    model: str = typer.Argument(..., help="Model id."),
    cascade: bool = typer.Option(False, "--cascade", help="Delete every version of this model's name."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Delete a model (refused while a service uses it)."""
    c = client()
    with api_errors():
        out = c.delete_model(model, cascade=cascade)
    if as_json:
        print_json(out)
    else:
        console.print(f"Deleted {model}.")
