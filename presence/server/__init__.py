"""The server: sessions, their front ends, the service and the twistd plugin."""
