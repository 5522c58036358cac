"""What every BYOK wizard step shares: its forms, page context, refusals and answers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flask import current_app, flash, make_response, redirect, render_template, session, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import Row, select

from portal import crypto
from portal.audit.actions import Action
from portal.auth import reauth
from portal.compliance import custody
from portal.compliance.forms import (
    ConfirmForm,
    ConnectForm,
    DisableForm,
    GenerateForm,
    KeyForm,
    ReencryptForm,
    ReencryptSealedForm,
    RestoreForm,
    RewrapForm,
    RotateForm,
)
from portal.db import get_session
from portal.htmx import is_htmx
from portal.keys import operations as ops
from portal.keys import policy
from portal.keys.errors import KeyOperationError, audit_refusal
from portal.keys.transaction import key_operation
from portal.models import Organization
from portal.rotation.models import RotationRun
from portal.rotation.states import ACTIVE_RUN_STATES
from portal.security import limiter

FORMS = {
    "enable": KeyForm,
    "restore": RestoreForm,
    "disable": DisableForm,
    "lost": ConfirmForm,
    "revoke": ConfirmForm,
    "generate": GenerateForm,
    "rotate": RotateForm,
    "leftover": GenerateForm,  # "Move them to the active key" (CSRF token only)
    "connect": ConnectForm,
    "rewrap": RewrapForm,
    "reencrypt": ReencryptForm,
    "reencrypt_sealed": ReencryptSealedForm,
}


# The fingerprints (never the keys) of the keys generated in this session, newest last.
GENERATED = "generated_fingerprints"
GENERATED_KEPT = 20


def remember_generated(fp: str) -> None:
    """Note that this session generated the key with this fingerprint."""
    kept = [f for f in session.get(GENERATED, []) if f != fp]
    session[GENERATED] = [*kept[-(GENERATED_KEPT - 1) :], fp]


def generated_here(text: str) -> str | None:
    """Return the pasted key's fingerprint if this session generated it, else None."""
    try:
        fp = crypto.fingerprint(crypto.key_id(ops.read_key(text or "")))
    except KeyOperationError:
        return None
    return fp if fp in session.get(GENERATED, []) else None


def forget_generated(fp: str) -> None:
    """Drop a fingerprint once its key is in use (a key is never enabled twice)."""
    session[GENERATED] = [f for f in session.get(GENERATED, []) if f != fp]


def _user_key() -> str:
    """Rate-limit key for key operations: the signed-in user's id (never the session token,
    so signing in again does not reset the allowance, and no token reaches Redis)."""
    return f"key-ops:{current_user.id}"


# One allowance per admin across every key operation (a shared scope), not one per route.
key_ops_limit = limiter.shared_limit(
    lambda: current_app.config["RATELIMIT_KEY_OPERATIONS"], scope="key-ops", key_func=_user_key
)


def current_org() -> Organization:
    """Return the signed-in user's organisation."""
    return get_session().get(Organization, current_user.company_id)


class Forms(Mapping[str, FlaskForm]):
    """A form per action, built when the page first asks for it: a page shows a few of them,
    and building all twelve on every view cost more than rendering the ones it shows."""

    def __init__(self, given: dict[str, FlaskForm]) -> None:
        """Keep the submitted forms; the others are built blank on demand."""
        self._built = {name: form for name, form in given.items() if form is not None}

    def __getitem__(self, name: str) -> FlaskForm:
        """The submitted form of that action, or a blank one (KeyError for no such action)."""
        if name not in self._built:
            self._built[name] = FORMS[name](formdata=None)
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        """Every action's name."""
        return iter(FORMS)

    def __len__(self) -> int:
        """How many actions there are."""
        return len(FORMS)


def forms(**given: FlaskForm) -> Forms:
    """Return a form per action, using the submitted one where given."""
    return Forms(given)


def active_run(org: Organization) -> Row | None:
    """The organisation's unfinished run as the page names it (id, kind, state), or None.

    One read of three columns: the page only links to the run, and loading it as an object
    would load its per-kind totals too (a second statement on every view during a run).
    """
    return (
        get_session()
        .execute(
            select(RotationRun.id, RotationRun.kind, RotationRun.state).where(
                RotationRun.company_id == org.id, RotationRun.state.in_(ACTIVE_RUN_STATES)
            )
        )
        .first()
    )


