"""Organisation keys: sealed storage, states, and the keyring the data path uses."""
