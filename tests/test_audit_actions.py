"""Every audit event is emitted under an ``Action`` member, and the Audit Log knows them all.

An AST scan of portal/ and jobs/ follows the action argument of every emit() call, also
through functions that pass a parameter on as the action (audit_refusal, audits_refusals,
the CLI's and the wizard's refusal helpers), and refuses anything but ``Action.X``, a name
explicitly typed ``Action``, or a module-level table whose values are all ``Action.X``.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from portal.audit.actions import Action, Category
from portal.audit.filters import ACTIONS, CATEGORIES, load_page, parse_filters
from portal.db import get_session
from portal.events import emit
from portal.models import Organization

ROOT = Path(__file__).resolve().parent.parent
FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
# An annotation that says "an Action" (optionally None): Action, Action | None, "Action".
_ACTION_TYPE = re.compile(r"(\w+\.)*Action( \| None)?|None \| (\w+\.)*Action|Optional\[Action\]")


@dataclass(frozen=True)
class Emitter:
    """A function whose parameter (by position, -1 if keyword-only, and name) is an action."""

    index: int
    name: str


@dataclass
class Site:
    """A call in the scanned code, with the functions it sits in (innermost last)."""

    node: ast.Call
    functions: list[FunctionNode]
    tables: dict[str, ast.Dict]
    where: str


@dataclass
class Scan:
    """What the scan found: bad action arguments, and the Action members emitted."""

    violations: list[str] = field(default_factory=list)
    members: set[str] = field(default_factory=set)
    emit_calls: int = 0


def _tables(tree: ast.Module) -> dict[str, ast.Dict]:
    """Module-level ``NAME = {...}`` dict literals (a lookup table of actions may be one)."""
    found: dict[str, ast.Dict] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Dict):
                found[target.id] = node.value
    return found


def _sites(sources: dict[str, str]) -> list[Site]:
    """Every call in the sources, with its enclosing functions (decorators sit outside)."""
    sites: list[Site] = []

    def visit(node: ast.AST, stack: list[FunctionNode], tables: dict, path: str) -> None:
        if isinstance(node, ast.Call):
            sites.append(Site(node, stack, tables, f"{path}:{node.lineno}"))
        if isinstance(node, FunctionNode):
            outer = [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]
            for child in filter(None, outer):
                visit(child, stack, tables, path)
            for child in node.body:
                visit(child, [*stack, node], tables, path)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, stack, tables, path)

    for path, text in sources.items():
        tree = ast.parse(text, path)
        visit(tree, [], _tables(tree), path)
    return sites


def _is_member(node: ast.expr) -> bool:
    """Tell whether an expression is ``Action.X``."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Action"
    )


def _typed(annotation: ast.expr | None) -> bool:
    """Tell whether an annotation types a name as Action (or Action | None)."""
    if annotation is None:
        return False
    text = annotation.value if isinstance(annotation, ast.Constant) else ast.unparse(annotation)
    return isinstance(text, str) and _ACTION_TYPE.fullmatch(text) is not None


def _local_typed(func: FunctionNode, name: str) -> bool:
    """Tell whether a function body declares ``name: Action = ...`` (nested defs aside)."""
    todo: list[ast.AST] = list(func.body)
    while todo:
        node = todo.pop()
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
            and _typed(node.annotation)
        ):
            return True
        if not isinstance(node, FunctionNode | ast.Lambda | ast.ClassDef):
            todo.extend(ast.iter_child_nodes(node))
    return False


def _parameter(name: str, functions: list[FunctionNode]) -> tuple[FunctionNode, Emitter, bool]:
    """The innermost enclosing function binding ``name``: (it, the parameter, typed Action?)."""
    for func in reversed(functions):
        positional = [*func.args.posonlyargs, *func.args.args]
        for index, arg in enumerate(positional):
            if arg.arg == name:
                return func, Emitter(index, name), _typed(arg.annotation)
        for arg in func.args.kwonlyargs:
            if arg.arg == name:
                return func, Emitter(-1, name), _typed(arg.annotation)
        if _local_typed(func, name):
            return func, Emitter(-2, name), True  # a typed local passes nothing on to callers
    raise LookupError(name)


def _argument(site: Site, emitter: Emitter) -> ast.expr | None:
    """The expression a call passes for an emitter's action parameter, if any."""
    args = site.node.args
    if 0 <= emitter.index < len(args) and not any(isinstance(a, ast.Starred) for a in args):
        return args[emitter.index]
    return next((k.value for k in site.node.keywords if k.arg == emitter.name), None)


