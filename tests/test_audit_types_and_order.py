"""The Audit Log's Type menu lists every action the code emits, names unknown types, and its
exports come in the page's order (newest first)."""

from __future__ import annotations

import ast
import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from portal.db import get_session
from portal.events import emit
from portal.models import Organization

ROOT = Path(__file__).resolve().parent.parent
HX = {"HX-Request": "true"}


def _module_constants(tree: ast.Module) -> dict[str, ast.expr]:
    """Module-level ``NAME = value`` assignments."""
    found: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value
    return found


@dataclass(frozen=True)
class Emitter:
    """A function that passes one of its parameters on to emit() as the action."""

    index: int
    name: str
    default: ast.expr | None


@dataclass
class CallSite:
    """A call in the code, with the functions it sits in (innermost last)."""

    node: ast.Call
    functions: list[ast.FunctionDef | ast.AsyncFunctionDef]
    constants: dict[str, ast.expr]
    where: str


def _call_sites() -> list[CallSite]:
    """Every call in portal/ and jobs/, with its enclosing functions."""
    sites: list[CallSite] = []

    def visit(node: ast.AST, stack: list, constants: dict, path: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            stack = [*stack, node]
        if isinstance(node, ast.Call):
            sites.append(CallSite(node, stack, constants, f"{path}:{node.lineno}"))
        for child in ast.iter_child_nodes(node):
            visit(child, stack, constants, path)

    for path in sorted([*ROOT.glob("portal/**/*.py"), *ROOT.glob("jobs/**/*.py")]):
        tree = ast.parse(path.read_text(), str(path))
        visit(tree, [], _module_constants(tree), str(path.relative_to(ROOT)))
    return sites


def _emitter_of(name: str, functions: list) -> tuple[str, Emitter] | None:
    """The enclosing function (innermost first) that has a parameter of this name."""
    for func in reversed(functions):
        params = [*func.args.posonlyargs, *func.args.args]
        names = [a.arg for a in params]
        if name in names:
            index = names.index(name)
            defaults = func.args.defaults
            offset = len(params) - len(defaults)
            default = defaults[index - offset] if index >= offset else None
            return func.name, Emitter(index, name, default)
        kwonly = [a.arg for a in func.args.kwonlyargs]
        if name in kwonly:
            default = func.args.kw_defaults[kwonly.index(name)]
            return func.name, Emitter(-1, name, default)
    return None


def emitted_actions() -> dict[str, str]:
    """Every action passed to emit() in portal/ and jobs/, also through functions that pass
    a parameter on as the action, with where it is named."""
    sites = _call_sites()
    emitters = {"emit": Emitter(1, "action", None)}
    found: dict[str, str] = {}
    unreadable: list[str] = []

    def resolve(arg: ast.expr | None, site: CallSite) -> None:
        if arg is None or (isinstance(arg, ast.Constant) and arg.value is None):
            return
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            found.setdefault(arg.value, site.where)
        elif isinstance(arg, ast.IfExp):
            resolve(arg.body, site)
            resolve(arg.orelse, site)
        elif isinstance(arg, ast.Name) and (passed := _emitter_of(arg.id, site.functions)):
            emitters.setdefault(*passed)
        elif isinstance(arg, ast.Name) and arg.id in site.constants:
            resolve(site.constants[arg.id], site)
        elif (
            isinstance(arg, ast.Subscript)
            and isinstance(arg.value, ast.Name)
            and isinstance(site.constants.get(arg.value.id), ast.Dict)
        ):
            for value in site.constants[arg.value.id].values:  # type: ignore[union-attr]
                resolve(value, site)
        else:
            unreadable.append(f"{site.where}: {ast.unparse(arg)}")

    seen = -1
    while seen != len(emitters):  # a function found to pass its action on makes more callers
        seen = len(emitters)
        for site in sites:
            func = site.node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            emitter = emitters.get(name or "")
            if emitter is None:
                continue
            args = site.node.args
            arg = args[emitter.index] if 0 <= emitter.index < len(args) else None
            if arg is None:
                keyword = next((k.value for k in site.node.keywords if k.arg == emitter.name), None)
                arg = keyword if keyword is not None else emitter.default
            resolve(arg, site)
    assert not unreadable, f"actions the Type menu test cannot read: {unreadable}"
    return found


def menu_types(html: str) -> list[str]:
    """The values offered by the Type menu of the page."""
    select_html = re.search(r'<select id="audit-type".*?</select>', html, re.S)
    assert select_html, "no Type menu"
    return re.findall(r'<option value="([^"]*)"', select_html.group(0))


def test_the_type_menu_offers_every_action_the_code_emits(login_as, orgs: dict) -> None:
    emitted = emitted_actions()
    # The scan sees emits in jobs/ and behind constants too, or it would prove nothing.
    assert {"BYOK.rotation_progress", "encryption_key.decrypt_failed", "auth.login"} <= set(emitted)
    offered = set(menu_types(login_as("admin_a").get("/settings/audit").get_data(as_text=True)))
    missing = {a: w for a, w in emitted.items() if a not in offered}
    assert not missing, f"emitted but not in the Type menu: {missing}"
    for action in emitted:
        assert action.split(".", 1)[0] in offered, f"{action}'s category is not offered"


@pytest.mark.parametrize("kind", ["BYOK.future_thing", "Nonsense", "auth.login_failed.extra"])
def test_an_unknown_type_is_named_as_unknown_not_silently_empty(
    login_as, orgs: dict, kind: str
) -> None:
    client = login_as("admin_a")
    for headers in ({}, HX):
        response = client.get(f"/settings/audit?type={kind}", headers=headers)
        assert response.status_code == 200
        html = response.get_data(as_text=True)
        assert f"“{kind}” is not a type of event the portal records" in html, html
        assert "Choose a type from the Type menu" in html


def test_a_known_type_with_no_events_is_not_called_unknown(login_as, orgs: dict) -> None:
    html = login_as("admin_a").get("/settings/audit?type=BYOK.rotation_failed").get_data(True)
    assert "No events match these filters." in html
    assert "is not a type of event" not in html


def _seed(app: Flask, count: int) -> list[int]:
    """Emit ``count`` events for org A; their ids, oldest first."""
    with app.app_context():
        db = get_session()
        org = db.scalar(select(Organization).where(Organization.slug == "org-a"))
        ids = []
        for n in range(count):
            event = emit(db, "BYOK.key_test", actor="cli", company_id=org.id, details={"n": n})
            db.flush()
            ids.append(event.id)
        db.commit()
    return ids


@pytest.mark.parametrize("query", ["", "type=BYOK", "from=2000-01-01", "actor=cli"])
def test_exports_are_newest_first_like_the_page(
    app: Flask, login_as, orgs: dict, query: str
) -> None:
    _seed(app, 7)
    client = login_as("auditor_a")
    page = client.get(f"/settings/audit?{query}").get_data(as_text=True)
    shown = [int(i) for i in re.findall(r'data-event-id="(\d+)"', page)]
    assert "newest first" in page and "newest first, as listed here" in page
    jsonl = client.get(f"/settings/audit/export.jsonl?{query}").get_data(as_text=True)
    by_jsonl = [json.loads(line)["id"] for line in jsonl.splitlines()]
    text = client.get(f"/settings/audit/export.csv?{query}").get_data(as_text=True)
    by_csv = [int(row["id"]) for row in csv.DictReader(io.StringIO(text))]
    for ids in (by_jsonl, by_csv):
        assert ids == sorted(ids, reverse=True)
        assert [i for i in ids if i in shown] == shown  # the exports add their own records
