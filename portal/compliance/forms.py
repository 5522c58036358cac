"""Forms of the BYOK wizard.

Key fields are rendered back with their value only on the full-page (no JavaScript) answer
of a key that passed Test Key / Test Keys, so it need not be pasted twice; those answers are
``no-store`` like every answer of this area.
"""

from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, PasswordField, StringField, TextAreaField
from wtforms.validators import Length, Optional

SLUG_LABEL = "Type the organisation's slug to confirm"


class KeyForm(FlaskForm):
    """Paste a key to test it and then save and enable it (Enable BYOK / Import)."""

    key = TextAreaField("Encryption key (base64, 32 bytes)", validators=[Length(max=4096)])
    tested_fingerprint = HiddenField()
    password = PasswordField("Your password", validators=[Optional(), Length(max=1024)])


class RestoreForm(FlaskForm):
    """Paste a key from backup to restore it."""

    key = TextAreaField("Key from your backup (base64)", validators=[Length(max=4096)])
    password = PasswordField("Your password", validators=[Optional(), Length(max=1024)])


class DisableForm(FlaskForm):
    """Switch BYOK off after typing the slug and acknowledging the consequences."""

    confirm_slug = StringField(
        "Type the organisation's slug to confirm", validators=[Length(max=100)]
    )
    acknowledge = BooleanField("Our compliance and legal teams were consulted")
    password = PasswordField("Your password", validators=[Optional(), Length(max=1024)])


class ConfirmForm(FlaskForm):
    """Confirm a destructive key operation (declare lost, revoke) by slug and password."""

    confirm_slug = StringField(
        "Type the organisation's slug to confirm", validators=[Length(max=100)]
    )
    password = PasswordField("Your password", validators=[Optional(), Length(max=1024)])


class GenerateForm(FlaskForm):
    """Ask for a freshly generated key (carries only the CSRF token)."""


class RotateForm(FlaskForm):
    """Rotate Key: prove the current key, give the new one, confirm with the password."""

    current_key = TextAreaField("Current key (base64)", validators=[Length(max=4096)])
    new_key = TextAreaField("New key (base64)", validators=[Length(max=4096)])
    tested_fingerprint = HiddenField()
    password = PasswordField("Your password", validators=[Optional(), Length(max=1024)])


class ConnectForm(FlaskForm):
    """Connect a key in the organisation's key service: provider, key reference, AWS role.

    None of these is a secret: the key itself never leaves the customer's service.
    """

    provider = StringField("Key service", validators=[Length(max=50)])
    key_ref = StringField("Key reference", validators=[Length(max=2048)])
    role_arn = StringField("Role to assume (optional)", validators=[Length(max=2048)])
    # The reference Test passed for (external.tested_marker), never anything secret.
    tested = HiddenField()
    password = PasswordField("Your password", validators=[Optional(), Length(max=1024)])


class RewrapForm(FlaskForm):
    """Re-wrap: the same key's newest version, or another key of the same key service."""

    key_ref = StringField("New key reference (optional)", validators=[Length(max=2048)])
    role_arn = StringField("Role to assume (optional)", validators=[Length(max=2048)])
    password = PasswordField("Your password", validators=[Optional(), Length(max=1024)])


class ReencryptForm(ConnectForm):
    """Full re-encryption to a new data key wrapped by a key in a key service."""

    # Only when the active key is sealed: proving it, as a rotation does.
    current_key = TextAreaField("Current key (base64)", validators=[Length(max=4096)])


class ReencryptSealedForm(FlaskForm):
    """Full re-encryption from a key-service key to a new sealed key (generated or imported)."""

    new_key = TextAreaField("New key (base64)", validators=[Length(max=4096)])
    tested_fingerprint = HiddenField()
    password = PasswordField("Your password", validators=[Optional(), Length(max=1024)])
