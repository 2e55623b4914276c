"""containerd-nydus-grpc: containerd's Snapshots service for Nydus and plain OCI images.

`store` (sqlite metadata), `filters` (List filters), `snapshotter` (the logic: overlay
snapshots, Nydus layer decisions), `daemons` (nydusd manager: dedicated/shared, records,
liveness), `nydusd` (one nydusd process and its API), `service` (gRPC), `server`, `config`.
"""
