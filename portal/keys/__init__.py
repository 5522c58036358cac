"""Organisation keys: sealed storage, states, and the keyring the data path uses."""

from portal.keys import counting  # noqa: F401 - tells the item counters which items are early
