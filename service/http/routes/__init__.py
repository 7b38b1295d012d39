"""Thin HTTP routers: parse, delegate to the data plane (`service.inference`), render."""
