"""Pieces the algorithms share: validation, schedules, env factory, reporting."""
