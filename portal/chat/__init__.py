"""The platform's chat data: conversations, messages and attachments, encrypted at rest."""
