"""The node's Compose stack run for real, in containers on this machine: the engine, the base images
made here, and `docker compose` with a line per step."""
