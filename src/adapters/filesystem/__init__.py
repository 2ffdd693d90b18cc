"""The local-directory adapter: ``FilesystemBlobStore`` (blobs.py), the embedded default for large results."""
