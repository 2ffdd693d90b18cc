"""The S3 adapter: state as one object per key in Airflow's object layout (``layout``), on boto3."""
