"""How the proxy talks to Triton: `serve` over HTTP to its own Tritons (the quicker link, issue 19); `serve-proxy`
as --protocol says, else as the --triton-url scheme says, else gRPC (the served paths: test_faults.py and
test_replicas.py run `serve`, the other proxy suites `serve-proxy` on a gRPC address)."""

from __future__ import annotations

import pytest

from bge_triton.cli import triton_protocol


@pytest.mark.parametrize(
    ("urls", "given", "expected"),
    [
        ([], None, "grpc"),
        (["triton:8001"], None, "grpc"),
        (["http://triton:8000"], None, "http"),
        (["http://a:8000", "http://b:8000"], None, "http"),
        (["grpc://triton:8001"], None, "grpc"),
        (["triton:8000"], "http", "http"),
        (["dns:triton-headless:8000"], "http", "http"),
        (["http://triton:8000"], "http", "http"),
        ([], "http", "http"),
    ],
)
def test_the_protocol_comes_from_the_flag_else_the_scheme_else_grpc(
    urls: list[str], given: str | None, expected: str
) -> None:
    assert triton_protocol(urls, given) == expected


@pytest.mark.parametrize(
    ("urls", "given", "message"),
    [
        (["http://a:8000", "grpc://b:8001"], None, "mixes http:// and grpc://"),
        (["http://a:8000"], "grpc", "--protocol grpc with a http:// --triton-url"),
    ],
)
def test_contradictions_are_usage_errors(urls: list[str], given: str | None, message: str) -> None:
    with pytest.raises(SystemExit) as raised:
        triton_protocol(urls, given)
    assert message in str(raised.value)

