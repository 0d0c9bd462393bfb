"""The web page of caption.py: an HTTP server (server.py) that reads uploads (uploads.py) and serves page.html."""
