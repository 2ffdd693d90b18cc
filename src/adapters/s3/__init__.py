"""s3 adapter."""
