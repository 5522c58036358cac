"""Fuzzing the portal's parsers where attackers reach them, and the data API from its schema.

What tests/test_keyformat.py, tests/test_crypto.py and tests/test_audit_view.py already cover
(parse_key on key-like text, single-byte flips and arbitrary bytes through Keyring.decrypt, the
audit view with short text arguments) is not repeated. Added here:

- key import: near-misses of real keys (one character changed, added, removed, wrapped) never
  echoed; every wizard endpoint that takes key text, over HTTP, with any text or raw bytes;
- ciphertexts: structural mutations of real ciphertexts (truncation, splicing, insertion,
  foreign headers) in every buffer type, and stored values replaced by arbitrary bytes read
  back through the data API as "unreadable" (never a 500);
- audit filters: ``parse_filters`` on any mapping, and every accepted filter builds its query;
  the view and both exports with dates, numbers, repeated and unknown arguments and raw bytes;
- schemathesis against ``/api/v1/openapi.json`` with a bearer token: no 5xx on any operation.
"""

from __future__ import annotations

import base64
import html
import re
import string
import uuid
from datetime import date
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from portal import crypto, keyformat
from portal.chat.models import Attachment, Conversation, Message
from portal.chat.service import create_token
from portal.crypto import DecryptionError, Keyring
from portal.db import get_session
from portal.keyformat import KeyFormatError, parse_key
from tests.support.rotation import enable_byok, seed
from tests.support.web import PASSWORD, csrf_token

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(
    deadline=None,
    max_examples=40,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Text that may legitimately appear in a refusal: the module's own strings and the templates.
KNOWN_TEXT = Path(keyformat.__file__).read_text(encoding="utf-8") + "".join(
    p.read_text(encoding="utf-8") for p in sorted((ROOT / "templates").rglob("*.html"))
)
KEY = bytes(range(7, 39))
KEY_B64 = base64.b64encode(KEY).decode()
B64_ALPHABET = string.ascii_letters + string.digits + "+/="


# --- key import ------------------------------------------------------------------------------


def fragments(text: str) -> list[str]:
    """Parts of an input that would be an echo if a response contained them."""
    stripped = text.strip()
    found = [stripped] if len(stripped) >= 8 else []
    found += [token for token in stripped.split() if len(token) >= 8]
    found += [f[:12] for f in found if len(f) > 12]  # a leading part of a key is a leak too
    return [f for f in dict.fromkeys(found) if f not in KNOWN_TEXT]


@st.composite
def near_miss_keys(draw: st.DrawFn) -> str:
    """A real key as an admin might mistype or mangle it."""
    text = base64.b64encode(draw(st.binary(min_size=32, max_size=32))).decode()
    at = draw(st.integers(0, len(text) - 1))
    char = draw(st.sampled_from(B64_ALPHABET + "-_ .!é\u200b\n"))
    edit = draw(st.sampled_from(["replace", "insert", "delete", "wrap", "quote", "prefix"]))
    if edit == "replace":
        return text[:at] + char + text[at + 1 :]
    if edit == "insert":
        return text[:at] + char + text[at:]
    if edit == "delete":
        return text[:at] + text[at + 1 :]
    if edit == "wrap":
        return text[:at] + "\n" + text[at:]
    if edit == "quote":
        return f'"{text}"'
    return "key: " + text


@FUZZ
@given(near_miss_keys())
def test_a_mistyped_real_key_is_refused_without_echoing_it(text: str) -> None:
    try:
        key = parse_key(text)
    except KeyFormatError as exc:
        assert exc.code in keyformat.ERROR_CODES
        message = str(exc)
        for fragment in fragments(text):
            assert fragment not in message
        return
    assert len(key) == crypto.KEY_BYTES  # an edit that kept it valid base64 of 32 bytes


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=6000))
def test_parse_key_on_any_unicode_raises_only_key_format_error(text: str) -> None:
    try:
        assert len(parse_key(text)) == crypto.KEY_BYTES
    except KeyFormatError as exc:
        assert exc.code in keyformat.ERROR_CODES


