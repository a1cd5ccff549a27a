"""The run lifecycle: launch, shards, leases, reaping and retries (runs.py owns the sequence)."""
