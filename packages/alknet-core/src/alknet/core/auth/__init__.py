"""Identity, keys, authorized_keys, certificates and tokens."""