@pytest.fixture
def admin(app, login_as, orgs):
    """Admin of org A, re-authenticated once, with key-operation limits out of the way."""
    app.config["RATELIMIT_KEY_OPERATIONS"] = "100000/minute"
    client = login_as("admin_a")
    headers = {"HX-Request": "true", "X-CSRFToken": csrf_token(client, "/settings/compliance")}
    primed = client.post(
        "/settings/compliance/byok/restore",
        data={"key": "x", "password": PASSWORD},
        headers=headers,
    )
    assert primed.status_code == 422  # refused for the key, but the password was taken
    client.fuzz_headers = headers  # type: ignore[attr-defined]
    return client


def baseline_pages(client, path: str, field: str) -> str:
    """Responses of the endpoint to one input of each refusal kind (for the echo check)."""
    samples = ["", "-----BEGIN X", "{}", "ab" * 16, "not a key!", KEY_B64[:24], KEY_B64]
    pages = [
        client.post(path, data={field: s}, headers=client.fuzz_headers).get_data(as_text=True)
        for s in samples
    ]
    return "\n".join(pages)


KEY_ENDPOINTS = [
    ("/settings/compliance/byok/test", "key"),
    ("/settings/compliance/byok/enable", "key"),
    ("/settings/compliance/byok/restore", "key"),
    ("/settings/compliance/rotate/test", "new_key"),
    ("/settings/compliance/rotate/test", "current_key"),
]


@pytest.mark.parametrize(("path", "field"), KEY_ENDPOINTS)
def test_wizard_endpoints_answer_any_key_text_without_5xx_or_echo(admin, path, field):
    baseline = baseline_pages(admin, path, field)

    @FUZZ
    @given(st.one_of(st.text(max_size=5000), near_miss_keys()), st.booleans())
    @example("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", True)
    @example("<script>alert(1)</script>", True)
    @example("x" * 5000, False)
    def check(text: str, htmx: bool) -> None:
        headers = admin.fuzz_headers if htmx else {"X-CSRFToken": admin.fuzz_headers["X-CSRFToken"]}
        response = admin.post(path, data={field: text}, headers=headers)
        assert response.status_code in (200, 422), (text, response.status_code)
        page = response.get_data(as_text=True)
        if not htmx and response.status_code == 200:
            # Without JavaScript a key that passed the test stays in its own field, no-store.
            assert response.headers["Cache-Control"] == "no-store"
            page = re.sub(r"(<textarea[^>]*>)[^<]*(</textarea>)", r"\1\2", page)
        for fragment in fragments(text):
            for form in {fragment, html.escape(fragment), html.escape(fragment, quote=False)}:
                assert form not in page or form in baseline, f"{form!r} echoed by {path}"

    check()


@given(st.binary(max_size=600))
@FUZZ
def test_wizard_test_endpoint_survives_raw_bytes(admin, raw: bytes) -> None:
    body = b"key=" + quote_from_bytes(raw).encode()
    response = admin.post(
        "/settings/compliance/byok/test",
        data=body,
        content_type="application/x-www-form-urlencoded",
        headers=admin.fuzz_headers,
    )
    assert response.status_code in (200, 422)


# --- ciphertexts -----------------------------------------------------------------------------

AD = crypto.associated_data("c0ffee00-0000-4000-8000-000000000001", "messages", "body", "r1")
OTHER_AD = crypto.associated_data("c0ffee00-0000-4000-8000-000000000001", "messages", "body", "r2")
RING = Keyring(KEY, decrypt_only=[bytes(32)], unavailable=[b"\x00" * 8])


