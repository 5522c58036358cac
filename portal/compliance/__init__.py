"""Organization Settings → Compliance Policies: tier, deployment mode and BYOK."""

from flask import Blueprint

bp = Blueprint("compliance", __name__, url_prefix="/settings/compliance")

from portal.compliance import key_loss, rotation_start, views  # noqa: E402,F401
