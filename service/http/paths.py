"""Where the APIs live: the one home of the path prefixes that routers, the API-key check, error rendering and
the static page's mount all go by."""

V1 = "/v1"  # the VAE operations, models, embeddings
V2 = "/v2"  # the Open Inference Protocol (KServe V2)
API_ROOTS = (V1, V2)
API_PREFIXES = (V1 + "/", V2 + "/")
OIP_PREFIX = V2 + "/"
OIP_HEALTH_PREFIX = V2 + "/health/"
