"""Readers for the deploy files (Dockerfile, kustomize, KEDA) used by tests/integration/test_deploy_config.py."""
