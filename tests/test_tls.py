"""The client's TLS context (gpu_operator.tls) as the kubernetes client's configuration asks; the API server
side (resumption, identities, a foreign CA refused) is in e2e/test_tls.py."""

from __future__ import annotations

import ssl

import urllib3
from kubernetes import client

from gpu_operator import tls


def _configuration(**fields: object) -> client.Configuration:
    cfg = client.Configuration()
    cfg.host = "https://127.0.0.1:6443"
    for name, value in fields.items():
        setattr(cfg, name, value)
    return cfg


def test_the_context_verifies_the_server_and_its_name_unless_told_otherwise() -> None:
    context = tls.context_for(_configuration())
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    named = tls.context_for(_configuration(assert_hostname="kubernetes"))  # urllib3 matches that name itself
    assert named.verify_mode == ssl.CERT_REQUIRED and not named.check_hostname
    insecure = tls.context_for(_configuration(verify_ssl=False))  # insecure-skip-tls-verify
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname


def test_only_a_direct_pool_manager_is_given_the_resuming_context() -> None:
    cfg = _configuration(ssl_ca_cert="/nonexistent/ca.crt", verify_ssl=False)
    direct = urllib3.PoolManager(ca_certs=cfg.ssl_ca_cert, cert_file=None)
    assert tls.resume_sessions(direct, cfg)
    assert isinstance(direct.connection_pool_kw["ssl_context"], tls.ResumingContext)
    assert direct.connection_pool_kw["ca_certs"] is None  # loaded once into the context, not per connection
    assert direct.pool_classes_by_scheme["https"] is not urllib3.HTTPSConnectionPool
    proxied = urllib3.ProxyManager("http://127.0.0.1:3128")
    assert not tls.resume_sessions(proxied, cfg)
    assert "ssl_context" not in proxied.connection_pool_kw
