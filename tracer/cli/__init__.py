"""``bin/trace``: argparse and exit codes, the main job's text, ``diff`` and ``audit``."""
