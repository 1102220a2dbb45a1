"""The sans-IO core: interfaces, the registry, timers.  Imports only wire."""
