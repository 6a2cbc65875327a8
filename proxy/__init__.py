"""oci-referrers-proxy: the OCI 1.1 Referrers API in front of registries that lack it."""

__version__ = "0.1.0"
