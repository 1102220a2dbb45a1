"""The browser side: static files, HTTP resources, the WebSocket front end."""
