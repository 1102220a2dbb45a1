"""presence-bench: drive a presence server with a realistic load and measure it.

Modules:

- L{presence.bench.graph}: the seeded random friend graph;
- L{presence.bench.loadgen}: the load generator's worker processes (an epoll
  loop per process, thousands of client connections each);
- L{presence.bench.launch}: starting the server under test (the end-to-end
  tests start theirs with it too);
- L{presence.bench.server}: finding the server under test and reading its CPU
  time and memory from /proc;
- L{presence.bench.runner}: the phases (login, hold, fan-out, churn);
- L{presence.bench.report}: the figures, their targets, the table, JSON, PNG;
- L{presence.bench.cli}: the C{presence-bench} command.
"""
