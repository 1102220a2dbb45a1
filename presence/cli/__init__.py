"""Command-line tools: presence-client and presence-token."""