@st.composite
def mutated_ciphertexts(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A real ciphertext and a structurally mutated copy of it."""
    plaintext = draw(st.binary(max_size=draw(st.sampled_from([64, 5000]))))
    blob = bytes(RING.encrypt(plaintext, AD))
    other_plaintext = draw(st.binary(max_size=64))
    other = bytes(Keyring(bytes(32)).encrypt(other_plaintext, AD))
    at = draw(st.integers(0, len(blob)))
    extra = draw(st.binary(min_size=1, max_size=40))
    kind = draw(
        st.sampled_from(
            ["truncate", "append", "insert", "delete", "splice", "foreign_header", "nonce_swap"]
        )
    )
    if kind == "truncate":
        mutated = blob[:at]
    elif kind == "append":
        mutated = blob + extra
    elif kind == "insert":
        mutated = blob[:at] + extra + blob[at:]
    elif kind == "delete":
        mutated = blob[:at] + blob[at + len(extra) :]
    elif kind == "splice":
        mutated = blob[:at] + other[at:]
    elif kind == "foreign_header":
        mutated = draw(st.sampled_from([other[:11], b"BK\x02" + blob[3:11], b"XX\x01"])) + blob[11:]
    else:
        mutated = blob[:11] + other[11:23] + blob[23:]
    if mutated == other:
        # A splice before the key id is the other ciphertext whole: RING holds its key too
        # (decrypt-only), so it rightly decrypts to the other plaintext.
        return other_plaintext, mutated
    return plaintext, mutated


@FUZZ
@given(mutated_ciphertexts(), st.sampled_from([bytes, bytearray, memoryview]))
def test_mutated_ciphertexts_raise_only_decryption_error(pair, form) -> None:
    plaintext, mutated = pair
    for ad in (AD, OTHER_AD):
        try:
            assert RING.decrypt(form(mutated), ad) == plaintext and ad == AD
        except DecryptionError as exc:
            assert exc.reason in crypto.DECRYPTION_FAILURES
            if len(plaintext) >= 8:
                assert plaintext not in str(exc).encode()
    for parse in (crypto.parse, crypto.blob_key_id):
        try:
            parse(form(mutated))
        except DecryptionError as exc:
            assert exc.reason == "malformed"


@FUZZ
@given(st.binary(min_size=4090, max_size=4200), st.sampled_from([bytes, bytearray, memoryview]))
def test_large_arbitrary_blobs_behind_a_real_header_raise_only_decryption_error(body, form):
    blob = crypto.HEADER + crypto.key_id(KEY) + body
    with pytest.raises(DecryptionError) as caught:
        RING.decrypt(form(blob), AD)
    assert caught.value.reason == "integrity"


STORED = [
    (Message, "body_ct"),
    (Conversation, "title_ct"),
    (Conversation, "metadata_ct"),
    (Attachment, "filename_ct"),
    (Attachment, "content_ct"),
]


@pytest.fixture
def api_world(app, orgs):
    """Org A with BYOK on, a little data, and a bearer token."""
    org = orgs["a"]["id"]
    enable_byok(app, org)
    seed(app, org, conversations=1, messages=2, attachments=1, attachment_bytes=32)
    with app.app_context():
        db = get_session()
        token = create_token(db, org, "fuzz")
        db.commit()
        ids = {
            model: db.scalar(select(model.id).where(model.company_id == org))
            for model in (Message, Conversation, Attachment)
        }
    app.config["RATELIMIT_API"] = "100000/minute"
    return {"org": org, "ids": ids, "auth": {"Authorization": f"Bearer {token}"}}


def _stored(app, model, column: str, row_id, value: bytes | None = None) -> bytes:
    """Read (or overwrite) one stored ciphertext directly in the database."""
    with app.app_context():
        db = get_session()
        if value is not None:
            db.execute(update(model).where(model.id == row_id).values({column: value}))
            db.commit()
        return bytes(db.scalar(select(getattr(model, column)).where(model.id == row_id)))


def _read_all(app, auth: dict, conv_id, att_id) -> list:
    """Every API read of the organisation's data: never a 5xx."""
    client = app.test_client()
    responses = [
        client.get("/api/v1/conversations", headers=auth),
        client.get(f"/api/v1/conversations/{conv_id}", headers=auth),
        client.get(f"/api/v1/attachments/{att_id}", headers=auth),
    ]
    for response in responses:
        assert response.status_code < 500, response.get_data(as_text=True)
    return responses


@pytest.mark.parametrize(
    ("model", "column"), STORED, ids=[f"{m.__tablename__}.{c}" for m, c in STORED]
)
def test_stored_values_replaced_by_arbitrary_bytes_read_back_as_unreadable(
    app, api_world, model, column
):
    ids = api_world["ids"]
    row_id = ids[model]
    original = _stored(app, model, column, row_id)
    behind_real_headers = st.builds(
        lambda kid, body: crypto.HEADER + bytes.fromhex(kid) + body,
        st.sampled_from(_key_ids(app, api_world["org"])),
        st.binary(max_size=60),
    )

    @FUZZ
    @given(
        st.one_of(
            st.binary(max_size=300),
            mutated_ciphertexts().map(lambda pair: pair[1]),
            behind_real_headers,
            st.builds(
                lambda at, b: original[:at] + b + original[at + len(b) :],
                st.integers(0, len(original)),
                st.binary(min_size=1, max_size=4),
            ),
        )
    )
    @example(b"")
    @example(original[:-1])
    @example(original + b"\x00")
    def check(blob: bytes) -> None:
        if blob == original:
            return
        _stored(app, model, column, row_id, blob)
        try:
            listing, conv, att = _read_all(
                app, api_world["auth"], ids[Conversation], ids[Attachment]
            )
        finally:
            _stored(app, model, column, row_id, original)
        reasons = set(crypto.DECRYPTION_FAILURES)
        if model is Message:
            bodies = {m["id"]: m["body"] for m in conv.get_json()["messages"]}
            assert bodies[str(row_id)]["status"] == "unreadable"
            assert bodies[str(row_id)]["reason"] in reasons
            assert sum(isinstance(b, str) for b in bodies.values()) == len(bodies) - 1
        elif model is Conversation:
            for summary in (listing.get_json()["conversations"][0], conv.get_json()):
                assert summary["status"] == "unreadable" and summary["reason"] in reasons
        elif column == "filename_ct":
            assert conv.get_json()["attachments"][0]["filename"]["status"] == "unreadable"
        else:
            assert att.status_code == 409 and att.get_json()["status"] == "unreadable"
            assert att.get_json()["reason"] in reasons

    check()
    # Put back, everything reads again (the fuzzing left nothing broken behind).
    _listing, conv, att = _read_all(app, api_world["auth"], ids[Conversation], ids[Attachment])
    assert att.status_code == 200 and "status" not in conv.get_json()


def _key_ids(app, org) -> list[str]:
    from portal.keys.models import OrgKey

    with app.app_context():
        return list(get_session().scalars(select(OrgKey.key_id).where(OrgKey.company_id == org)))


# --- audit filters ---------------------------------------------------------------------------

FILTER_NAMES = ["type", "actor", "outcome", "from", "to", "before", "after", "limit"]
values = st.one_of(
    st.text(max_size=40),
    st.dates().map(date.isoformat),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(alphabet="0123456789²³¹٠١٢٣٤٥٦٧٨٩-. \x00", max_size=25),
    st.sampled_from(["BYOK", "auth.login", "success", "failure", "denied", "a.b.c", "cli"]),
)
query_args = st.lists(
    st.tuples(st.one_of(st.sampled_from(FILTER_NAMES), st.text(max_size=8)), values),
    max_size=8,
)
AUDIT_PATHS = ["/settings/audit", "/settings/audit/export.csv", "/settings/audit/export.jsonl"]


@FUZZ
@given(st.dictionaries(st.sampled_from(FILTER_NAMES), values))
def test_parse_filters_never_raises_and_accepted_filters_build_their_query(args) -> None:
    from portal.audit.filters import page_query, parse_filters

    parsed = parse_filters(args)
    assert set(parsed.errors) <= set(FILTER_NAMES)
    if not parsed.errors:
        page_query(uuid.uuid4(), parsed).compile()
        again = parsed.page_args(before=parsed.before, after=parsed.after)
        assert parse_filters({k: str(v) for k, v in again.items()}) == parsed


@pytest.fixture
def auditor(app, login_as, orgs):
    enable_byok(app, orgs["a"]["id"])
    return login_as("auditor_a")


def test_audit_view_and_exports_never_answer_5xx(auditor):
    @FUZZ
    @given(
        query_args,
        st.sampled_from(AUDIT_PATHS),
        st.sampled_from(
            [
                {},
                {"HX-Request": "true"},
                {"HX-Request": "true", "HX-History-Restore-Request": "true"},
            ]
        ),
        st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=60),
    )
    def check(args, path, headers, current_url) -> None:
        if headers:
            headers = {**headers, "HX-Current-URL": current_url}
        response = auditor.get(path, query_string=args, headers=headers)
        response.get_data()
        assert response.status_code in (200, 400), (path, args, response.status_code)

    check()


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(AUDIT_PATHS))
def test_audit_view_survives_raw_query_bytes(auditor, raw: bytes, path: str) -> None:
    query = re.sub(rb"[^A-Za-z0-9=&%._~-]", lambda m: b"%%%02X" % m.group()[0], raw).decode()
    response = auditor.get(f"{path}?{query}")
    response.get_data()
    assert response.status_code in (200, 400)


