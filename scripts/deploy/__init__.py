"""Deployment manifests: render (kustomize) and validate offline."""
