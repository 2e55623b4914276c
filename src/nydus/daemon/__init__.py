"""nydusd: daemon state (`state`), the service holding mounts and metrics (`service`), the
HTTP API (`api`), the drivers that mount an instance (`drivers`), the process life cycle
(`lifecycle.run_daemon`), its API client (`client`) and child-process harness (`process`).

Nothing is imported here: a daemon's start imports only what it runs before mounting."""