@pytest.mark.parametrize("path", AUDIT_PATHS)
def test_audit_view_survives_the_last_representable_date(auditor, path):
    response = auditor.get(f"{path}?to=9999-12-31")
    response.get_data()
    assert response.status_code in (200, 400)


# --- schemathesis against the published OpenAPI document -------------------------------------


def fuzz_operation(strategy, auth: dict[str, str], statuses: set[int]) -> None:
    """Send schemathesis' cases for one operation; any 5xx fails (``not_a_server_error``)."""
    from schemathesis.checks import not_a_server_error

    @settings(
        max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=strategy)
    def run(case) -> None:
        response = case.call(headers=auth)
        statuses.add(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    run()


def test_schemathesis_no_server_errors_on_any_operation(app, orgs):
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis import GenerationMode

    org = orgs["a"]["id"]
    enable_byok(app, org)
    seed(app, org, conversations=2, messages=3, attachments=1, attachment_bytes=16)
    app.config["RATELIMIT_API"] = "100000/minute"
    with app.app_context():
        db = get_session()
        token = create_token(db, org, "schemathesis")
        db.commit()
        real = {
            "conv_id": str(
                db.scalar(select(Conversation.id).where(Conversation.company_id == org))
            ),
            "msg_id": str(db.scalar(select(Message.id).where(Message.company_id == org))),
            "att_id": str(db.scalar(select(Attachment.id).where(Attachment.company_id == org))),
        }
    auth = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    # Every route of the API is in the document (so every route is fuzzed), and nothing else.
    routes = {
        f"{method} " + re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule.removeprefix("/api/v1"))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/") and rule.endpoint != "api.openapi"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert {op.label for op in operations} == routes
    seen: dict[tuple[str, GenerationMode], set[int]] = {}

    for operation in operations:
        fixed = {p.name: real[p.name] for p in operation.path_parameters}
        variants = [(GenerationMode.POSITIVE, {}), (GenerationMode.NEGATIVE, fixed)]
        if fixed:
            variants.append((GenerationMode.POSITIVE, fixed))
        for mode, path_parameters in variants:
            strategy = operation.as_strategy(mode, path_parameters=path_parameters or None)
            fuzz_operation(strategy, auth, seen.setdefault((operation.label, mode), set()))
    # The run got past the front door: the token was accepted, objects found, data written.
    positive = set().union(*(v for (_, mode), v in seen.items() if mode == GenerationMode.POSITIVE))
    assert {200, 201} <= positive and 401 not in positive, seen
