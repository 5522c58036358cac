"""Organization Settings → Compliance Policies: tier, deployment mode and BYOK."""

from flask import Blueprint

bp = Blueprint("compliance", __name__, url_prefix="/settings/compliance")

from portal.compliance import (  # noqa: E402,F401
    connect,
    key_loss,
    reencrypt,
    rotation_start,
    views,
)
