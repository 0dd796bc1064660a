"""The webhook process: app factory, edges, the endpoint, downloads, monitoring, gunicorn."""
