"""The DNS resolver: redirect repository hostnames to the gateway, forward the rest."""
