"""Embedded GCP services: BigQuery and Cloud Storage emulators plus the github_repos seed."""

from codeparrot.services.emulators import EmbeddedServices, Endpoints, ensure_services, ensure_storage

__all__ = ["EmbeddedServices", "Endpoints", "ensure_services", "ensure_storage"]
