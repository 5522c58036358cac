"""``python -m portal.cli``: the same command as ``byok-portal``."""

from portal.cli import main

main()
