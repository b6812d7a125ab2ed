"""The plan stage: typed plan values (values.py), the pure planner (planner.py), the plan file (planfile.py).

Nothing here does I/O except planfile's text in and out, and nothing here formats output for people.
"""