def context(org: Organization, **extra: Any) -> dict[str, Any]:
    """Everything the page and its fragments render from."""
    eligible = policy.byok_eligible(org)
    status = ops.status(get_session(), org) if eligible else None
    services = custody.choices()
    return {
        "org": org,
        "deployment": current_app.config["BYOK_DEPLOYMENT"],
        "isolated": policy.isolated(org),
        "eligible": eligible,
        "status": status,
        "services": services,
        "custody": custody.panel(status, services),
        "reason_words": custody.REASON_WORDS,
        "how_to_configure": custody.HOW_TO_CONFIGURE,
        "kms_cache_seconds": current_app.config.get("KMS_CACHE_SECONDS", 300),
        "read_only": current_user.role != "admin",
        "sales_url": current_app.config["SALES_URL"],
        "reauth_fresh": reauth.is_fresh(),
        "active_run": active_run(org) if eligible else None,
        "forms": extra.pop("forms", None) or forms(),
        **extra,
    }


def refused(name: str, form: FlaskForm, org: Organization, **extra: Any):
    """Answer a refused step: field errors swapped in place (htmx) or the page again."""
    if is_htmx():
        return render_template("compliance/_feedback.html", form=form, form_name=name, **extra), 422
    page = context(org, forms=forms(**{name: form}), **extra)
    return render_template("compliance/index.html", **page), 422


def still_tested(form: FlaskForm, field: str = "key") -> str | None:
    """The fingerprint a refused step should keep: the tested key is still the posted one."""
    try:
        fp = crypto.fingerprint(crypto.key_id(ops.read_key(getattr(form, field).data or "")))
    except KeyOperationError:
        return None
    return fp if fp == form.tested_fingerprint.data else None


def done(message: str, org: Organization):
    """Answer a completed step: the whole BYOK section re-rendered, or a redirect."""
    get_session().commit()
    if is_htmx():
        response = make_response(
            render_template("compliance/_byok.html", **context(org, done_message=message))
        )
        response.headers["HX-Retarget"] = "#byok"
        response.headers["HX-Reswap"] = "outerHTML"
        return response
    flash(message)
    return redirect(url_for("compliance.index"), code=303)


def submitted(name: str) -> FlaskForm:
    """Bind and validate the posted form of an action (CSRF is checked globally)."""
    form = FORMS[name]()
    form.validate()
    return form


def attempt(
    form: FlaskForm,
    org: Organization,
    operation: Callable[[], Any],
    needs_reauth: bool,
    audit_as: Action | None = None,
    **details: str,
):
    """Run an operation after re-authentication, mapping refusals onto form fields.

    Its transaction ends in ``key_operation``: a refusal keeps its audit event (a wrong
    password's too). Key operations audit their own refusals; ``audit_as`` names the action
    under which a refusal not yet audited (a rotation step) is recorded, with its field.
    """
    try:
        with key_operation(get_session()):
            if needs_reauth:
                problem = reauth.confirm(getattr(form, "password", None) and form.password.data)
                if problem:
                    form.password.errors = [problem]
                    return None
            try:
                return operation()
            except KeyOperationError as exc:
                if audit_as:
                    which = {"field": exc.field} if exc.field else {}
                    db = get_session()
                    audit_refusal(db, org, current_user, audit_as, exc, **details, **which)
                raise
    except KeyOperationError as exc:
        show_refusal(form, exc)
        return None


def show_refusal(form: FlaskForm, exc: KeyOperationError) -> None:
    """Put a refusal's message on its field, or on the form when it names none."""
    field = getattr(form, exc.field, None) if exc.field else None
    target = field if field is not None else form.form_errors
    if isinstance(target, list):
        target.append(exc.message)
    else:
        target.errors = [*target.errors, exc.message]


def refuse(exc: KeyOperationError) -> Callable[[], Any]:
    """An operation that is refused before it starts (a step taken out of order)."""

    def operation() -> Any:
        raise exc

    return operation
