"""Local tooling: the demo (main job), the gateway's local stack wiring, webhook helpers."""
