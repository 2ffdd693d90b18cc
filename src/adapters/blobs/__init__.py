"""BlobStore adapters: large task results by reference (filesystem, S3)."""
