"""The local CA and per-SNI certificates for the HTTPS front."""
