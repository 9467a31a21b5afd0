"""The Gradio dashboard: a view over api/services, mounted in the API server at /ui (spec/platform.md "Dashboard")."""
