"""The wire contract, pure (no I/O): what every actor and every outside client must agree on."""
