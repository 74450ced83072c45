"""HTTP layer: thin routers that parse a request, call one service and shape the answer."""
