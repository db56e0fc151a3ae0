"""Fault-injection suite: drive many conversations through the local runner while injecting faults, then
check that nothing was lost and nothing was doubled (``python -m faults.run``; see faults/README.md)."""
