"""Celery workers that run trainer jobs and write what the callback reports into store/ (spec platform.md)."""
