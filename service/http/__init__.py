"""The HTTP layer: what happens to a request before and after the data plane.

Middlewares (request ids, access log, metrics, body cap, API keys), the whole-request deadline, request
parsing (`requests`) and response writing (`responses`), error rendering (`error_handlers`), the schemas, the
static page, and `routes/`, which holds only the routers.
"""
