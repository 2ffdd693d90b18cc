"""Tests of the worker SDK: DAG definitions, and workers against a real server process."""
