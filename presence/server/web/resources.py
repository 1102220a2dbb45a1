"""The HTTP side of the WebSocket port: the browser client and the demo page.

L{web_root} builds the resource tree served on C{--websocket}: C{/} (the demo
page), C{/presence.js} (the ES module), C{/demo.js}, C{/demo.css},
C{/favicon.svg}, and the WebSocket resource at C{/ws} when one is given.  The
files are read once, when the tree is built, from the package's C{static}
directory.
"""

from __future__ import annotations

from importlib import resources

from twisted.web.resource import Resource
from twisted.web.server import Request

# The demo page needs nothing but its own origin: no inline script or style,
# no third-party anything.  connect-src 'self' covers ws:/wss: to the same
# host and port (CSP level 3).
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; "
    b"connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; "
    b"frame-ancestors 'none'"
)

TYPES = {
    "index.html": b"text/html; charset=utf-8",
    "presence.js": b"text/javascript; charset=utf-8",
    "demo.js": b"text/javascript; charset=utf-8",
    "demo.css": b"text/css; charset=utf-8",
    "favicon.svg": b"image/svg+xml",
}


def static_file(name: str) -> bytes:
    """The content of one of the package's static files."""
    return (resources.files(__package__) / "static" / name).read_bytes()


class StaticFile(Resource):
    """One in-memory file, served with safe headers."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type

    def _headers(self, request: Request) -> None:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"content-length", b"%d" % len(self.body))
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"content-security-policy", CSP)

    def render_GET(self, request: Request) -> bytes:
        self._headers(request)
        return self.body

    def render_HEAD(self, request: Request) -> bytes:
        self._headers(request)
        return b""


class Root(Resource):
    """C{/} is the demo page; other paths are the children (404 otherwise)."""

    def __init__(self) -> None:
        super().__init__()
        self.index = StaticFile(static_file("index.html"), TYPES["index.html"])

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"" and not request.postpath:
            return self.index
        return super().getChild(path, request)


def web_root(ws: Resource | None = None) -> Resource:
    """The resource tree of the WebSocket port (C{ws} at C{/ws})."""
    root = Root()
    for name, content_type in TYPES.items():
        if name != "index.html":
            root.putChild(name.encode(), StaticFile(static_file(name), content_type))
    if ws is not None:
        root.putChild(b"ws", ws)
    return root
