"""The S3 adapter (boto3, on executors of its own).

client.py      how a boto3 S3 client and its executor are built
errors.py      botocore exceptions to domain errors
layout.py      Airflow's object layout: one object per state key
state.py       S3StateStore
blobs.py       S3BlobStore (large task results)
"""
