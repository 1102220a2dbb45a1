from twisted.application.service import ServiceMaker

presence = ServiceMaker(
    "presence",
    "presence.server.tap",
    "A presence server: who of my friends is online.",
    "presence",
)
