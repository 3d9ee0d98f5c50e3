"""CLI for who may do what: `modelport credentials|app|user|project …`."""

from __future__ import annotations

from typing import Any

import typer

from modelport.cli.output import api_errors, client, console, print_json, table, when

credentials = typer.Typer(help="Your AK/SK pairs for signed requests (SDK-HMAC-SHA256).", no_args_is_help=True)
apps = typer.Typer(help="Apps: AppKey/AppSecret and AppCodes for calling bound services.", no_args_is_help=True)
codes = typer.Typer(help="AppCodes of an app (sent as X-Apig-AppCode).", no_args_is_help=True)
users = typer.Typer(help="Users of the platform (administrators).", no_args_is_help=True)
projects = typer.Typer(help="Projects and their members' roles.", no_args_is_help=True)
apps.add_typer(codes, name="codes")

JSON = typer.Option(False, "--json", help="Print JSON (for scripts).")


def _out(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        print_json(data)
    else:
        console.print(text)


# ---- credentials --------------------------------------------------------------------------------


@credentials.command("create")
def credentials_create(
    description: str = typer.Option("", "--description", "-d"),
    user: str = typer.Option(None, "--user", help="Another user's name or id (administrators)."),
    as_json: bool = JSON,
) -> None:
    """Create an AK/SK pair. The SK is shown only now: store it safely."""
    c = client()
    with api_errors():
        user_id = c.find_user(user)["id"] if user else None
        cred = c.create_credential(description, user_id)
    _out(
        cred,
        as_json,
        f"Access key [bold]{cred['access']}[/]\nSecret key [bold]{cred['secret']}[/]\n"
        "[yellow]The secret key is shown only now.[/] Use it with "
        "MODELPORT_ACCESS_KEY / MODELPORT_SECRET_KEY or Client(access_key=…, secret_key=…).",
    )


@credentials.command("list")
def credentials_list(as_json: bool = JSON) -> None:
    """Your AK/SK pairs (without secrets)."""
    c = client()
    with api_errors():
        creds = c.list_credentials()
    if as_json:
        print_json(creds)
        return
    table(
        None,
        ["access key", "status", "created", "description"],
        [[k["access"], k["status"], when(k["create_time"]), k["description"]] for k in creds],
    )


@credentials.command("delete")
def credentials_delete(access_key: str = typer.Argument(...), as_json: bool = JSON) -> None:
    """Delete an AK/SK pair; requests signed with it are refused from now on."""
    c = client()
    with api_errors():
        c.delete_credential(access_key)
    _out({"access": access_key, "deleted": True}, as_json, f"Deleted access key {access_key}.")


# ---- apps ---------------------------------------------------------------------------------------


@apps.command("create")
def app_create(
    name: str = typer.Argument(...),
    description: str = typer.Option("", "--description", "-d"),
    as_json: bool = JSON,
) -> None:
    """Create an app with an AppKey/AppSecret (the secret is shown only now)."""
    c = client()
    with api_errors():
        app = c.create_app(name, description)
    _out(
        app,
        as_json,
        f"App [bold]{app['name']}[/] ({app['app_id']})\nAppKey    {app['app_key']}\nAppSecret {app['app_secret']}\n"
        "[yellow]The AppSecret is shown only now.[/] Bind the app to a service: modelport app bind APP SERVICE",
    )


@apps.command("list")
def app_list(as_json: bool = JSON) -> None:
    c = client()
    with api_errors():
        items = c.list_apps()
    if as_json:
        print_json(items)
        return
    table(
        None,
        ["name", "app id", "AppKey", "AppCodes", "services"],
        [[a["name"], a["app_id"], a["app_key"], len(a["app_codes"]), ", ".join(a["services"])] for a in items],
    )


@apps.command("delete")
def app_delete(app: str = typer.Argument(..., help="App name or id."), as_json: bool = JSON) -> None:
    """Delete an app: its AppKey and AppCodes stop working at once."""
    c = client()
    with api_errors():
        found = c.find_app(app)
        c.delete_app(found["app_id"])
    _out({"app_id": found["app_id"], "deleted": True}, as_json, f"Deleted app {found['name']}.")


def _bind(app: str, service: str, bind: bool, as_json: bool) -> None:
    c = client()
    with api_errors():
        found = c.find_app(app)
        svc = c.find_service(service)
        if bind:
            c.bind_app(found["app_id"], svc["service_id"])
        else:
            c.unbind_app(found["app_id"], svc["service_id"])
    verb = "bound to" if bind else "unbound from"
    data = {"app_id": found["app_id"], "service_id": svc["service_id"], "bound": bind}
    _out(data, as_json, f"App {found['name']} {verb} service {svc['service_name']}.")


@apps.command("bind")
def app_bind(app: str = typer.Argument(...), service: str = typer.Argument(...), as_json: bool = JSON) -> None:
    """Let the app call the service (AppCode or AppKey/AppSecret signature)."""
    _bind(app, service, True, as_json)


@apps.command("unbind")
def app_unbind(app: str = typer.Argument(...), service: str = typer.Argument(...), as_json: bool = JSON) -> None:
    _bind(app, service, False, as_json)


@codes.command("add")
def code_add(
    app: str = typer.Argument(...),
    code: str = typer.Option(None, "--code", help="Your own AppCode (32-180 characters); generated if omitted."),
    as_json: bool = JSON,
) -> None:
    """Add an AppCode (shown only now); call with -H 'X-Apig-AppCode: CODE'."""
    c = client()
    with api_errors():
        found = c.find_app(app)
        made = c.add_app_code(found["app_id"], code)
    _out(made, as_json, f"AppCode {made['id']}: [bold]{made['app_code']}[/]\n[yellow]Shown only now.[/]")


@codes.command("list")
def code_list(app: str = typer.Argument(...), as_json: bool = JSON) -> None:
    c = client()
    with api_errors():
        found = c.find_app(app)
    if as_json:
        print_json(found["app_codes"])
        return
    table(
        None,
        ["id", "starts with", "created"],
        [[x["id"], x["hint"], when(x["created_at"])] for x in found["app_codes"]],
    )


@codes.command("remove")
def code_remove(app: str = typer.Argument(...), code_id: str = typer.Argument(...), as_json: bool = JSON) -> None:
    c = client()
    with api_errors():
        found = c.find_app(app)
        c.remove_app_code(found["app_id"], code_id)
    _out({"id": code_id, "deleted": True}, as_json, f"Removed AppCode {code_id}.")


# ---- users --------------------------------------------------------------------------------------


@users.command("create")
def user_create(
    name: str = typer.Argument(...),
    password: str = typer.Option(..., "--password", prompt=True, hide_input=True, confirmation_prompt=True),
    admin: bool = typer.Option(False, "--admin", help="Platform administrator (manages users and projects)."),
    as_json: bool = JSON,
) -> None:
    c = client()
    with api_errors():
        user = c.create_user(name, password, admin)
    _out(
        user,
        as_json,
        f"Created user {user['name']} ({user['id']}). Add them to a project: modelport project add-member",
    )


@users.command("list")
def user_list(as_json: bool = JSON) -> None:
    c = client()
    with api_errors():
        items = c.list_users()
    if as_json:
        print_json(items)
        return
    table(
        None,
        ["name", "id", "admin", "created"],
        [[u["name"], u["id"], u["is_admin"], when(u["created_at"])] for u in items],
    )


@users.command("delete")
def user_delete(user: str = typer.Argument(...), as_json: bool = JSON) -> None:
    """Delete a user with their memberships and AK/SK pairs; their tokens stop working."""
    c = client()
    with api_errors():
        found = c.find_user(user)
        c.delete_user(found["id"])
    _out({"id": found["id"], "deleted": True}, as_json, f"Deleted user {found['name']}.")


@users.command("password")
def user_password(
    user: str = typer.Argument(None, help="Whose (administrators); default: yours."),
    password: str = typer.Option(..., "--password", prompt="New password", hide_input=True, confirmation_prompt=True),
    original: str = typer.Option(None, "--original", help="Your current password (for your own)."),
    as_json: bool = JSON,
) -> None:
    """Change a password; every token of that user is revoked."""
    c = client()
    with api_errors():
        found = c.find_user(user or c.username or "")
        own = found["name"] == c.username
        c.change_password(found["id"], password, original or (c._password if own else None))
    _out(
        {"id": found["id"], "changed": True}, as_json, f"Password of {found['name']} changed; their tokens are revoked."
    )


# ---- projects -----------------------------------------------------------------------------------


@projects.command("create")
def project_create(name: str = typer.Argument(...), as_json: bool = JSON) -> None:
    c = client()
    with api_errors():
        project = c.create_project(name)
    _out(project, as_json, f"Created project {project['name']} ({project['id']}); you are its admin.")


@projects.command("list")
def project_list(as_json: bool = JSON) -> None:
    c = client()
    with api_errors():
        items = c.list_projects()
    if as_json:
        print_json(items)
        return
    table(None, ["name", "id", "your role"], [[p["name"], p["id"], p["role"]] for p in items])


@projects.command("members")
def project_members(project: str = typer.Argument(...), as_json: bool = JSON) -> None:
    c = client()
    with api_errors():
        found = c.find_project(project)
        items = c.list_members(found["id"])
    if as_json:
        print_json(items)
        return
    table(found["name"], ["user", "id", "role"], [[u["name"], u["id"], u["role"]] for u in items])


@projects.command("add-member")
def project_add_member(
    project: str = typer.Argument(...),
    user: str = typer.Argument(...),
    role: str = typer.Option("developer", "--role", help="admin, developer or viewer."),
    as_json: bool = JSON,
) -> None:
    """Make a user a member with a role (or change their role)."""
    c = client()
    with api_errors():
        found = c.find_project(project)
        member = c.find_user(user)
        c.add_member(found["id"], member["id"], role)
    data = {"project_id": found["id"], "user_id": member["id"], "role": role}
    _out(data, as_json, f"{member['name']} is {role} of {found['name']}.")


@projects.command("remove-member")
def project_remove_member(
    project: str = typer.Argument(...), user: str = typer.Argument(...), as_json: bool = JSON
) -> None:
    c = client()
    with api_errors():
        found = c.find_project(project)
        member = c.find_user(user)
        c.remove_member(found["id"], member["id"])
    data = {"project_id": found["id"], "user_id": member["id"], "removed": True}
    _out(data, as_json, f"{member['name']} is no longer a member of {found['name']}.")