def scan(sources: dict[str, str]) -> Scan:
    """Check the action argument of every emit() and of every function that passes one on."""
    sites = _sites(sources)
    emitters = {"emit": Emitter(1, "action")}
    result = Scan()
    bad: dict[str, str] = {}

    def check(arg: ast.expr | None, site: Site) -> None:
        if arg is None or (isinstance(arg, ast.Constant) and arg.value is None):
            return  # an optional action left out: nothing is emitted under it
        if _is_member(arg):
            result.members.add(arg.attr)  # type: ignore[attr-defined]
        elif isinstance(arg, ast.IfExp):
            check(arg.body, site)
            check(arg.orelse, site)
        elif isinstance(arg, ast.Name):
            try:
                func, param, typed = _parameter(arg.id, site.functions)
            except LookupError:
                bad[site.where] = f"{site.where}: {arg.id} is not a parameter typed Action"
                return
            if param.index != -2:
                emitters.setdefault(func.name, param)
            if not typed:
                bad[site.where] = (
                    f"{site.where}: parameter {arg.id} of {func.name}() is not typed Action"
                )
        elif (
            isinstance(arg, ast.Subscript)
            and isinstance(arg.value, ast.Name)
            and arg.value.id in site.tables
            and all(_is_member(v) for v in site.tables[arg.value.id].values)
        ):
            result.members.update(v.attr for v in site.tables[arg.value.id].values)  # type: ignore[attr-defined]
        else:
            bad[site.where] = f"{site.where}: {ast.unparse(arg)}"

    seen = -1
    while seen != len(emitters):  # a function found to pass its action on makes more callers
        seen = len(emitters)
        result.emit_calls = 0
        for site in sites:
            func = site.node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in emitters:
                result.emit_calls += name == "emit"
                check(_argument(site, emitters[name]), site)
    result.violations = sorted(bad.values())
    return result


def code_sources() -> dict[str, str]:
    """The Python sources of portal/ and jobs/, by path."""
    paths = sorted([*ROOT.glob("portal/**/*.py"), *ROOT.glob("jobs/**/*.py")])
    return {str(p.relative_to(ROOT)): p.read_text() for p in paths}


SAMPLE = textwrap.dedent(
    """
    from portal.audit.actions import Action
    from portal.events import emit

    EVENTS = {"pause": Action.ROTATION_PAUSED}
    LOOSE = {"pause": "BYOK.rotation_paused", "resume": Action.ROTATION_RESUMED}
    NAME = "auth.login"

    def literal(s): emit(s, "auth.login")  # bad
    def formatted(s, verb): emit(s, f"BYOK.rotation_{verb}")  # bad
    def joined(s, verb): emit(s, "BYOK." + verb)  # bad
    def constant(s): emit(s, NAME)  # bad
    def loose_table(s, verb): emit(s, LOOSE[verb])  # bad
    def untyped(s, action: str): emit(s, action)  # bad
    def keyword(s): emit(s, action="auth.logout")  # bad
    def member(s): emit(s, Action.LOGIN)
    def table(s, verb): emit(s, EVENTS[verb])
    def chosen(s, ok): emit(s, Action.LOGIN if ok else Action.LOGIN_FAILED)
    def typed(s, action: Action): emit(s, action)
    def local(s):
        action: Action = Action.LOGOUT
        emit(s, action)
    def through_typed(s): typed(s, "audit.pruned")  # bad
    def optional(s, *, audit_as: "Action | None" = None):
        if audit_as:
            typed(s, audit_as)
    def caller(s):
        optional(s)
        optional(s, audit_as=None)
        optional(s, audit_as=Action.KEY_TEST)
        optional(s, audit_as="BYOK.key_test")  # bad
    def deciding(action: Action):
        def run(s):
            emit(s, action)
        return run
    @deciding("BYOK.enabled")  # bad
    def decorated(s): pass
    """
)


def test_the_scan_flags_every_action_that_is_not_an_action_member() -> None:
    found = scan({"sample.py": SAMPLE})
    flagged = sorted(int(v.split(":")[1]) for v in found.violations)
    expected = [n for n, line in enumerate(SAMPLE.splitlines(), 1) if line.endswith("# bad")]
    assert flagged == expected, "\n".join(found.violations)
    assert {"LOGIN", "LOGIN_FAILED", "ROTATION_PAUSED", "KEY_TEST"} <= found.members


def test_every_emit_in_portal_and_jobs_passes_an_action_member() -> None:
    found = scan(code_sources())
    # The scan reaches jobs/, tables and refusal helpers, or it would prove nothing.
    assert found.emit_calls >= 25
    assert {
        "ROTATION_PROGRESS",
        "ROTATION_PAUSED",
        "KEY_RESTORE",
        "DECRYPT_FAILED",
    } <= found.members
    assert not found.violations, "emit() given something but Action.X:\n" + "\n".join(
        found.violations
    )
    unused = set(Action.__members__) - found.members
    assert not unused, f"Action members nothing emits (stale, or emitted another way): {unused}"


def test_the_audit_filter_knows_every_action_and_category() -> None:
    assert set(ACTIONS) == set(Action) and len(ACTIONS) == len(Action)
    assert set(CATEGORIES) == set(Category)
    for action in Action:
        assert action.category in CATEGORIES, action
        assert not parse_filters({"type": action}).unknown_type, action
    assert {"auth.password_changed", "BYOK.rotation_progress"} <= set(ACTIONS)


@pytest.mark.parametrize("category", list(Category))
def test_each_category_filter_matches_exactly_its_actions(
    app: Flask, orgs: dict, category: Category
) -> None:
    with app.app_context():
        db = get_session()
        org = db.scalar(select(Organization).where(Organization.slug == "org-a"))
        for action in Action:
            emit(db, action, actor="cli", company_id=org.id)
        db.commit()
        page = load_page(db, org.id, parse_filters({"type": category, "limit": "200"}))
        shown = {event.action for event in page.events}
        assert shown == {a.value for a in Action if a.category == category}
        assert {event.category for event in page.events} == {category.value}
        for action in (a for a in Action if a.category == category):
            one = load_page(db, org.id, parse_filters({"type": action}))
            assert [event.action for event in one.events] == [action.value]
