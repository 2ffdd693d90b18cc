"""The operator web console under ``/ui`` (issue #20): server-rendered page shells, and small plain
JavaScript that reads and acts through the public API with the operator's own token (docs/console.md)."""
