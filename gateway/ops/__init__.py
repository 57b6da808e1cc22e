"""The operator's side: CLI, doctor, trust, host setup, admin API, status page, metrics, logs."""
