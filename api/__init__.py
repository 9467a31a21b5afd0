"""The REST API (FastAPI), its service layer (shared with the dashboard), the Python client and CLI commands."""
