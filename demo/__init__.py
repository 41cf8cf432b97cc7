"""`make demo`: one real backup end to end on this machine (run.py)."""
