"""OpenAI-compatible HTTP proxy in front of the Triton ensembles (`POST /v1/embeddings`, ...).

Laid out like TEI's router: `settings` (configuration in one place), `schemas` (request/response
and error bodies), `errors` (the one place where failures become HTTP statuses), `metrics`
(Prometheus), `app` (routes), `server` (uvicorn). The Triton client library is its only way to
the models.
"""
