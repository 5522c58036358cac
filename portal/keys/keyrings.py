"""The organisation keyrings chat data is written and read with (chat's KeyringSource)."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from portal import crypto
from portal.keys.policy import check_can_store
from portal.keys.service import encrypting_keyring, load_keys
from portal.models import Organization


class OrgKeyrings:
    """Keyrings from the organisation's stored keys, with the BYOK storage policy applied."""

    def writable(self, session: Session, company_id: uuid.UUID) -> crypto.Keyring:
        """Return the encrypting keyring, refusing where BYOK is required but not enabled.

        Raises ByokRequired where the deployment or tier requires the organisation's own key
        and none is enabled yet, and KeyUnavailable when the encrypting key cannot be unsealed.
        """
        org = session.get(Organization, company_id)
        if org is None:
            raise LookupError(f"no organisation with id {company_id}")
        # Checked here rather than in the API so that every writer (API, demo, imports) obeys it.
        check_can_store(session, org)
        return encrypting_keyring(session, company_id)

    def readable(self, session: Session, company_id: uuid.UUID) -> crypto.Keyring:
        """Return the keyring of every usable key of the organisation (cached per context)."""
        return load_keys(session, company_id).keyring


KEYRINGS = OrgKeyrings()
